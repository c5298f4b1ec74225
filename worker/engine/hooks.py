"""What a connection's Bitbucket webhook should look like, and how far a repository's hooks are
from it: pure, so that register, list, verify and repair (worker.sync.hooks) share one judgement.

A hook is ours when Bitbucket's uuid is the one we recorded, or its description is ours
(`bbsync NAME`): a hook someone made by hand for the same URL is theirs and left alone. Of
several of ours, the recorded one (else the first listed) is kept and the others are duplicates.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

#: The events a connection syncs: Bitbucket sends these and nothing else to our URL.
SYNCED_EVENTS = ("issue:created", "issue:updated", "issue:comment_created")


@dataclass(frozen=True)
class WantedHook:
    url: str
    description: str
    events: tuple[str, ...] = SYNCED_EVENTS
    active: bool = True

    def body(self) -> dict:
        return {"url": self.url, "description": self.description, "active": self.active,
                "events": list(self.events)}


def wanted(connection: str, public_url: str) -> WantedHook:
    return WantedHook(url=f"{public_url.rstrip('/')}/webhooks/bitbucket/{connection}",
                      description=f"bbsync {connection}")


def hook_uuid(hook: Mapping) -> str:
    """Bitbucket's `uuid` without braces, lower case (how paths and our rows name a hook)."""
    return str(hook.get("uuid") or "").strip().strip("{}").lower()


@dataclass(frozen=True)
class HookState:
    repo: str
    hook: Mapping | None                  # ours, as Bitbucket lists it (None: missing)
    duplicates: tuple[Mapping, ...] = ()  # more of ours, to remove
    drift: tuple[str, ...] = ()           # what differs from the wanted hook, in words

    @property
    def state(self) -> str:
        if self.hook is None:
            return "missing"
        return "drifted: " + "; ".join(self.drift) if self.drift else "ok"

    @property
    def ok(self) -> bool:
        return self.state == "ok"


def assess(repo: str, hooks: Iterable[Mapping], want: WantedHook, known_uuid: str | None,
           secret_current: bool) -> HookState:
    """How `repo`'s hooks (as listed) stand against `want`. `known_uuid` is the hook we
    recorded; `secret_current` whether we recorded giving that hook the connection's current
    secret (a hook of ours we did not record, e.g. after a crash, gets it again)."""
    ours = [h for h in hooks if (known_uuid and hook_uuid(h) == known_uuid)
            or h.get("description") == want.description]
    if not ours:
        return HookState(repo, None)
    ours.sort(key=lambda h: hook_uuid(h) != known_uuid)  # the recorded one first, else as listed
    hook, duplicates = ours[0], tuple(ours[1:])
    drift: list[str] = []
    if hook.get("url") != want.url:
        drift.append(f"url is {hook.get('url')!r}")
    events = set(hook.get("events") or ())
    missing, extra = [e for e in want.events if e not in events], sorted(events - set(want.events))
    if missing:
        drift.append("events missing " + ", ".join(missing))
    if extra:
        drift.append("extra events " + ", ".join(extra))
    if hook.get("active") is not True:
        drift.append("inactive")
    if hook.get("description") != want.description:
        drift.append(f"description is {hook.get('description')!r}")
    if not hook.get("secret_set"):
        drift.append("no secret")
    elif hook_uuid(hook) != known_uuid:   # ours by its description: its secret is not known
        drift.append("secret not known to be ours")
    elif not secret_current:
        drift.append("signs with a rotated-out secret")
    if duplicates:
        drift.append(f"{len(duplicates)} duplicate(s)")
    return HookState(repo, hook, duplicates, tuple(drift))
