"""The subset of Bitbucket's query language (BBQL) that issue clients use: `q` and `sort`.

    q    := expr
    expr := term (OR term)*
    term := atom (AND atom)*
    atom := "(" expr ")" | FIELD OP VALUE
    OP   := = | != | > | >= | < | <= | ~ | !~          (~ is case-insensitive "contains")
    VALUE:= "double-quoted string" | number | null | true | false | bare ISO-8601 datetime

Queries are evaluated against the JSON payloads the API returns, so a field is a dotted path
into them (`state`, `assignee.uuid`, `changes.state.new`). Datetimes compare as datetimes
whether the literal is bare or quoted.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any, Iterable, Union


class QueryError(ValueError):
    """The query (or sort) cannot be parsed or names an unknown field."""


@dataclass(frozen=True)
class Comparison:
    field: str
    op: str
    value: Any


@dataclass(frozen=True)
class Combined:
    op: str                  # "and" | "or"
    left: "Node"
    right: "Node"


Node = Union[Comparison, Combined]

_TOKEN = re.compile(r"""
    \s*(?:
      (?P<lparen>\() | (?P<rparen>\)) |
      (?P<string>"(?:[^"\\]|\\.)*") |
      (?P<op>>=|<=|!=|!~|=|>|<|~) |
      (?P<word>[^\s()"=!<>~]+)
    )""", re.VERBOSE)
_NUMBER = re.compile(r"-?\d+(\.\d+)?")
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?")
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def parse_datetime(text: str) -> datetime | None:
    """An ISO-8601 date or datetime as an aware datetime (naive means UTC), else None."""
    if not isinstance(text, str) or not _DATETIME.fullmatch(text):
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    tokens, pos = [], 0
    while pos < len(text):
        if text[pos:].isspace():
            break
        match = _TOKEN.match(text, pos)
        if not match:
            raise QueryError(f"Invalid query: unexpected character {text[pos:].lstrip()[0]!r} "
                             f"at position {pos}")
        kind = match.lastgroup
        tokens.append((kind, match.group(kind), match.start(kind)))
        pos = match.end()
    return tokens


def _literal(kind: str, text: str, position: int) -> Any:
    if kind == "string":
        inner = text[1:-1]
        return re.sub(r"\\(.)", r"\1", inner)
    lowered = text.lower()
    if lowered == "null":
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    if _NUMBER.fullmatch(text):
        return float(text) if "." in text else int(text)
    when = parse_datetime(text)
    if when is not None:
        return when
    raise QueryError(f"Invalid query: {text!r} at position {position} is not a value "
                     "(strings must be double-quoted)")


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.index = 0

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self) -> tuple[str, str, int]:
        token = self.peek()
        if token is None:
            raise QueryError("Invalid query: unexpected end of query")
        self.index += 1
        return token

    def keyword(self, word: str) -> bool:
        token = self.peek()
        if token and token[0] == "word" and token[1].lower() == word:
            self.index += 1
            return True
        return False

    def expr(self) -> Node:
        node = self.term()
        while self.keyword("or"):
            node = Combined("or", node, self.term())
        return node

    def term(self) -> Node:
        node = self.atom()
        while self.keyword("and"):
            node = Combined("and", node, self.atom())
        return node

    def atom(self) -> Node:
        kind, text, position = self.take()
        if kind == "lparen":
            node = self.expr()
            closing = self.take()
            if closing[0] != "rparen":
                raise QueryError(f"Invalid query: expected ')' at position {closing[2]}")
            return node
        if kind != "word" or not _FIELD.fullmatch(text):
            raise QueryError(f"Invalid query: expected a field name at position {position}, "
                             f"got {text!r}")
        op_kind, op, op_position = self.take()
        if op_kind != "op":
            raise QueryError(f"Invalid query: expected an operator after {text!r} at position "
                             f"{op_position}")
        value_kind, value_text, value_position = self.take()
        if value_kind not in ("string", "word"):
            raise QueryError(f"Invalid query: expected a value after '{text} {op}' at position "
                             f"{value_position}")
        return Comparison(text, op, _literal(value_kind, value_text, value_position))


def parse(text: str, allowed_fields: Iterable[str] | None = None) -> Node:
    """Parse `q`; with `allowed_fields`, a field whose first segment is not listed is an error."""
    parser = _Parser(text)
    if parser.peek() is None:
        raise QueryError("Invalid query: the query is empty")
    node = parser.expr()
    leftover = parser.peek()
    if leftover is not None:
        raise QueryError(f"Invalid query: unexpected {leftover[1]!r} at position {leftover[2]}")
    if allowed_fields is not None:
        allowed = set(allowed_fields)
        for name in _fields(node):
            if name.split(".")[0] not in allowed:
                raise QueryError(f"Invalid field name: {name!r}")
    return node


def _fields(node: Node) -> Iterable[str]:
    if isinstance(node, Comparison):
        yield node.field
    else:
        yield from _fields(node.left)
        yield from _fields(node.right)


def resolve(obj: Any, path: str) -> Any:
    """The value at a dotted path in a JSON object; None when any step is missing or null."""
    for part in path.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


# Stands in for a literal that cannot apply to the field (a datetime against a non-datetime):
# equal to nothing, ordered against nothing.
_INCOMPARABLE = object()


def _coerce(value: Any, literal: Any) -> tuple[Any, Any]:
    """Bring a field value and a literal to comparable types (datetimes above all)."""
    literal_dt = literal if isinstance(literal, datetime) else (
        parse_datetime(literal) if isinstance(literal, str) else None)
    if literal_dt is None:
        return value, literal
    value_dt = parse_datetime(value) if isinstance(value, str) else None
    if value_dt is not None:
        return value_dt, literal_dt
    if isinstance(literal, datetime):
        return value, _INCOMPARABLE
    return value, literal      # a quoted string that merely looks like a date


def _compare(value: Any, op: str, literal: Any) -> bool:
    if op in ("~", "!~"):
        if value is None or literal is None:
            return op == "!~"
        found = str(literal).lower() in str(value).lower()
        return found if op == "~" else not found
    value, literal = _coerce(value, literal)
    if op == "=":
        return value == literal
    if op == "!=":
        return value != literal
    if value is None or literal is None or isinstance(value, bool) != isinstance(literal, bool):
        return False
    try:
        if op == ">":
            return value > literal
        if op == ">=":
            return value >= literal
        if op == "<":
            return value < literal
        return value <= literal
    except TypeError:
        return False


def matches(node: Node, obj: dict) -> bool:
    if isinstance(node, Comparison):
        return _compare(resolve(obj, node.field), node.op, node.value)
    if node.op == "and":
        return matches(node.left, obj) and matches(node.right, obj)
    return matches(node.left, obj) or matches(node.right, obj)


def _sort_value(value: Any) -> tuple:
    """A key that never compares across types: nulls last, then by kind, then by value."""
    if value is None:
        return (1, 0, 0)
    if isinstance(value, (bool, int, float)):
        return (0, 0, value)
    if isinstance(value, str):
        when = parse_datetime(value)
        return (0, 1, when) if when else (0, 2, value)
    if isinstance(value, (date, datetime)):
        return (0, 1, value)
    return (0, 3, repr(value))


def sort(items: list[dict], spec: str, allowed_fields: Iterable[str] | None = None,
         tiebreak: str = "id") -> list[dict]:
    """Sort by one field, `-field` for descending (nulls come first then, as in SQL)."""
    descending = spec.startswith("-")
    name = spec[1:] if descending else spec
    if not _FIELD.fullmatch(name):
        raise QueryError(f"Invalid sort field: {spec!r}")
    if allowed_fields is not None and name.split(".")[0] not in set(allowed_fields):
        raise QueryError(f"Invalid sort field: {name!r}")
    return sorted(items, reverse=descending,
                  key=lambda item: (_sort_value(resolve(item, name)),
                                    _sort_value(resolve(item, tiebreak))))
