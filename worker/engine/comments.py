"""What a Bitbucket comment is to a connection: ours seen back (its marker says which helpdesk
comment it was written from), already copied, or new. Pure."""
from __future__ import annotations

from enum import StrEnum

from worker.engine.markers import find_comment_marker


class CommentKind(StrEnum):
    OURS = "ours"      # a helpdesk comment we posted, seen back: an echo
    KNOWN = "known"    # a Bitbucket comment already copied
    NEW = "new"        # a Bitbucket comment to copy, once


def judge_comment(body: str, connection: str, already_copied: bool) -> tuple[CommentKind, int | None]:
    """What a Bitbucket comment is to the connection, and for ours, the helpdesk comment it was
    written from (its marker says so, even when our own record of the post is not committed
    yet, or never will be after a crash)."""
    ours = find_comment_marker(body, connection)
    if ours is not None:
        return CommentKind.OURS, ours
    return (CommentKind.KNOWN if already_copied else CommentKind.NEW), None
