"""Keyset paging over one repository's issue listing: how reconciliation and backfill read
Bitbucket's issues, page by page, in (updated_on, id) order, without losing one.

The query is BBQL on the listing, sorted by `updated_on`:

    GET .../issues?q=updated_on >= <since>&sort=updated_on&pagelen=100

Cost, per repository and run: the issue listing is keyset-paged, one query per page of 100
(the next query starts at the last `updated_on` seen, `>=`, and skips the one issue it read
again), so `1 + (n - 1) // 99` calls for n issues read (n >= 1; never more than
`1 + ceil(n / 100)`), and exactly one when nothing changed. For reconciliation, n counts the
issues changed since the watermark plus those re-read within the overlap window.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator

from worker.engine.events import parse_time

PAGELEN = 100                         # Bitbucket's maximum for issues and comments


def utc_iso(when: datetime) -> str:
    """A time as BBQL compares it: UTC, to the microsecond. (Reconciliation's request_uuids
    hold it too, so its form must not change.)"""
    return when.astimezone(timezone.utc).isoformat(timespec="microseconds")


def updated_since(floor: datetime | None) -> str | None:
    """The BBQL query for the issues updated at or after `floor` (None: every issue)."""
    return f"updated_on >= {utc_iso(floor)}" if floor else None


def issue_key(issue: dict) -> tuple[datetime, int] | None:
    """The order issues are read in: (updated_on, id)."""
    when = parse_time(issue.get("updated_on"))
    return (when, issue["id"]) if when is not None else None


def newest_key(page: Iterable[dict]) -> tuple[datetime, int] | None:
    """The key of the newest issue of a page (None: none has an `updated_on`)."""
    return max((k for k in map(issue_key, page) if k is not None), default=None)


@dataclass
class IssueScan:
    """Issues of one repository with `updated_on >= since`, in (updated_on, id) order, page by
    page, and never more than one page held.

    Keyset paging: each page is a fresh query starting at the last `updated_on` read (`>=`,
    so issues sharing that microsecond are not lost), and what was already read is skipped.
    Offset paging (`next`) would skip an issue whenever one read earlier is updated or
    deleted during the scan (everything behind it moves up a place). Only when a whole page
    shares one `updated_on` (no progress possible by value) is `next` followed instead.
    """

    client: Any
    repo: str
    since: datetime | None = None
    after: tuple[datetime, int] | None = None   # resume: skip up to and including this key
    pagelen: int = PAGELEN
    calls: int = 0

    def pages(self) -> Iterator[list[dict]]:
        cursor = self.after
        floor = cursor[0] if cursor else self.since
        while True:
            items = self.client.iter_issues(self.repo, q=updated_since(floor), sort="updated_on",
                                            pagelen=self.pagelen)
            self.calls += 1
            page: list[dict] = []
            in_page, more = 0, False
            try:
                for issue in items:
                    if in_page == self.pagelen:  # the client followed `next` (a page of ties)
                        self.calls += 1
                        in_page = 0
                    in_page += 1
                    key = issue_key(issue)
                    if key is not None and cursor is not None and key <= cursor:
                        continue
                    page.append(issue)
                    if key is not None:
                        cursor = key
                    if in_page == self.pagelen and page and cursor is not None:
                        more = True
                        break
            finally:
                items.close()
            if page:
                yield page
            if not more:
                return
            floor = cursor[0]
