"""The built-in helpdesk as a sync side (worker.targets.side.Side). It lives in our own
database, so its writes share the transaction of the ledger and shadow updates: an effect and
its record commit together."""
from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any, Iterable, Mapping

from sqlalchemy import Insert, bindparam, select
from sqlalchemy.orm import Session

from config.enums import TARGET
from worker.db.helpdesk import Ticket, TicketAttachment, TicketComment
from worker.db.models import utcnow
from worker.engine.events import SYNCED_FIELDS
from worker.targets.side import Attachment, Comment, Item, VersionConflict

TITLE_LIMIT = 255


class LocalHelpdesk:
    name = "local"
    writes_with_ledger = True
    vocabulary = TARGET
    defaults = {"status": "new", "priority": "normal", "type": "problem"}

    def __init__(self, session: Session):
        self.session = session
        # Tickets this side loaded, held for the transaction: the session's identity map keeps
        # an object only while something refers to it, and `read` hands out plain values.
        self._loaded: dict[int, Ticket] = {}

    def _ticket(self, item_id: str) -> Ticket:
        key = _id(item_id)
        ticket = self._loaded.get(key) or self.session.get(Ticket, key)
        if ticket is None:
            raise LookupError(f"ticket {item_id} does not exist")
        self._loaded[key] = ticket
        return ticket

    def read(self, item_id: str) -> Item:
        t = self._ticket(item_id)
        return _item(t)

    def create(self, fields: Mapping[str, Any], reporter: str | None, *, key: str | None = None) -> str:
        """One INSERT, not an ORM object and a flush: the ticket is not read again in the
        transaction that makes it (a later read loads it), and a flush per new issue cost the
        worker more CPU than the insert itself (issue 14)."""
        now = utcnow()
        row = {"title": (fields.get("title") or "(untitled)")[:TITLE_LIMIT],
               "description": fields.get("description") or "", "reporter": reporter,
               "created_at": now, "updated_at": now}
        for f, default in _DEFAULTS.items():
            row[f] = fields[f] if fields.get(f) is not None else default
        return str(self.session.connection().execute(_insert_ticket(), row).scalar_one())

    def find(self, key: str) -> str | None:
        return None  # a create commits with its link: there is never one to look for

    def apply(self, item_id: str, changes: Mapping[str, str | None], *,
              expected_version: str | None = None) -> None:
        if not changes:
            return
        t = self._ticket(item_id)
        if expected_version is not None and _version(t) != expected_version:
            raise VersionConflict(f"ticket {item_id} changed since version {expected_version}")
        for field, value in changes.items():
            if field not in SYNCED_FIELDS:
                raise ValueError(f"unknown ticket field {field!r}")
            if field == "description":
                value = value or ""
            if field == "title":
                value = (value or "(untitled)")[:TITLE_LIMIT]
            setattr(t, field, value)
        t.updated_at = utcnow()

    def add_comment(self, item_id: str, body: str, *, internal: bool, author: str | None) -> str:
        t = self._ticket(item_id)
        comment = TicketComment(ticket_id=t.id, body=body, internal=internal, author=author)
        self.session.add(comment)
        self.session.flush()
        return str(comment.id)

    def get_comment(self, comment_id: str) -> Comment | None:
        row = self.session.get(TicketComment, _id(comment_id))
        return _comment(row) if row is not None else None

    def list_comments(self, item_id: str, *, public_only: bool = False) -> list[Comment]:
        query = select(TicketComment).where(TicketComment.ticket_id == _id(item_id))
        if public_only:
            query = query.where(TicketComment.internal.is_(False))
        return [_comment(c) for c in self.session.scalars(query.order_by(TicketComment.id))]

    def revise_comment(self, comment_id: str, body: str) -> None:
        row = self.session.get(TicketComment, _id(comment_id))
        if row is None:
            raise LookupError(f"comment {comment_id} does not exist")
        row.body = body

    def attachment_names(self, item_id: str) -> list[str]:
        return list(self.session.scalars(select(TicketAttachment.name).where(
            TicketAttachment.ticket_id == _id(item_id)).order_by(TicketAttachment.name)))

    def attachments(self, item_id: str, names: Iterable[str] | None = None) -> list[Attachment]:
        query = select(TicketAttachment).where(TicketAttachment.ticket_id == _id(item_id))
        if names is not None:
            query = query.where(TicketAttachment.name.in_(list(names)))
        return [Attachment(a.name, a.content_type, a.data)
                for a in self.session.scalars(query.order_by(TicketAttachment.name))]

    def changed_since(self, since: datetime | None, limit: int = 100) -> list[Item]:
        query = select(Ticket).order_by(Ticket.updated_at, Ticket.id).limit(limit)
        if since is not None:
            query = query.where(Ticket.updated_at >= since)
        return [_item(t) for t in self.session.scalars(query)]


#: What a ticket holds when the fields name none (the columns' defaults).
_DEFAULTS = {"status": "new", "priority": "normal", "type": "problem", "assignee": None}


@lru_cache(maxsize=1)
def _insert_ticket() -> Insert:
    """Built once: a statement's construction and cache key cost more than its round trip."""
    table = Ticket.__table__
    columns = ("title", "description", "reporter", "created_at", "updated_at", *_DEFAULTS)
    return table.insert().values({c: bindparam(c) for c in columns}).returning(table.c.id)


def _id(item_id: str | int) -> int:
    """A ticket or comment id as the table holds it; one that is not a number names nothing."""
    try:
        return int(item_id)
    except (TypeError, ValueError):
        return 0


def _version(t: Ticket) -> str:
    return t.updated_at.isoformat() if t.updated_at else ""


def _item(t: Ticket) -> Item:
    return Item(id=str(t.id), fields={f: getattr(t, f) for f in SYNCED_FIELDS}, updated_at=t.updated_at,
                reporter=t.reporter, version=_version(t))


def _comment(c: TicketComment) -> Comment:
    return Comment(id=str(c.id), item_id=str(c.ticket_id), body=c.body, internal=c.internal,
                   author=c.author, created_at=c.created_at)
