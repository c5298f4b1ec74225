"""The built-in helpdesk as a sync side. It lives in our own database, so its writes share the
transaction of the ledger and shadow updates: an effect and its record commit together."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping

from sqlalchemy.orm import Session

from worker.db.models import Ticket, TicketComment, utcnow
from worker.engine.events import SYNCED_FIELDS

FIELDS = SYNCED_FIELDS


@dataclass(frozen=True)
class TargetItem:
    id: str
    fields: Mapping[str, str | None]
    updated_at: datetime | None


class LocalHelpdesk:
    name = "local"

    def __init__(self, session: Session):
        self.session = session

    def _ticket(self, item_id: str) -> Ticket:
        ticket = self.session.get(Ticket, int(item_id))
        if ticket is None:
            raise LookupError(f"ticket {item_id} does not exist")
        return ticket

    def read(self, item_id: str) -> TargetItem:
        t = self._ticket(item_id)
        return TargetItem(id=str(t.id), fields={f: getattr(t, f) for f in FIELDS}, updated_at=t.updated_at)

    def create(self, fields: Mapping[str, Any], reporter: str | None) -> str:
        ticket = Ticket(
            title=(fields.get("title") or "(untitled)")[:255],
            description=fields.get("description") or "",
            reporter=reporter,
            **{f: fields[f] for f in ("status", "priority", "type", "assignee") if fields.get(f) is not None},
        )
        self.session.add(ticket)
        self.session.flush()
        return str(ticket.id)

    def apply(self, item_id: str, changes: Mapping[str, str | None]) -> None:
        if not changes:
            return
        t = self._ticket(item_id)
        for field, value in changes.items():
            if field not in FIELDS:
                raise ValueError(f"unknown ticket field {field!r}")
            if field == "description":
                value = value or ""
            if field == "title":
                value = (value or "(untitled)")[:255]
            setattr(t, field, value)
        t.updated_at = utcnow()

    def add_comment(self, item_id: str, body: str, *, internal: bool, author: str | None) -> str:
        t = self._ticket(item_id)
        comment = TicketComment(ticket_id=t.id, body=body, internal=internal, author=author)
        self.session.add(comment)
        self.session.flush()
        return str(comment.id)
