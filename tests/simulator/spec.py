"""Validate JSON against the official Bitbucket spec (tests/fixtures/bitbucket-swagger.json).

Reusable by any test that holds a Bitbucket body (the simulator's, the product client's):

    from tests.simulator.spec import validate
    validate(body, "issue")            # raises jsonschema.ValidationError on a mismatch

Swagger 2.0 `definitions` are close to JSON Schema draft 4, so they are used as one draft-4
resource (refs `#/definitions/...` resolve inside it) through a `referencing` registry (no
deprecated RefResolver, so no warnings). `date-time` and `uri` formats are checked with the
standard library, since jsonschema checks neither without optional packages.

The spec is known not to match real payloads in a few places. The deviations allowed here are
listed in exactly two tables below, each with the evidence; nothing else is relaxed.
"""
from __future__ import annotations

import copy
import json
from datetime import datetime
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

from jsonschema import Draft4Validator, FormatChecker
from referencing import Registry
from referencing.jsonschema import DRAFT4

SPEC_PATH = Path(__file__).resolve().parents[1] / "fixtures" / "bitbucket-swagger.json"
_BASE_URI = "https://bitbucket-swagger.invalid/spec.json"

# Swagger 2.0 cannot say "nullable", but real payloads carry null (never an absent key) here.
# Evidence: the captured webhooks in tests/fixtures/webhooks/ (kanboard__*, zulip__*):
# issue.assignee/component/milestone/version/edited_on are null when unset; a comment's
# updated_on is null until it is edited; the comment Bitbucket records with a change that
# carried no message has content.raw null (zulip__issue_updated, kanboard__..._closed).
NULLABLE: dict[str, tuple[str, ...]] = {
    "issue": ("assignee", "component", "milestone", "version", "edited_on"),
    "comment": ("updated_on", "content.raw"),
}

# Properties real responses carry where the spec's object says additionalProperties: false.
SPEC_GAPS: dict[str, dict[str, dict]] = {
    # The /changes operation's own description documents `changes.assignee_account_id` (and
    # the POST body takes it); a title edit is recorded as `changes.title`.
    "issue_change.changes": {
        "assignee_account_id": {"type": "object",
                                "properties": {"old": {"type": "string"},
                                               "new": {"type": "string"}},
                                "additionalProperties": False},
        "title": {"type": "object",
                  "properties": {"old": {"type": "string"}, "new": {"type": "string"}},
                  "additionalProperties": False},
    },
    # Bitbucket's 400 answers name the offending fields: {"fields": {"title": ["..."]}}.
    "error.error": {
        "fields": {"type": "object",
                   "additionalProperties": {"type": "array", "items": {"type": "string"}}},
    },
}


def _properties(definitions: dict, path: str) -> dict:
    """The `properties` of a definition (looking inside allOf) or of a nested object in it."""
    name, *nested = path.split(".")
    schema = definitions[name]
    for part in nested:
        schema = _own_properties(schema)[part]
    return _own_properties(schema)


def _own_properties(schema: dict) -> dict:
    if "properties" in schema:
        return schema["properties"]
    for part in schema.get("allOf", []):
        if "properties" in part:
            return part["properties"]
    raise KeyError("schema has no properties")


def _patched_definitions() -> dict:
    definitions = copy.deepcopy(json.loads(SPEC_PATH.read_text())["definitions"])
    for name, fields in NULLABLE.items():
        for field in fields:
            *parents, leaf = field.split(".")
            owner = _properties(definitions, ".".join([name, *parents]))
            owner[leaf] = {"anyOf": [{"type": "null"}, owner[leaf]]}
    for path, additions in SPEC_GAPS.items():
        _properties(definitions, path).update(copy.deepcopy(additions))
    return definitions


def _format_checker() -> FormatChecker:
    checker = FormatChecker(formats=())

    @checker.checks("date-time", raises=ValueError)
    def _date_time(value: object) -> bool:
        if not isinstance(value, str):
            return True
        return datetime.fromisoformat(value).tzinfo is not None   # an offset is required

    @checker.checks("uri")
    def _uri(value: object) -> bool:
        if not isinstance(value, str):
            return True
        parts = urlsplit(value)
        return bool(parts.scheme and parts.netloc)

    return checker


@cache
def _registry() -> Registry:
    resource = DRAFT4.create_resource({"definitions": _patched_definitions()})
    return Registry().with_resource(_BASE_URI, resource)


@cache
def validator(definition: str) -> Draft4Validator:
    """A validator for one spec definition, e.g. "issue" or "paginated_issues"."""
    return Draft4Validator({"$ref": f"{_BASE_URI}#/definitions/{definition}"},
                           registry=_registry(), format_checker=_format_checker())


def validate(instance: object, definition: str) -> None:
    """Raise jsonschema.ValidationError if `instance` does not match the definition."""
    validator(definition).validate(instance)
