"""Target sides: the systems Bitbucket issues are synced with, each an implementation of
worker.targets.side.Side, found by the name a connection holds in `Connection.target`.
`local` is the built-in helpdesk."""
from __future__ import annotations

from typing import Callable

from sqlalchemy.orm import Session

from worker.targets.local import LocalHelpdesk
from worker.targets.side import Side

#: name -> how to open that side within a transaction of ours.
SIDES: dict[str, Callable[[Session], Side]] = {"local": LocalHelpdesk}


class UnknownTarget(LookupError):
    """A connection names a target side this installation does not have."""


def side_for(session: Session, target: str) -> Side:
    try:
        return SIDES[target](session)
    except KeyError:
        raise UnknownTarget(f"no target side named {target!r} (known: {', '.join(sorted(SIDES))})") from None
