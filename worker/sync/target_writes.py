"""How forward sync writes to the target side: at once, or through the outbox.

A side in our own database (`writes_with_ledger`, the built-in helpdesk) is written directly:
its writes commit in the ledger's transaction. A remote side (Zendesk) cannot commit with us,
so its writes are planned as outbox rows in that transaction instead, and sent afterwards by
worker.sync.push_target (plan -> send -> finish, as the writes to Bitbucket are). The forward
runner calls the same methods either way.
"""
from __future__ import annotations

from typing import Mapping

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.db.models import Connection, Link, OutboxEntry
from worker.engine.events import SYNCED_FIELDS
from worker.engine.states import OUTBOX_OPEN, OutboxKind, OutboxSide, OutboxState
from worker.targets import side_for
from worker.targets.side import Item, Side


def item_key(conn: Connection, repo: str, issue_id: int) -> str:
    """What a remote item created for an issue is keyed by, so that it is created once."""
    return f"bbsync:{conn.name}:{repo}#{issue_id}"


class Direct:
    """Writes that commit with the ledger."""

    queued = False

    def __init__(self, side: Side):
        self.side = side

    def read(self, link: Link) -> Item:
        return self.side.read(link.target_id)

    def create(self, conn: Connection, link: Link, fields: Mapping[str, str | None],
               reporter: str | None, actor: str | None) -> str:
        return self.side.create(fields, reporter)

    def apply(self, conn: Connection, link: Link, changes: Mapping[str, str | None], *,
              sources: Mapping[str, object], actor: str | None, expected_version: str | None = None) -> None:
        self.side.apply(link.target_id, changes, expected_version=expected_version)

    def add_note(self, conn: Connection, link: Link, comment_id: int, body: str,
                 author: str | None) -> str | None:
        return self.side.add_comment(link.target_id, body, internal=True, author=author)

    def note_queued(self, link: Link, comment_id: int) -> bool:
        return False


class Queued:
    """Writes planned as outbox rows (side `target`), sent after the transaction commits."""

    queued = True

    def __init__(self, session: Session, side: Side):
        self.session, self.side = session, side

    def read(self, link: Link) -> Item:
        """The item as the side shows it (one read; a remote read is the only way to see an
        agent's edit that has not reached us yet), with the writes still queued for it on top.
        Before its create is sent, the values the create carries."""
        queued = list(self.session.scalars(select(OutboxEntry).where(
            OutboxEntry.link_id == link.id, OutboxEntry.side == OutboxSide.TARGET,
            OutboxEntry.kind.in_((OutboxKind.CREATE, OutboxKind.FIELDS)),
            OutboxEntry.state.in_(OUTBOX_OPEN)).order_by(OutboxEntry.id)))
        if link.target_id is not None:
            item = self.side.read(link.target_id)
            fields, updated_at = dict(item.fields), item.updated_at
        else:
            fields, updated_at = dict.fromkeys(SYNCED_FIELDS), None
        for row in queued:
            if row.kind == OutboxKind.CREATE:
                fields.update(row.sent_values["fields"])
            else:
                fields.update({f: v["target"] for f, v in row.sent_values.items()})
        return Item(id=link.target_id or "", fields=fields, updated_at=updated_at)

    def _add(self, conn: Connection, link: Link, kind: OutboxKind, actor: str | None, **values) -> None:
        self.session.add(OutboxEntry(connection_id=conn.id, link_id=link.id, side=OutboxSide.TARGET,
                                     kind=kind, actor=actor, **values))

    def create(self, conn: Connection, link: Link, fields: Mapping[str, str | None],
               reporter: str | None, actor: str | None) -> None:
        if link.id is None:  # the row needs the link's id
            self.session.add(link)
            self.session.flush()
        self._add(conn, link, OutboxKind.CREATE, actor, fields=list(fields),
                  sent_values={"fields": dict(fields), "reporter": reporter,
                               "key": item_key(conn, link.bitbucket_repo, link.bitbucket_issue_id)})
        return None

    def apply(self, conn: Connection, link: Link, changes: Mapping[str, str | None], *,
              sources: Mapping[str, object], actor: str | None, expected_version: str | None = None) -> None:
        if changes:
            self._add(conn, link, OutboxKind.FIELDS, actor, fields=list(changes),
                      sent_values={f: {"target": v, "bitbucket": sources.get(f)} for f, v in changes.items()})

    def add_note(self, conn: Connection, link: Link, comment_id: int, body: str,
                 author: str | None) -> None:
        self._add(conn, link, OutboxKind.COMMENT, author, note_id=str(comment_id),
                  sent_values={"body": body, "author": author})
        return None

    def note_queued(self, link: Link, comment_id: int) -> bool:
        """Whether this Bitbucket comment is already on its way to the target."""
        return self.session.scalar(select(OutboxEntry.id).where(
            OutboxEntry.link_id == link.id, OutboxEntry.side == OutboxSide.TARGET,
            OutboxEntry.kind == OutboxKind.COMMENT, OutboxEntry.note_id == str(comment_id),
            OutboxEntry.state.in_((*OUTBOX_OPEN, OutboxState.SENT))).limit(1)) is not None


def writer_for(session: Session, conn: Connection) -> Direct | Queued:
    side = side_for(session, conn.target)
    return Direct(side) if side.writes_with_ledger else Queued(session, side)
