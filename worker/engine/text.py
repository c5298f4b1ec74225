"""Outside text made storable, the same way on SQLite and PostgreSQL.

Text from Bitbucket (and later other helpdesks) is valid JSON but not always storable:
PostgreSQL refuses NUL in text columns, a lone UTF-16 surrogate (JSON "\\ud800", which
Python's json accepts) cannot be encoded as UTF-8 at all, and PostgreSQL refuses a string
longer than its varchar column. A webhook cannot be refused usefully (Bitbucket gives up after
three tries), so the worker cleans such text instead and says what it changed. Everything else
(right-to-left marks, control characters, any valid Unicode) is storable and kept as it is.
"""
from __future__ import annotations

import re

ELLIPSIS = "\u2026"
REPLACEMENT = "\ufffd"

# A high surrogate followed by a low one is one character that was never joined (text decoded
# with surrogatepass); anything else in the surrogate range stands alone.
_SURROGATES = re.compile("([\ud800-\udbff][\udc00-\udfff])|[\ud800-\udfff]")


def has_surrogate(text: str) -> bool:
    """Whether the text holds a code point UTF-8 cannot encode. str.isascii is O(1); otherwise
    the encoder looks (in C, about 1 ns a character: five times quicker than a regex search)."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def clean(name: str, text: str, limit: int | None = None) -> tuple[str, str | None]:
    """(storable text, what was changed) for one piece of outside text; the note names the
    field (`name`) and is None when nothing changed, in which case the text is returned as is.
    `limit`: the column's length in characters; longer text is cut and ends with "…"."""
    if "\x00" not in text and (limit is None or len(text) <= limit) and not has_surrogate(text):
        return text, None
    changes = []
    nul = text.count("\x00")
    if nul:
        text = text.replace("\x00", "")
        changes.append(f"{_count(nul, 'NUL character')} removed")
    if has_surrogate(text):
        found = {"pairs": 0, "lone": 0}

        def fix(match: re.Match) -> str:
            if match.group(1):
                found["pairs"] += 1
                high, low = map(ord, match.group(1))
                return chr(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))
            found["lone"] += 1
            return REPLACEMENT
        text = _SURROGATES.sub(fix, text)
        if found["lone"]:
            changes.append(f"{_count(found['lone'], 'unpaired surrogate')} replaced with U+FFFD")
        if found["pairs"]:
            changes.append(f"{_count(found['pairs'], 'split surrogate pair')} joined")
    if limit is not None and len(text) > limit:
        changes.append(f"shortened from {len(text):,} to {limit:,} characters")
        text = text[:limit - 1] + ELLIPSIS if limit > 0 else ""
    return text, f"{name}: {'; '.join(changes)}"


def _count(n: int, what: str) -> str:
    return f"{n:,} {what}{'' if n == 1 else 's'}"
