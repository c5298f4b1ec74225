"""The other system, as the sync sees it: one small interface, whatever is behind it.

Bitbucket is one side of every link; the target is the other (the built-in helpdesk today,
Zendesk next). The sync reads and writes the target only through `Side`, so a new helpdesk is a
new implementation of it, registered in worker.targets under the name `Connection.target`
holds. Items are the target's tickets, comments are its replies and notes.

`writes_with_ledger` says how a side's writes are made durable: True for a side in our own
database (its writes commit in the ledger's transaction: an effect and its record together);
False for a remote one, whose writes go plan -> send -> finish through the outbox, like the
writes to Bitbucket.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Iterable, Mapping, Protocol, Sequence


@dataclass(frozen=True)
class Item:
    id: str
    fields: Mapping[str, str | None]   # keyed by worker.engine.events.SYNCED_FIELDS
    updated_at: datetime | None
    reporter: str | None = None
    version: str | None = None          # the token `apply(expected_version=...)` checks


@dataclass(frozen=True)
class Comment:
    id: str
    item_id: str
    body: str
    internal: bool                      # an internal note, never shown to the customer
    author: str | None
    created_at: datetime | None = None


@dataclass(frozen=True)
class Attachment:
    name: str
    content_type: str
    data: bytes


class SideError(Exception):
    """A side refused or failed a call; the subclasses say what to do about it."""


class VersionConflict(SideError):
    """The item changed since the version the write expected: read it again and decide again."""


class ItemClosed(SideError):
    """The item can no longer be changed (a closed ticket): the write is dropped, and said so."""


class Unavailable(SideError):
    """No answer in time, or a server error: try again later."""


class Side(Protocol):
    name: str
    writes_with_ledger: bool
    #: The values each mapped field accepts, and what a new item gets when the other side
    #: says nothing.
    vocabulary: Mapping[str, Sequence[str]]
    defaults: Mapping[str, str]

    def read(self, item_id: str) -> Item:
        """The item's synced fields; LookupError if there is no such item."""

    def create(self, fields: Mapping[str, str | None], reporter: str | None, *,
               key: str | None = None) -> str:
        """A new item; returns its id. A remote side stores `key` with the item (Zendesk's
        `external_id`), so that a create whose answer was lost is found by `find`."""

    def find(self, key: str) -> str | None:
        """The item created with this key, if any."""

    def apply(self, item_id: str, changes: Mapping[str, str | None], *,
              expected_version: str | None = None) -> None:
        """Change fields; VersionConflict if `expected_version` is given and no longer holds."""

    def add_comment(self, item_id: str, body: str, *, internal: bool, author: str | None) -> str:
        """A new comment or internal note; returns its id."""

    def get_comment(self, comment_id: str) -> Comment | None: ...

    def list_comments(self, item_id: str, *, public_only: bool = False) -> list[Comment]:
        """Oldest first."""

    def revise_comment(self, comment_id: str, body: str) -> None: ...

    def attachments(self, item_id: str, names: Iterable[str] | None = None) -> list[Attachment]:
        """The item's files (those named, if `names`), with their bytes."""

    def attachment_names(self, item_id: str) -> list[str]: ...

    def changed_since(self, since: datetime | None, limit: int = 100) -> list[Item]:
        """Items updated at or after `since`, oldest first: what reconciliation reads."""
