"""The closed sets of values each side accepts, in one place."""

BITBUCKET = {
    "status": ("submitted", "new", "open", "on hold", "resolved", "invalid", "duplicate", "wontfix", "closed"),
    "priority": ("trivial", "minor", "major", "critical", "blocker"),
    "type": ("bug", "enhancement", "proposal", "task"),
}

TARGET = {
    "status": ("new", "open", "pending", "on_hold", "solved", "closed"),
    "priority": ("low", "normal", "high", "urgent"),
    "type": ("problem", "incident", "task", "question"),
}

#: Fields whose values go through a mapping table (the others are copied as text).
MAPPED_FIELDS = tuple(TARGET)
