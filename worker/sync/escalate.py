"""Escalation: a helpdesk ticket becomes a Bitbucket issue, once, whatever happens.

Every step is idempotent, so a retry after a failure at any point (even mid-upload) finishes
the job without a second issue:
- an `escalations` row per (connection, ticket) is the claim (worker.sync.claims); whoever
  holds an unexpired claim does the remote work, a concurrent caller waits for its result;
  the holder renews it before each remote write, and stops if it lapsed and another took it;
- the issue's description carries an invisible marker, so an issue created by an attempt that
  died before recording it is found by a search instead of created again;
- attachments are re-uploaded by name (Bitbucket replaces a same-named file), and the names
  already done are recorded.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from worker import connections, ledger
from worker.bitbucket.errors import BitbucketError, TrackerRemoved
from worker.db.models import Connection, ConnectionRepo, Escalation, Link, Shadow, utcnow
from worker.db.session import transaction
from worker.engine.events import SYNCED_FIELDS, display_name, parse_time
from worker.engine.markers import ticket_marker, ticket_search_token
from worker.sync import claims, reverse
from worker.sync.clients import client_for
from worker.targets import side_for
from worker.targets.side import Item, Side

EXCERPT_CHARS = 600
KINDS = ("bug", "enhancement", "proposal", "task")


class EscalationError(ValueError):
    """The request cannot be escalated as asked; the message says why."""


@dataclass(frozen=True)
class Request:
    ticket_id: int
    repo: str
    connection: str | None = None
    kind: str | None = None
    include_comments: bool = False
    attachments: tuple[str, ...] = ()
    actor: str | None = None


@dataclass(frozen=True)
class Result:
    connection: str
    repo: str
    issue_id: int
    url: str | None
    created: bool  # False when the ticket was already escalated


def escalate(req: Request, client_factory=client_for, wait_seconds: float = 30.0) -> Result:
    esc_id, conn_id, conn_name, done, token = _claim(req, wait_seconds)
    if done is not None:
        return done
    held = [token]
    try:
        client = client_factory(conn_id)
        return _run(esc_id, conn_id, conn_name, req, client, held)
    except Exception as exc:
        # Give the claim back (if it is still ours), so that a retry (or a caller waiting on
        # this one) resumes now rather than when the claim expires. Bitbucket's errors say what
        # went wrong; others only name their type (a database error's text carries SQL).
        with transaction() as session:
            esc = session.get(Escalation, esc_id)
            if esc.claimed_until == held[0]:
                esc.claimed_until = None
            esc.error = (f"{exc.__class__.__name__}: {exc}" if isinstance(exc, BitbucketError)
                         else exc.__class__.__name__)[:2000]
            if isinstance(exc, TrackerRemoved):
                esc.state = "failed"
                reverse.mark_tracker_removed(session, conn_id)
        raise


def _connection_for(session, req: Request) -> Connection:
    query = select(Connection).join(ConnectionRepo).where(ConnectionRepo.full_name == req.repo)
    if req.connection:
        query = query.where(Connection.name == req.connection)
    found = list(session.scalars(query))
    if not found:
        raise EscalationError(f"no connection syncs {req.repo}" +
                              (f" under the name {req.connection!r}" if req.connection else ""))
    if len(found) > 1:
        raise EscalationError(f"{req.repo} is synced by several connections; name one with connection")
    if found[0].tracker_removed_at is not None:
        raise EscalationError(f"{req.repo}: the Bitbucket issue tracker was removed (410)")
    return found[0]


def _validate(side: Side, req: Request) -> Item:
    ticket = side.read(str(req.ticket_id))  # LookupError: no such ticket
    if req.kind is not None and req.kind not in KINDS:
        raise EscalationError(f"kind must be one of {', '.join(KINDS)}")
    have = set(side.attachment_names(ticket.id))
    missing = [n for n in req.attachments if n not in have]
    if missing:
        raise EscalationError(f"ticket {ticket.id} has no attachment named {', '.join(map(repr, missing))}")
    return ticket


def _claim(req: Request, wait_seconds: float):
    deadline = time.monotonic() + wait_seconds
    while True:
        with transaction() as session:
            conn = _connection_for(session, req)
            _validate(side_for(session, conn.target), req)
            link = session.scalar(select(Link).where(Link.connection_id == conn.id,
                                                     Link.target_id == str(req.ticket_id)))
            esc = session.scalar(select(Escalation).where(Escalation.connection_id == conn.id,
                                                          Escalation.ticket_id == req.ticket_id))
            # Done, or linked some other way: answer with the link. An escalation that is not
            # done is resumed even if the issue's webhook already linked the ticket.
            if link is not None and (esc is None or esc.state == "done"):
                return None, conn.id, conn.name, Result(conn.name, link.bitbucket_repo,
                                                        link.bitbucket_issue_id, link.bitbucket_url, False), None
            if esc is None:
                try:
                    with session.begin_nested():
                        esc = Escalation(connection_id=conn.id, ticket_id=req.ticket_id, repo=req.repo,
                                         options={"kind": req.kind, "include_comments": req.include_comments,
                                                  "attachments": list(req.attachments), "actor": req.actor},
                                         uploaded=[])
                        session.add(esc)
                except IntegrityError:
                    continue  # a concurrent caller created it first: look again
            now = utcnow()
            token = claims.until(now)
            claimed = session.execute(
                update(Escalation).where(Escalation.id == esc.id, (Escalation.claimed_until.is_(None)) |
                                         (Escalation.claimed_until < now))
                .values(claimed_until=token, error=None)).rowcount
            if claimed:
                return esc.id, conn.id, conn.name, None, token
        if time.monotonic() > deadline:
            raise TimeoutError(f"ticket {req.ticket_id} is being escalated by another request")
        time.sleep(0.2)


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
        raise claims.Lost(f"escalation {esc_id} was taken over by another request after this one's claim lapsed")
    held[0] = fresh


def _run(esc_id: int, conn_id: int, conn_name: str, req: Request, client, held: list) -> Result:
    with transaction() as session:
        esc = session.get(Escalation, esc_id)
        conn = session.get(Connection, conn_id)
        side = side_for(session, conn.target)
        body = _issue_body(side, conn, esc, side.read(str(esc.ticket_id)))
        issue_id = esc.bitbucket_issue_id
    issue = None
    if issue_id is None:
        # A previous attempt may have created it and died: look for our marker first.
        token = ticket_search_token(conn_name, req.ticket_id)
        issue = next(iter(client.iter_issues(req.repo, q=f'content.raw ~ "{token}"')), None)
        if issue is None:
            _renew(esc_id, held)
            issue = client.create_issue(req.repo, body)
        issue_id = issue["id"]
        with transaction() as session:
            session.get(Escalation, esc_id).bitbucket_issue_id = issue_id
    if issue is None:
        issue = client.get_issue(req.repo, issue_id)

    with transaction() as session:
        esc = session.get(Escalation, esc_id)
        todo = [n for n in esc.options.get("attachments", []) if n not in (esc.uploaded or [])]
        conn = session.get(Connection, conn_id)
        files = [(a.name, a.data, a.content_type)
                 for a in side_for(session, conn.target).attachments(str(esc.ticket_id), todo)]
    if files:
        _renew(esc_id, held)
        client.upload_attachments(req.repo, issue_id, files, retry_unsafe=True)  # same name replaces
        with transaction() as session:
            esc = session.get(Escalation, esc_id)
            esc.uploaded = list(esc.uploaded or []) + [f[0] for f in files]

    with transaction() as session:
        return _link(session, esc_id, conn_id, req, issue)


def _link(session, esc_id: int, conn_id: int, req: Request, issue: dict) -> Result:
    esc = session.get(Escalation, esc_id)
    conn = session.get(Connection, conn_id)
    ticket = side_for(session, conn.target).read(str(esc.ticket_id))
    url = ((issue.get("links") or {}).get("html") or {}).get("href")
    linked = select(Link).where(Link.connection_id == conn.id, Link.target_id == str(ticket.id))
    # The webhook of the new issue may have linked it already (forward._adopt_escalation).
    link = session.scalar(linked) or _insert_link(session, linked, conn, ticket, req, issue, url)
    esc.state, esc.claimed_until, esc.error = "done", None, None
    ledger.record(session, connection_id=conn.id, direction="reverse", outcome="applied",
                  link_id=link.id, actor=esc.options.get("actor"), new_value=f"{req.repo}#{issue['id']}",
                  detail=f"escalated ticket {ticket.id} as {req.repo}#{issue['id']}"
                         + (f" with {len(esc.uploaded)} attachment(s)" if esc.uploaded else ""))
    return Result(conn.name, req.repo, issue["id"], url, True)


def _insert_link(session, linked, conn: Connection, ticket: Item, req: Request, issue: dict,
                 url: str | None) -> Link:
    """The ticket's link to the issue we created, with its shadows; or, when a worker processing
    the issue's webhook linked them between our look and this insert, that link (it made the
    shadows too). Any other clash of keys is not ours to paper over."""
    try:
        with session.begin_nested():
            link = Link(connection_id=conn.id, bitbucket_repo=req.repo, bitbucket_issue_id=issue["id"],
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
