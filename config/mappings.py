"""Mapping tables: loaded from TOML, merged with per-connection overrides, validated up front.

A table is data, so it is checked when it is loaded rather than when a value first fails to map
in the middle of a sync: every value of both sides must appear, and every mapped-to value must
be one the other side accepts.
"""
from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from types import MappingProxyType
from typing import Any, Callable, Mapping

from config.enums import BITBUCKET, MAPPED_FIELDS, TARGET


def _same(value: str | None) -> str | None:
    return value


class MappingError(ValueError):
    """A mapping table is incomplete or names a value a side does not have."""


@dataclass(frozen=True)
class FieldMap:
    field: str
    to_target: Mapping[str, str]
    to_bitbucket: Mapping[str, str]


@dataclass(frozen=True)
class MappingTables:
    fields: Mapping[str, FieldMap]

    def to_target(self, field: str, value: str | None) -> str | None:
        """The target value for a Bitbucket value, or None when it has no mapping."""
        return self.fields[field].to_target.get(value) if value is not None else None

    def to_bitbucket(self, field: str, value: str | None) -> str | None:
        return self.fields[field].to_bitbucket.get(value) if value is not None else None

    def translators(self, field: str, source: str) -> tuple[Callable[[str | None], str | None],
                                                            Callable[[str | None], str | None]]:
        """(source's value -> the other side's, the other side's -> source's) for one field,
        `source` being "bitbucket" or "target"; values pass as they are for a field without a
        table (title, description, assignee)."""
        if field not in self.fields:
            return _same, _same
        to_target = lambda v: self.to_target(field, v)  # noqa: E731
        to_bitbucket = lambda v: self.to_bitbucket(field, v)  # noqa: E731
        return (to_target, to_bitbucket) if source == "bitbucket" else (to_bitbucket, to_target)

    def as_dict(self) -> dict[str, dict[str, dict[str, str]]]:
        return {
            name: {"to_target": dict(fm.to_target), "to_bitbucket": dict(fm.to_bitbucket)}
            for name, fm in self.fields.items()
        }


def _check_direction(field: str, table: Any, sources: tuple[str, ...], targets: tuple[str, ...],
                     label: str) -> dict[str, str]:
    if not isinstance(table, dict):
        raise MappingError(f"{field}.{label} must be a table of value = value")
    unknown = sorted(set(table) - set(sources))
    if unknown:
        raise MappingError(f"{field}.{label}: {', '.join(map(repr, unknown))} is not a value of that side "
                           f"(expected one of {', '.join(sources)})")
    missing = [v for v in sources if v not in table]
    if missing:
        raise MappingError(f"{field}.{label}: no mapping for {', '.join(map(repr, missing))}")
    for source, dest in table.items():
        if dest not in targets:
            raise MappingError(f"{field}.{label}: {source!r} maps to {dest!r}, which is not one of "
                               f"{', '.join(targets)}")
    return dict(table)


def build(raw: Mapping[str, Any]) -> MappingTables:
    """Validate a complete table set (as parsed from TOML or JSON)."""
    extra = sorted(set(raw) - set(MAPPED_FIELDS))
    if extra:
        raise MappingError(f"unknown field(s) in mapping: {', '.join(extra)}")
    fields = {}
    for field in MAPPED_FIELDS:
        section = raw.get(field)
        if not isinstance(section, dict):
            raise MappingError(f"mapping has no [{field}] table")
        fields[field] = FieldMap(
            field=field,
            to_target=MappingProxyType(_check_direction(
                field, section.get("to_target"), BITBUCKET[field], TARGET[field], "to_target")),
            to_bitbucket=MappingProxyType(_check_direction(
                field, section.get("to_bitbucket"), TARGET[field], BITBUCKET[field], "to_bitbucket")),
        )
    return MappingTables(fields=MappingProxyType(fields))


def default_raw() -> dict[str, Any]:
    text = resources.files("config").joinpath("mappings.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def merge(base: Mapping[str, Any], override: Mapping[str, Any] | None) -> dict[str, Any]:
    """Overlay a partial per-connection table on the defaults (entry by entry)."""
    merged: dict[str, Any] = {f: {d: dict(t) for d, t in sec.items()} for f, sec in base.items()}
    for field, section in (override or {}).items():
        if not isinstance(section, dict):
            raise MappingError(f"override for {field!r} must be a table")
        target = merged.setdefault(field, {})
        for direction, table in section.items():
            if direction not in ("to_target", "to_bitbucket") or not isinstance(table, dict):
                raise MappingError(f"override {field}.{direction} is not to_target/to_bitbucket table")
            target.setdefault(direction, {}).update(table)
    return merged


def load(override: Mapping[str, Any] | None = None) -> MappingTables:
    """The default tables with an optional override, validated. Built once per distinct
    override and process (the tables are immutable): the worker asks for them on every event,
    with the override its connection row holds at that moment, so a changed override is used
    from the next event on. The defaults file is read when the process first needs it."""
    try:
        key = json.dumps(override, sort_keys=True) if override else ""
    except (TypeError, ValueError):  # not JSON-shaped: let the checks say what is wrong
        return build(merge(default_raw(), override))
    return _load(key)


@lru_cache(maxsize=256)
def _load(key: str) -> MappingTables:
    return build(merge(default_raw(), json.loads(key) if key else None))
