"""A link as the forward runner reads and makes it: locked, with its shadows, and with our own
writes to Bitbucket whose webhooks may still be on their way back (their echoes); a new one
and its first shadows inserted by prebuilt statements."""
from __future__ import annotations

from functools import lru_cache

from typing import Any

from sqlalchemy import Insert, bindparam, exists, literal, select
from sqlalchemy.orm import Session, make_transient_to_detached

from worker.db.models import CommentLink, Link, OutboxEntry, Shadow, utcnow
from worker.db.session import insert_many, one_of
from worker.engine.decide import Expected
from worker.engine.states import OUTBOX_OPEN, OutboxKind, OutboxState
from worker.sync.outbox import to_bitbucket
from worker.sync.reverse import ECHO_WINDOW


def lock_link(session: Session, connection_id: int, repo: str, issue_id: int,
              comment_id: int | None = None) -> tuple[Link | None, dict[str, Shadow]]:
    """The issue's link, locked FOR NO KEY UPDATE (one event per link at a time, across any
    number of workers, without blocking the inserts that merely reference it: ledger, outbox,
    comment links), with its shadows by field, in one statement. It also tells whether any
    write of ours to the issue is recent enough for its echo to be on the way: as a rule none
    is, and `in_flight` then answers without a query. With `comment_id`, whether that comment
    is copied already (for worker.sync.forward_comments, also without a query of its own)."""
    rows = session.execute(_lock_link_statement(comment_id is not None), {
        "connection_id": connection_id, "repo": repo, "issue_id": issue_id, "comment_id": comment_id,
        "since": utcnow() - ECHO_WINDOW}).all()
    if not rows:
        return None, {}
    link = rows[0][0]
    if not rows[0][2]:
        session.info.setdefault("no_writes_in_flight", set()).add(link.id)
    if comment_id is not None:
        session.info.setdefault("comments_copied", {})[(link.id, comment_id)] = bool(rows[0][3])
    return link, {row[1].field: row[1] for row in rows if row[1] is not None}


@lru_cache(maxsize=2)
def _lock_link_statement(with_comment: bool):
    """Built once: a statement's construction and cache key cost more than its round trip."""
    recent = exists().where(OutboxEntry.link_id == Link.id, to_bitbucket(OutboxKind.FIELDS),
                            one_of(OutboxEntry.state, (OutboxState.SENDING, OutboxState.SENT)),
                            OutboxEntry.created_at >= bindparam("since")).correlate(Link)
    copied = (exists().where(CommentLink.link_id == Link.id,
                             CommentLink.bitbucket_comment_id == bindparam("comment_id"))
              .correlate(Link) if with_comment else literal(False))
    return (select(Link, Shadow, recent, copied).outerjoin(Shadow, Shadow.link_id == Link.id)
            .where(Link.connection_id == bindparam("connection_id"), Link.bitbucket_repo == bindparam("repo"),
                   Link.bitbucket_issue_id == bindparam("issue_id"))
            .with_for_update(of=Link.__table__, key_share=True))


def insert(session: Session, link: Link) -> Link:
    """A new link, inserted by one prebuilt statement and attached to the session as if it had
    been loaded: no ORM flush, which cost a new issue more CPU than its statements did (issue
    14). A concurrent creator of the same link fails here (the unique key), and its task
    retries, as it did at the flush."""
    link.created_at = utcnow()
    values = {c: getattr(link, c) for c in _LINK_COLUMNS}
    link.id = session.connection().execute(_insert_link(), values).scalar_one()
    make_transient_to_detached(link)  # every column set: nothing left to load
    session.add(link)
    return link


def insert_shadows(session: Session, rows: list[dict[str, Any]]) -> None:
    """A new link's first shadows, in one statement (rows: Shadow columns, an absent one NULL)."""
    insert_many(session.connection(), Shadow.__table__, _SHADOW_COLUMNS, rows)


_LINK_COLUMNS = tuple(c.name for c in Link.__table__.columns if c.name != "id")
_SHADOW_COLUMNS = tuple(c.name for c in Shadow.__table__.columns)


@lru_cache(maxsize=1)
def _insert_link() -> Insert:
    """Built once: a statement's construction and cache key cost more than its round trip."""
    table = Link.__table__
    return table.insert().values({c: bindparam(c) for c in _LINK_COLUMNS}).returning(table.c.id)


def in_flight(session: Session, link: Link) -> list[OutboxEntry]:
    """Our own writes to this issue whose webhooks may still be on their way back."""
    if link.id in session.info.get("no_writes_in_flight", ()):
        return []
    return [r for r in session.scalars(select(OutboxEntry).where(
        OutboxEntry.link_id == link.id, to_bitbucket(OutboxKind.FIELDS),
        OutboxEntry.state.in_((OutboxState.SENDING, OutboxState.SENT)),
        OutboxEntry.created_at >= utcnow() - ECHO_WINDOW)) if r.unechoed]


def expected(rows) -> list[Expected]:
    """Those writes as the engine judges echoes by: per field, the value written and the
    helpdesk value it was written from."""
    return [Expected(r.id, dict(r.unechoed or {}),
                     {f: (v or {}).get("target") for f, v in (r.sent_values or {}).items()}) for r in rows]


def seen(row: OutboxEntry, field: str) -> None:
    """The write's value for this field came back: no longer expected."""
    row.unechoed = {k: v for k, v in (row.unechoed or {}).items() if k != field} or None


def push_waiting(session: Session, link: Link, field: str) -> bool:
    """Whether a push not yet finished will send this field's current value anyway."""
    return any(field in (r.fields or []) for r in session.scalars(select(OutboxEntry).where(
        OutboxEntry.link_id == link.id, to_bitbucket(OutboxKind.FIELDS),
        OutboxEntry.state.in_(OUTBOX_OPEN))))
