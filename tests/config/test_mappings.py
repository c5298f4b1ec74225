"""Mapping tables: the shipped defaults, and validation of tables and overrides at load time."""
from __future__ import annotations

import copy

import pytest

from config import mappings
from config.enums import BITBUCKET, MAPPED_FIELDS, TARGET
from config.mappings import MappingError

DEFAULTS = {
    "status": {
        "to_target": {"submitted": "new", "new": "new", "open": "open", "on hold": "on_hold",
                      "resolved": "solved", "invalid": "closed", "duplicate": "closed",
                      "wontfix": "closed", "closed": "closed"},
        "to_bitbucket": {"new": "new", "open": "open", "pending": "open", "on_hold": "on hold",
                         "solved": "resolved", "closed": "closed"},
    },
    "priority": {
        "to_target": {"trivial": "low", "minor": "low", "major": "normal", "critical": "high",
                      "blocker": "urgent"},
        "to_bitbucket": {"low": "minor", "normal": "major", "high": "critical",
                         "urgent": "blocker"},
    },
    "type": {
        "to_target": {"bug": "problem", "enhancement": "task", "proposal": "question",
                      "task": "task"},
        "to_bitbucket": {"problem": "bug", "incident": "bug", "task": "task",
                         "question": "proposal"},
    },
}


def raw_defaults() -> dict:
    return copy.deepcopy(mappings.default_raw())


# --- the defaults -------------------------------------------------------------------------

def test_default_tables_are_the_agreed_tables():
    assert mappings.load().as_dict() == DEFAULTS


def test_default_toml_file_is_exactly_the_agreed_tables():
    assert mappings.default_raw() == DEFAULTS


@pytest.mark.parametrize("field", MAPPED_FIELDS)
def test_defaults_map_every_value_of_both_sides(field):
    tables = mappings.load()
    assert set(tables.fields[field].to_target) == set(BITBUCKET[field])
    assert set(tables.fields[field].to_bitbucket) == set(TARGET[field])
    assert set(tables.fields[field].to_target.values()) <= set(TARGET[field])
    assert set(tables.fields[field].to_bitbucket.values()) <= set(BITBUCKET[field])


def test_lookups_by_side():
    tables = mappings.load()
    assert tables.to_target("status", "duplicate") == "closed"
    assert tables.to_bitbucket("status", "pending") == "open"
    assert tables.to_target("type", "enhancement") == "task"
    assert tables.to_bitbucket("priority", "urgent") == "blocker"


def test_unknown_value_and_null_have_no_mapping():
    tables = mappings.load()
    assert tables.to_target("status", "halfway") is None
    assert tables.to_target("status", None) is None
    assert tables.to_bitbucket("status", "on hold") is None  # Bitbucket's spelling, not ours


def test_loaded_tables_cannot_be_changed_in_place():
    tables = mappings.load()
    with pytest.raises(TypeError):
        tables.fields["status"].to_target["duplicate"] = "open"


def test_loading_twice_gives_independent_equal_tables():
    first = mappings.load({"status": {"to_target": {"duplicate": "open"}}})
    assert mappings.load().to_target("status", "duplicate") == "closed"
    assert first.to_target("status", "duplicate") == "open"


# --- incomplete or wrong tables -----------------------------------------------------------

def test_table_missing_a_value_fails_naming_it():
    raw = raw_defaults()
    del raw["status"]["to_target"]["wontfix"]
    with pytest.raises(MappingError, match=r"status\.to_target: no mapping for 'wontfix'"):
        mappings.build(raw)


def test_table_missing_a_target_value_fails_naming_it():
    raw = raw_defaults()
    del raw["type"]["to_bitbucket"]["incident"]
    with pytest.raises(MappingError, match=r"type\.to_bitbucket: no mapping for 'incident'"):
        mappings.build(raw)


def test_unknown_source_value_fails_naming_it():
    raw = raw_defaults()
    raw["status"]["to_target"]["halfway"] = "open"
    with pytest.raises(MappingError, match=r"'halfway' is not a value of that side"):
        mappings.build(raw)


def test_destination_value_the_other_side_lacks_fails_naming_it():
    raw = raw_defaults()
    raw["priority"]["to_bitbucket"]["urgent"] = "panic"
    with pytest.raises(MappingError) as err:
        mappings.build(raw)
    assert "'urgent' maps to 'panic'" in str(err.value)
    assert "priority.to_bitbucket" in str(err.value)


def test_destination_value_in_the_wrong_sides_spelling_fails():
    raw = raw_defaults()
    raw["status"]["to_target"]["on hold"] = "on hold"  # Bitbucket's spelling, not the helpdesk's
    with pytest.raises(MappingError, match="'on hold' maps to 'on hold'"):
        mappings.build(raw)


def test_missing_field_table_fails_naming_the_field():
    raw = raw_defaults()
    del raw["priority"]
    with pytest.raises(MappingError, match=r"no \[priority\] table"):
        mappings.build(raw)


def test_missing_direction_fails_naming_it():
    raw = raw_defaults()
    del raw["type"]["to_target"]
    with pytest.raises(MappingError, match=r"type\.to_target must be a table"):
        mappings.build(raw)


def test_unknown_field_fails_naming_it():
    raw = raw_defaults()
    raw["colour"] = {"to_target": {}, "to_bitbucket": {}}
    with pytest.raises(MappingError, match="unknown field.*colour"):
        mappings.build(raw)


# --- per-connection overrides -------------------------------------------------------------

def test_override_replaces_only_the_entries_it_names():
    tables = mappings.load({"status": {"to_target": {"duplicate": "solved"}}})
    expected = copy.deepcopy(DEFAULTS)
    expected["status"]["to_target"]["duplicate"] = "solved"
    assert tables.as_dict() == expected


def test_override_of_both_directions_and_several_fields():
    tables = mappings.load({
        "status": {"to_bitbucket": {"pending": "on hold"}},
        "priority": {"to_target": {"trivial": "normal"}, "to_bitbucket": {"low": "trivial"}},
    })
    assert tables.to_bitbucket("status", "pending") == "on hold"
    assert tables.to_target("priority", "trivial") == "normal"
    assert tables.to_bitbucket("priority", "low") == "trivial"
    assert tables.to_target("priority", "minor") == "low"  # untouched neighbour


def test_empty_or_no_override_is_the_defaults():
    assert mappings.load({}).as_dict() == DEFAULTS
    assert mappings.load(None).as_dict() == DEFAULTS


def test_override_does_not_change_the_defaults_it_was_merged_onto():
    base = raw_defaults()
    mappings.merge(base, {"status": {"to_target": {"duplicate": "open"}}})
    assert base == DEFAULTS


def test_override_with_an_unknown_value_fails_naming_it():
    with pytest.raises(MappingError, match="'halfway'"):
        mappings.load({"status": {"to_target": {"halfway": "open"}}})


def test_override_to_an_invalid_destination_fails_naming_it():
    with pytest.raises(MappingError, match="'duplicate' maps to 'gone'"):
        mappings.load({"status": {"to_target": {"duplicate": "gone"}}})


@pytest.mark.parametrize("override,message", [
    ({"status": "closed"}, "override for 'status' must be a table"),
    ({"status": ["to_target"]}, "override for 'status' must be a table"),
    ({"status": {"to_target": "closed"}}, "override status.to_target is not"),
    ({"status": {"sideways": {"new": "new"}}}, "override status.sideways is not"),
    ({"colour": {"to_target": {}}}, "unknown field.*colour"),
    ({"status": {"to_target": {"duplicate": 5}}}, "'duplicate' maps to 5"),
    ({"status": {"to_target": {"duplicate": None}}}, "'duplicate' maps to None"),
])
def test_malformed_override_fails_clearly(override, message):
    with pytest.raises(MappingError, match=message):
        mappings.load(override)


def test_enums_list_each_value_once():
    for side in (BITBUCKET, TARGET):
        for field, values in side.items():
            assert len(values) == len(set(values)), field
    assert MAPPED_FIELDS == ("status", "priority", "type")


def test_translators_go_both_ways_from_either_side_and_pass_unmapped_fields_as_they_are():
    tables = mappings.load()
    to_target, back = tables.translators("status", "bitbucket")
    assert (to_target("resolved"), back("solved")) == ("solved", "resolved")
    to_bitbucket, back = tables.translators("status", "target")
    assert (to_bitbucket("solved"), back("resolved")) == ("resolved", "solved")
    assert to_bitbucket(None) is None
    for source in ("bitbucket", "target"):
        there, back = tables.translators("title", source)
        assert there("Checkout \u202e500s") == "Checkout \u202e500s" and back(None) is None


def test_tables_are_built_once_per_override_and_a_changed_override_is_used_at_once():
    assert mappings.load() is mappings.load(None) is mappings.load({})
    first = mappings.load({"priority": {"to_target": {"major": "high"}}})
    assert first.to_target("priority", "major") == "high"
    assert mappings.load({"priority": {"to_target": {"major": "high"}}}) is first
    changed = mappings.load({"priority": {"to_target": {"major": "urgent"}}})
    assert changed.to_target("priority", "major") == "urgent"
    assert mappings.load().to_target("priority", "major") == "normal"


def test_a_bad_override_fails_every_time_it_is_asked_for():
    for _ in range(2):
        with pytest.raises(MappingError):
            mappings.load({"priority": {"to_target": {"major": "enormous"}}})
