"""A second target side, held in memory: the Side interface's other user from day one, with
the failures a real helpdesk has (a write that meets a newer version, a closed item, no answer).

Its items live outside the database, so its writes do not roll back with a transaction: the
failures it injects happen before it changes anything, as a remote API's refusal would.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Iterable, Mapping

from config.enums import TARGET
from worker.engine.events import SYNCED_FIELDS
from worker.targets.side import Attachment, Comment, Item, ItemClosed, Unavailable, VersionConflict


@dataclass
class FakeStore:
    items: dict[str, Item] = field(default_factory=dict)
    comments: dict[str, Comment] = field(default_factory=dict)
    files: dict[str, list[Attachment]] = field(default_factory=dict)
    closed: set[str] = field(default_factory=set)
    keys: dict[str, str] = field(default_factory=dict)  # create key -> item id
    # For the next writes: "conflict", "timeout" (refused before writing), "lost" (written, but
    # the answer never arrives: the caller sees a timeout).
    failures: list[str] = field(default_factory=list)
    calls: list[tuple] = field(default_factory=list)
    ids: itertools.count = field(default_factory=lambda: itertools.count(9001))
    clock: datetime = datetime(2026, 12, 1, tzinfo=timezone.utc)

    def tick(self) -> datetime:
        self.clock += timedelta(seconds=1)
        return self.clock

    def edit(self, item_id: str, **fields) -> None:
        """An agent's edit, made in the helpdesk itself."""
        item = self.items[item_id]
        self.items[item_id] = replace(item, fields={**item.fields, **fields}, updated_at=self.tick(),
                                      version=str(int(item.version) + 1))


class FakeSide:
    name = "fake"
    writes_with_ledger = True
    vocabulary = TARGET
    defaults = {"status": "open", "priority": "normal", "type": "question"}

    def __init__(self, store: FakeStore):
        self.store = store

    def _write(self, item_id: str | None, what: str) -> bool:
        """Fail as asked before writing; True if the answer to this write is to be lost."""
        self.store.calls.append((what, item_id))
        if item_id is not None and item_id in self.store.closed:
            raise ItemClosed(f"item {item_id} is closed")
        if self.store.failures:
            failure = self.store.failures.pop(0)
            if failure == "lost":
                return True
            if failure == "timeout":
                raise Unavailable(f"no answer from the helpdesk ({what})")
            raise VersionConflict(f"item {item_id} changed")
        return False

    @staticmethod
    def _answer(lost: bool, value=None):
        if lost:
            raise Unavailable("the write was made, but its answer never arrived")
        return value

    def read(self, item_id: str) -> Item:
        try:
            return self.store.items[item_id]
        except KeyError:
            raise LookupError(f"item {item_id} does not exist") from None

    def create(self, fields: Mapping[str, str | None], reporter: str | None, *,
               key: str | None = None) -> str:
        lost = self._write(None, "create")
        item_id = str(next(self.store.ids))
        if key is not None:
            self.store.keys[key] = item_id
        self.store.items[item_id] = Item(item_id, {f: fields.get(f) for f in SYNCED_FIELDS},
                                         self.store.tick(), reporter, "1")
        return self._answer(lost, item_id)

    def find(self, key: str) -> str | None:
        return self.store.keys.get(key)

    def apply(self, item_id: str, changes: Mapping[str, str | None], *,
              expected_version: str | None = None) -> None:
        if not changes:
            return
        lost = self._write(item_id, "apply")
        if expected_version is not None and self.read(item_id).version != expected_version:
            raise VersionConflict(f"item {item_id} is at version {self.read(item_id).version}")
        self.store.edit(item_id, **changes)
        self._answer(lost)

    def add_comment(self, item_id: str, body: str, *, internal: bool, author: str | None) -> str:
        lost = self._write(item_id, "add_comment")
        comment_id = str(next(self.store.ids))
        self.store.comments[comment_id] = Comment(comment_id, item_id, body, internal, author, self.store.tick())
        return self._answer(lost, comment_id)

    def get_comment(self, comment_id: str) -> Comment | None:
        return self.store.comments.get(comment_id)

    def list_comments(self, item_id: str, *, public_only: bool = False) -> list[Comment]:
        return [c for c in self.store.comments.values()
                if c.item_id == item_id and not (public_only and c.internal)]

    def revise_comment(self, comment_id: str, body: str) -> None:
        self.store.comments[comment_id] = replace(self.store.comments[comment_id], body=body)

    def attachment_names(self, item_id: str) -> list[str]:
        return sorted(a.name for a in self.store.files.get(item_id, []))

    def attachments(self, item_id: str, names: Iterable[str] | None = None) -> list[Attachment]:
        wanted = None if names is None else set(names)
        return [a for a in self.store.files.get(item_id, []) if wanted is None or a.name in wanted]

    def changed_since(self, since: datetime | None, limit: int = 100) -> list[Item]:
        items = sorted(self.store.items.values(), key=lambda i: (i.updated_at, i.id))
        return [i for i in items if since is None or i.updated_at >= since][:limit]


class RemoteFakeSide(FakeSide):
    """The same helpdesk reached over a network (as Zendesk is): its writes cannot commit with
    the ledger, so the sync sends them through the outbox."""
    name = "remote"
    writes_with_ledger = False
