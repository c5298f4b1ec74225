"""Cleaning outside text for storing: NUL removed, lone surrogates replaced, long text cut, and
everything else (right-to-left marks, emoji, control characters) kept exactly."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.engine.text import ELLIPSIS, REPLACEMENT, clean, has_surrogate


@pytest.mark.parametrize("text", ["My new issue", "", "x" * 255, "Ünïcödé", "日本語のタイトル",
                                  "\u202eevil\u202c and \u200fRTL\u200e", "😀 party",
                                  "tab\tnewline\ncarriage\rbell\x07 del\x7f"])
def test_clean_text_comes_back_as_the_same_object_with_no_note(text):
    cleaned, note = clean("title", text, 255)
    assert cleaned is text and note is None


def test_no_limit_keeps_any_length():
    text = "é" * 1_000_000
    assert clean("description", text) == (text, None)


def test_nul_characters_are_removed_and_counted():
    assert clean("title", "a\x00b\x00c") == ("abc", "title: 2 NUL characters removed")
    assert clean("comment", "\x00hello") == ("hello", "comment: 1 NUL character removed")
    assert clean("title", "\x00\x00") == ("", "title: 2 NUL characters removed")


@pytest.mark.parametrize("escape", ["\\ud800", "\\udbff", "\\udc00", "\\udfff"])
def test_a_lone_surrogate_from_json_is_replaced(escape):
    text = json.loads(f'"before {escape} after"')  # the stdlib accepts it
    assert has_surrogate(text)
    cleaned, note = clean("title", text)
    assert cleaned == f"before {REPLACEMENT} after"
    assert note == "title: 1 unpaired surrogate replaced with U+FFFD"
    cleaned.encode("utf-8")  # now storable


def test_reversed_or_doubled_surrogates_are_each_lone():
    text = json.loads('"\\ude00\\ud83d x \\ud83d\\ud83d"')
    cleaned, note = clean("title", text)
    assert cleaned == f"{REPLACEMENT * 2} x {REPLACEMENT * 2}"
    assert note == "title: 4 unpaired surrogates replaced with U+FFFD"


def test_a_surrogate_pair_written_as_json_escapes_is_the_emoji_intact():
    text = json.loads('"party \\ud83d\\ude00"')
    assert text == "party 😀" and not has_surrogate(text)
    assert clean("title", text, 255) == (text, None)


def test_a_split_pair_in_a_python_string_is_joined():
    split = "party \ud83d\ude00"  # two code points, as surrogatepass decoding leaves them
    cleaned, note = clean("title", split)
    assert cleaned == "party 😀" and note == "title: 1 split surrogate pair joined"


def test_long_text_is_cut_to_the_limit_ending_with_an_ellipsis():
    cleaned, note = clean("title", "x" * 65536, 255)
    assert len(cleaned) == 255 and cleaned == "x" * 254 + ELLIPSIS
    assert note == "title: shortened from 65,536 to 255 characters"


def test_exact_limits():
    assert clean("title", "x" * 255, 255) == ("x" * 255, None)
    assert clean("title", "x" * 256, 255) == ("x" * 254 + ELLIPSIS, "title: shortened from 256 to 255 characters")
    assert clean("title", "x" * 2, 1) == (ELLIPSIS, "title: shortened from 2 to 1 characters")


def test_the_limit_applies_to_the_cleaned_text():
    # 300 characters of which 50 are NUL: 250 remain, within the limit, so nothing is cut.
    assert clean("title", "ab\x00" * 50 + "y" * 150, 255) == ("ab" * 50 + "y" * 150,
                                                                "title: 50 NUL characters removed")
    cleaned, note = clean("title", json.loads('"\\u0000\\ud800"') + "z" * 70_000, 255)
    assert cleaned == REPLACEMENT + "z" * 253 + ELLIPSIS
    assert note == ("title: 1 NUL character removed; 1 unpaired surrogate replaced with U+FFFD; "
                    "shortened from 70,001 to 255 characters")


def test_a_cut_never_splits_a_character():
    cleaned, _ = clean("title", "😀" * 300, 255)
    assert cleaned == "😀" * 254 + ELLIPSIS
    cleaned.encode("utf-8")


def test_right_to_left_marks_survive_a_cleaning_of_something_else():
    text = "\u202e\u200fabc\x00"
    assert clean("title", text)[0] == "\u202e\u200fabc"


# Any character, and often the troublesome ones: surrogates (alone and in pairs), NUL, RTL.
CHARS = st.one_of(st.characters(), st.characters(min_codepoint=0xD7F0, max_codepoint=0xE010),
                  st.sampled_from(["\x00", "\u202e", "\u200f", "😀", "\ud83d", "\ude00"]))


@settings(database=None, max_examples=300)
@given(text=st.text(CHARS), limit=st.none() | st.integers(1, 40))
def test_any_text_comes_out_storable_within_its_limit(text, limit):
    cleaned, note = clean("f", text, limit)
    cleaned.encode("utf-8")
    assert "\x00" not in cleaned
    assert limit is None or len(cleaned) <= limit
    assert (note is None) == (cleaned is text)
    if note is None:
        assert cleaned == text
    assert clean("f", cleaned, limit) == (cleaned, None)  # cleaning twice changes nothing more
