"""Hostile text through the whole pipeline (signed webhook, gunicorn, broker, Celery worker,
database) on both stacks: NUL, lone surrogates, right-to-left marks, a 64 KB title and a
description of about 1 MB. Every delivery ends processed, or is refused at the door with a
clear 400; none ends failed, and what is stored is the same on SQLite and PostgreSQL."""
from __future__ import annotations

import json
import uuid

import pytest

from tests.conftest import fixture_json

pytestmark = pytest.mark.integration

REPO = "minicoders/test-webhook"
OPENED, CLOSED, COMMENTED = ("kanboard__bitbucket_issue_opened", "kanboard__bitbucket_issue_closed",
                             "kanboard__bitbucket_comment_created")
EVENT_KEYS = {OPENED: "issue:created", CLOSED: "issue:updated", COMMENTED: "issue:comment_created"}
# Where each replaceable value sits in a captured payload.
PATHS = {"id": ("issue", "id"), "title": ("issue", "title"), "description": ("issue", "content", "raw"),
         "reporter": ("issue", "reporter", "display_name"), "assignee": ("issue", "assignee"),
         "actor": ("actor", "display_name"), "comment": ("comment", "content", "raw"),
         "author": ("comment", "user", "display_name")}
RTL = "\u202eevil\u202c \u200f\u05e9\u05dc\u05d5\u05dd"  # right-to-left override and mark, Hebrew


def body(name: str, **raw: bytes) -> bytes:
    """A captured payload with values replaced by raw JSON text, so that escapes such as
    \\u0000 or \\ud800 reach the receiver exactly as written (and as signed)."""
    payload = fixture_json(name)
    for key in raw:
        *parents, last = PATHS[key]
        node = payload
        for part in parents:
            node = node[part]
        node[last] = f"@@{key}@@"
    out = json.dumps(payload).encode()
    for key, value in raw.items():
        out = out.replace(f'"@@{key}@@"'.encode(), value)
    return out


def send(running, conn: str, secret: str, name: str, payload: bytes, request_uuid: str | None = None):
    return running.deliver(conn, EVENT_KEYS[name], payload, secret, request_uuid=request_uuid)


def processed(running, conn: str, secret: str, name: str, payload: bytes) -> tuple[str, str]:
    """Deliver and wait: (delivery id, request uuid). Processed, never failed."""
    request_uuid = str(uuid.uuid4())
    r = send(running, conn, secret, name, payload, request_uuid)
    assert r.status_code == 202, r.text
    delivery = r.json()["delivery"]
    assert running.wait_processed(delivery) == "processed"
    return delivery, request_uuid


def ticket(running, conn: str) -> dict:
    tickets = running.get("/api/tickets", connection=conn).json()["tickets"]
    assert len(tickets) == 1, tickets
    return tickets[0]


def ledger(running, conn: str) -> list[dict]:
    return running.get("/api/ledger", connection=conn, limit="500").json()["entries"]


def cleaning_line(running, conn: str, delivery: str) -> dict:
    lines = [e for e in ledger(running, conn) if e["delivery"] == delivery
             and (e["detail"] or "").startswith("text cleaned before storing: ")]
    assert len(lines) == 1, ledger(running, conn)
    assert lines[0]["outcome"] == "noop" and lines[0]["link"] is not None
    return lines[0]


def stored(running, conn: str) -> tuple[int, int, int, int]:
    """Deliveries, ledger lines, tickets and notes of one connection."""
    q = "select count(*) from {} where connection_id = (select id from connections where name = :n)"
    notes = running.scalar("select count(*) from ticket_comments tc join links l on l.target_id = "
                           "cast(tc.ticket_id as varchar(64)) join connections c on c.id = l.connection_id "
                           "where c.name = :n", n=conn)
    return (running.scalar(q.format("deliveries"), n=conn), running.scalar(q.format("ledger"), n=conn),
            running.scalar(q.format("links"), n=conn), notes)


def no_failures(running, conn: str) -> None:
    counts = running.get("/api/deliveries", connection=conn).json()["counts"]
    assert counts.get("failed", 0) == 0, counts


def test_nul_is_removed_rtl_marks_are_kept_and_the_ledger_says_so(running):
    conn, secret = running.add_connection([REPO])
    created = body(OPENED, title=b'"Crash\\u0000 when \\u0000saving ' + RTL.encode() + b'"',
                   description=b'"line 1\\u0000\\nline 2 \\u200f"',
                   reporter=b'"Fr\\u0000ed \\u202eRTL"', actor=b'"\\u0000Actor"')
    delivery, request_uuid = processed(running, conn, secret, OPENED, created)

    t = ticket(running, conn)
    assert t["title"] == "Crash when saving " + RTL
    assert t["description"] == "line 1\nline 2 \u200f"
    assert t["reporter"] == "Fred \u202eRTL"
    line = cleaning_line(running, conn, delivery)
    assert line["detail"] == ("text cleaned before storing: title: 2 NUL characters removed; "
                              "description: 1 NUL character removed; reporter: 1 NUL character removed; "
                              "actor: 1 NUL character removed")
    assert line["actor"] == "Actor"

    # Bitbucket's retry of the same delivery: acknowledged again, no second effect.
    before = stored(running, conn)
    again = send(running, conn, secret, OPENED, created, request_uuid)
    assert again.status_code == 202 and again.json()["delivery"] == delivery
    assert stored(running, conn) == before
    assert ticket(running, conn) == t

    # The next event repeats the same text: cleaned the same way, so it agrees with what is held.
    updated, _ = processed(running, conn, secret, CLOSED, body(
        CLOSED, title=b'"Crash\\u0000 when \\u0000saving ' + RTL.encode() + b'"',
        description=b'"line 1\\u0000\\nline 2 \\u200f"', assignee=b'{"display_name": "An\\u0000a"}'))
    t = ticket(running, conn)
    assert (t["title"], t["status"], t["assignee"]) == ("Crash when saving " + RTL, "closed", "Ana")
    decided = {(e["outcome"], e["field"]) for e in ledger(running, conn) if e["delivery"] == updated}
    assert decided == {("noop", None), ("applied", "status"), ("applied", "assignee")}
    no_failures(running, conn)


def test_a_64_kb_title_is_cut_and_a_1_mb_description_kept_whole(running):
    conn, secret = running.add_connection([REPO])
    title = "T" * 65536
    description = "0123456789abcdef\n" * 53000  # 901,000 characters; the body stays under 1 MiB
    payload = body(OPENED, title=json.dumps(title).encode(), description=json.dumps(description).encode())
    assert 1_000_000 < len(payload) < 1024 * 1024
    delivery, _ = processed(running, conn, secret, OPENED, payload)

    t = ticket(running, conn)
    assert t["title"] == "T" * 254 + "\u2026" and len(t["title"]) == 255
    assert t["description"] == description
    assert cleaning_line(running, conn, delivery)["detail"] == (
        "text cleaned before storing: title: shortened from 65,536 to 255 characters")

    # The same long title again: the ticket holds what the shadow holds, so nothing to decide
    # about the title (no conflict with our own cut).
    updated, _ = processed(running, conn, secret, CLOSED, body(CLOSED, title=json.dumps(title).encode()))
    decided = {(e["outcome"], e["field"]) for e in ledger(running, conn) if e["delivery"] == updated}
    assert decided == {("noop", None), ("applied", "status"), ("applied", "assignee"),
                       ("applied", "description")}  # the captured payload's own description
    assert ticket(running, conn)["title"] == "T" * 254 + "\u2026"
    no_failures(running, conn)


def test_a_comment_with_nul_becomes_a_clean_note_once(running):
    conn, secret = running.add_connection([REPO])
    processed(running, conn, secret, OPENED, body(OPENED))
    payload = body(COMMENTED, comment=b'"Steps\\u0000 to\\n\\u0000reproduce \\u200f\\ud83d\\ude00"',
                   author=b'"Dev\\u0000 \\u202eOne"', actor=b'"Dev\\u0000 \\u202eOne"')
    delivery, request_uuid = processed(running, conn, secret, COMMENTED, payload)

    notes = [(c["body"], c["author"], c["internal"]) for c in ticket(running, conn)["comments"]]
    assert notes == [("Steps to\nreproduce \u200f\U0001F600", "Dev \u202eOne", True)]
    assert cleaning_line(running, conn, delivery)["detail"] == (
        "text cleaned before storing: actor: 1 NUL character removed; comment: 2 NUL characters "
        "removed; comment author: 1 NUL character removed")

    before = stored(running, conn)
    assert send(running, conn, secret, COMMENTED, payload, request_uuid).json()["delivery"] == delivery
    assert stored(running, conn) == before
    no_failures(running, conn)


def test_nothing_but_nul_in_a_comment_is_refused_as_no_comment(running):
    conn, secret = running.add_connection([REPO])
    r = send(running, conn, secret, COMMENTED, body(COMMENTED, comment=b'"\\u0000 \\u0000"'))
    assert r.status_code == 400 and "without a comment body" in r.json()["error"]
    assert stored(running, conn) == (0, 0, 0, 0)


@pytest.mark.parametrize("name, field", [(OPENED, "title"), (OPENED, "description"), (OPENED, "reporter"),
                                         (CLOSED, "assignee"), (COMMENTED, "comment"), (COMMENTED, "author")])
def test_a_lone_surrogate_is_refused_at_the_door_and_nothing_is_stored(running, name, field):
    conn, secret = running.add_connection([REPO])
    value = b'{"display_name": "x \\ud800"}' if field == "assignee" else b'"x \\udc00 y"'
    r = send(running, conn, secret, name, body(name, **{field: value}))
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "body is not valid JSON"
    assert stored(running, conn) == (0, 0, 0, 0)
    # A surrogate pair is a character, not a lone surrogate: accepted and kept.
    pair = b'{"display_name": "\\ud83d\\ude00"}' if field == "assignee" else b'"\\ud83d\\ude00"'
    if name != OPENED:
        processed(running, conn, secret, OPENED, body(OPENED))
    processed(running, conn, secret, name, body(name, **{field: pair}))
    no_failures(running, conn)


@pytest.mark.parametrize("issue_id", [0, 2**31, 2**63])
def test_an_issue_id_postgresql_cannot_hold_is_refused_at_the_door(running, issue_id):
    conn, secret = running.add_connection([REPO])
    r = send(running, conn, secret, OPENED, body(OPENED, id=str(issue_id).encode()))
    assert r.status_code == 400 and "issue.id must be an integer from 1 to 2147483647" in r.json()["error"]
    assert stored(running, conn) == (0, 0, 0, 0)
