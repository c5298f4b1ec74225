"""Invisible sync markers in what we write to Bitbucket.

A markdown link reference definition renders as nothing, so it can ride along in a comment or
an issue description without a reader seeing it. It lets us recognise our own writes when they
come back as webhooks, and find a write that happened even if we crashed before recording it.
"""
from __future__ import annotations

import re

_COMMENT = re.compile(r"\[//\]: # \(bbsync:([a-z0-9_-]{1,64}):comment:(\d{1,18})\)")
_TICKET = re.compile(r"\[//\]: # \(bbsync:([a-z0-9_-]{1,64}):ticket:(\d{1,18})\)")


def comment_marker(connection: str, note_id: str | int) -> str:
    return f"[//]: # (bbsync:{connection}:comment:{note_id})"


def ticket_marker(connection: str, ticket_id: int) -> str:
    return f"[//]: # (bbsync:{connection}:ticket:{ticket_id})"


def ticket_search_token(connection: str, ticket_id: int) -> str:
    """The part of the ticket marker a BBQL `content.raw ~ "..."` search can look for."""
    return f"bbsync:{connection}:ticket:{ticket_id})"


def find_comment_marker(text: str | None, connection: str) -> int | None:
    """The helpdesk comment id a Bitbucket comment body was written from, if it was ours."""
    for name, comment_id in _COMMENT.findall(text or ""):
        if name == connection:
            return int(comment_id)
    return None


def find_ticket_marker(text: str | None, connection: str) -> int | None:
    for name, ticket_id in _TICKET.findall(text or ""):
        if name == connection:
            return int(ticket_id)
    return None


def strip_markers(text: str) -> str:
    return _TICKET.sub("", _COMMENT.sub("", text)).rstrip()
