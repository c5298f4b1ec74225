"""Escalation, run: a helpdesk ticket becomes a Bitbucket issue, once, whatever happens.

A request (worker.sync.escalation_request, the step a web request takes) leaves an
`escalations` row in `creating`; the `bbsync.escalate` task runs it here (`bbsync escalate`
asks and runs in one go, in its own process). Every step is idempotent, so a retry after a
failure at any point (even mid-upload) finishes the job without a second issue:
- the row is the claim (worker.sync.claims): whoever holds an unexpired claim does the remote
  work; an attempt that finds it held does not wait but raises `claims.Held` (its task is
  retried later, and then finds the work done, or the claim given back or lapsed); the holder
  renews it before each remote write, and stops (`claims.Lost`) if it lapsed and another took it;
- the issue's description carries an invisible marker, so an issue created by an attempt that
  died before recording it is found by a search instead of created again;
- attachments are re-uploaded by name (Bitbucket replaces a same-named file), and the names
  already done are recorded.
A failed attempt gives its claim back and records its error on the row (the type and message
of a Bitbucket error; only the type of anything else, whose text may carry data).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from worker import connections

from worker.db import ledger
from worker.bitbucket.errors import BitbucketError, TrackerRemoved
from worker.db.models import Connection, Escalation, Link, Shadow, utcnow
from worker.db.session import transaction
from worker.engine.events import SYNCED_FIELDS, display_name, parse_time
from worker.engine.markers import ticket_marker, ticket_search_token
from worker.engine.states import Direction, EscalationState, Outcome
from worker.sync import claims, reverse
from worker.sync.clients import client_for
from worker.sync.escalation_request import EscalationError, Queued, Request, Result, request_escalation
from worker.targets import side_for
from worker.targets.side import Item, Side

EXCERPT_CHARS = 600


@dataclass(frozen=True)
class _Claimed:
    """An escalation this attempt holds, and what its remote work needs."""
    escalation_id: int
    connection_id: int
    connection: str
    repo: str
    item_id: str
    token: datetime  # the claim's expiry, as written: renewing it checks it is still ours


def run_escalation(escalation_id: int, client_factory=client_for) -> Result | None:
    """Run one escalation to its end: the issue, its attachments, the ticket's link. Returns
    the ticket's issue (`created=False` if it was done before), or None when there is nothing
    to run (the row is gone, or failed: whoever asked must ask again). Raises `claims.Held`
    when another attempt holds it, and whatever the remote work raised (after recording it).
    While its connection is paused it waits (None), and resuming queues it."""
    with transaction() as session:
        if connections.paused(session, escalation_id=escalation_id):
            return None
    claimed = _claim(escalation_id)
    if not isinstance(claimed, _Claimed):
        return claimed
    held = [claimed.token]
    try:
        client = client_factory(claimed.connection_id)
        return _run(claimed, client, held)
    except Exception as exc:
        # Give the claim back (if it is still ours), so that a retry resumes now rather than
        # when the claim expires.
        with transaction() as session:
            esc = session.get(Escalation, escalation_id)
            if esc is not None:
                if esc.claimed_until == held[0]:
                    esc.claimed_until = esc.claimed_by = None
                esc.error = describe(exc)
                if isinstance(exc, TrackerRemoved):
                    esc.state = EscalationState.FAILED
                    reverse.mark_tracker_removed(session, claimed.connection_id)
        raise


def describe(exc: BaseException) -> str:
    """An error as an escalation records it: Bitbucket's errors say what went wrong; others
    only name their type (a database error's text carries SQL)."""
    return (f"{exc.__class__.__name__}: {exc}" if isinstance(exc, BitbucketError)
            else exc.__class__.__name__)[:2000]


def give_up(escalation_id: int, reason: str) -> bool:
    """Fail an escalation that no retry will finish, with the reason whoever asked is shown.
    Not one that is done, nor one another attempt holds live (that attempt goes on). Returns
    whether it failed it."""
    with transaction() as session:
        esc = session.get(Escalation, escalation_id)
        if esc is None or esc.state != EscalationState.CREATING or (
                claims.is_live(esc.claimed_until) and not claims.holder_gone(esc.claimed_by)):
            return False
        esc.state, esc.error = EscalationState.FAILED, reason[:2000]
        return True


def escalate_in_process(req: Request, client_factory=client_for, wait_seconds: float = 30.0) -> Result:
    """Ask and run at once, in this process (`bbsync escalate`: a command line is not a web
    request). While another attempt (a worker) holds the escalation, wait for its result, up
    to `wait_seconds`; TimeoutError past that."""
    outcome = request_escalation(None, req)
    deadline = time.monotonic() + wait_seconds
    while isinstance(outcome, Queued):
        try:
            result = run_escalation(outcome.escalation_id, client_factory)
        except claims.Held:
            if time.monotonic() > deadline:
                raise TimeoutError(f"ticket {req.ticket_id} is being escalated by another request") from None
            time.sleep(0.2)
            continue
        if result is None:
            with transaction() as session:
                esc = session.get(Escalation, outcome.escalation_id)
                why = esc.error if esc is not None else "its escalation was removed"
            raise EscalationError(f"ticket {req.ticket_id} was not escalated: {why}")
        return result
    return outcome


def _claim(escalation_id: int) -> _Claimed | Result | None:
    with transaction() as session:
        esc = session.get(Escalation, escalation_id)
        if esc is None or esc.state == EscalationState.FAILED:
            return None
        conn = session.get(Connection, esc.connection_id)
        if esc.state == EscalationState.DONE:
            return _done(session, conn, esc)
        if conn.tracker_removed_at is not None:
            esc.state = EscalationState.FAILED
            esc.error = f"{esc.repo}: the Bitbucket issue tracker was removed (410)"
            return None
        now = utcnow()
        token = claims.until(now)
        free = (Escalation.claimed_until.is_(None)) | (Escalation.claimed_until < now)
        if claims.is_live(esc.claimed_until, now) and claims.holder_gone(esc.claimed_by):
            # Its holder died mid-run (a killed worker): taken over now, not in 10 minutes.
            free = free | (Escalation.claimed_until == esc.claimed_until)
        claimed = session.execute(
            update(Escalation).where(Escalation.id == esc.id, free)
            .values(claimed_until=token, claimed_by=claims.holder())).rowcount  # the last error stays shown until it is done
        if not claimed:
            raise claims.Held(f"escalation {esc.id} of ticket {esc.item_id} is being run by another attempt")
        return _Claimed(esc.id, conn.id, conn.name, esc.repo, esc.item_id, token)


def _done(session: Session, conn: Connection, esc: Escalation) -> Result:
    link = session.scalar(select(Link).where(Link.connection_id == conn.id,
                                             Link.target_id == esc.item_id))
    if link is None:
        return Result(conn.name, esc.repo, esc.bitbucket_issue_id, None, False)
    return Result(conn.name, link.bitbucket_repo, link.bitbucket_issue_id, link.bitbucket_url, False)


def _issue_body(side: Side, conn: Connection, esc: Escalation, ticket: Item) -> dict:
    tables = connections.tables_for(conn)
    excerpt = (ticket.fields.get("description") or "").strip()
    if len(excerpt) > EXCERPT_CHARS:
        excerpt = excerpt[:EXCERPT_CHARS - 1] + "\u2026"
    lines = [f"Escalated from helpdesk ticket #{ticket.id}.", "",
             f"**Requester:** {ticket.reporter or 'unknown'}"]
    if excerpt:
        lines += ["", "**Customer report:**", "", *("> " + line for line in excerpt.splitlines())]
    if esc.options.get("include_comments"):
        public = side.list_comments(ticket.id, public_only=True)
        if public:
            lines += ["", "**Conversation:**"]
            lines += [f"- {c.author or 'unknown'}: {' '.join(c.body.split())[:300]}" for c in public]
    lines += ["", ticket_marker(conn.name, ticket.id)]
    return {
        "title": ticket.fields.get("title"),
        "content": {"raw": "\n".join(lines), "markup": "markdown"},
        "kind": esc.options.get("kind") or tables.to_bitbucket("type", ticket.fields.get("type")) or "bug",
        "priority": tables.to_bitbucket("priority", ticket.fields.get("priority")) or "major",
    }


def _renew(esc_id: int, held: list) -> None:
    """Extend this attempt's claim before a remote write. If it lapsed and another attempt took
    it over, stop here: that attempt makes the write (after looking for our marker)."""
    fresh = claims.until()
    with transaction() as session:
        renewed = session.execute(update(Escalation).where(
            Escalation.id == esc_id, Escalation.claimed_until == held[0]).values(claimed_until=fresh)).rowcount
    if not renewed:
        raise claims.Lost(f"escalation {esc_id} was taken over by another attempt after this one's claim lapsed")
    held[0] = fresh


def _run(c: _Claimed, client, held: list) -> Result:
    with transaction() as session:
        esc = session.get(Escalation, c.escalation_id)
        conn = session.get(Connection, c.connection_id)
        side = side_for(session, conn.target)
        body = _issue_body(side, conn, esc, side.read(esc.item_id))
        issue_id = esc.bitbucket_issue_id
    issue = None
    if issue_id is None:
        # A previous attempt may have created it and died: look for our marker first.
        token = ticket_search_token(c.connection, c.item_id)
        issue = next(iter(client.iter_issues(c.repo, q=f'content.raw ~ "{token}"')), None)
        if issue is None:
            _renew(c.escalation_id, held)
            issue = client.create_issue(c.repo, body)
        issue_id = issue["id"]
        with transaction() as session:
            session.get(Escalation, c.escalation_id).bitbucket_issue_id = issue_id
    if issue is None:
        issue = client.get_issue(c.repo, issue_id)

    with transaction() as session:
        esc = session.get(Escalation, c.escalation_id)
        todo = [n for n in esc.options.get("attachments", []) if n not in (esc.uploaded or [])]
        conn = session.get(Connection, c.connection_id)
        files = [(a.name, a.data, a.content_type)
                 for a in side_for(session, conn.target).attachments(esc.item_id, todo)]
    if files:
        _renew(c.escalation_id, held)
        client.upload_attachments(c.repo, issue_id, files, retry_unsafe=True)  # same name replaces
        with transaction() as session:
            esc = session.get(Escalation, c.escalation_id)
            esc.uploaded = list(esc.uploaded or []) + [f[0] for f in files]

    with transaction() as session:
        return _link(session, c, issue)


def _link(session: Session, c: _Claimed, issue: dict) -> Result:
    esc = session.get(Escalation, c.escalation_id)
    conn = session.get(Connection, c.connection_id)
    ticket = side_for(session, conn.target).read(esc.item_id)
    url = ((issue.get("links") or {}).get("html") or {}).get("href")
    linked = select(Link).where(Link.connection_id == conn.id, Link.target_id == str(ticket.id))
    # The webhook of the new issue may have linked it already (forward._adopt_escalation).
    link = session.scalar(linked) or _insert_link(session, linked, conn, ticket, c.repo, issue, url)
    esc.state, esc.claimed_until, esc.claimed_by, esc.error = EscalationState.DONE, None, None, None
    ledger.record(session, connection_id=conn.id, direction=Direction.REVERSE, outcome=Outcome.APPLIED,
                  link_id=link.id, actor=esc.options.get("actor"), new_value=f"{c.repo}#{issue['id']}",
                  detail=f"escalated ticket {ticket.id} as {c.repo}#{issue['id']}"
                         + (f" with {len(esc.uploaded)} attachment(s)" if esc.uploaded else ""))
    return Result(conn.name, c.repo, issue["id"], url, True)


def _insert_link(session: Session, linked, conn: Connection, ticket: Item, repo: str, issue: dict,
                 url: str | None) -> Link:
    """The ticket's link to the issue we created, with its shadows; or, when a worker processing
    the issue's webhook linked them between our look and this insert, that link (it made the
    shadows too). Any other clash of keys is not ours to paper over."""
    try:
        with session.begin_nested():
            link = Link(connection_id=conn.id, bitbucket_repo=repo, bitbucket_issue_id=issue["id"],
                        bitbucket_url=url, target_id=str(ticket.id),
                        bitbucket_updated_at=parse_time(issue.get("updated_on")))
            session.add(link)
    except IntegrityError:
        link = session.scalar(linked)
        if link is None:
            raise
        return link
    values = {"title": issue.get("title"), "description": (issue.get("content") or {}).get("raw"),
              "status": issue.get("state"), "priority": issue.get("priority"),
              "type": issue.get("kind"), "assignee": display_name(issue.get("assignee"))}
    for field in SYNCED_FIELDS:
        session.add(Shadow(link_id=link.id, field=field, bitbucket_value=values[field],
                           target_value=ticket.fields.get(field), target_at=utcnow(),
                           bitbucket_at=link.bitbucket_updated_at))
    return link
