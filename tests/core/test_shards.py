"""Shard discovery: which files become trainable traits, and why the others were skipped."""

from __future__ import annotations

import os
import re

import pytest

from trait_lora.core.errors import TraitNameError
from trait_lora.core.shards.catalog import check_trait_name, discover_shards, parse_trait

LINE = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


def _touch(directory, *names):
    for name in names:
        (directory / name).write_bytes(LINE)


def _ignored(found):
    return {item.path.name: item.reason for item in found.ignored}


def test_discovers_traits_with_axis_and_direction(tmp_path):
    _touch(tmp_path, "wisdom_plus.jsonl", "wisdom_minus.jsonl", "emotional_stability_minus.jsonl",
           "x2_plus.jsonl")
    found = discover_shards(tmp_path)
    assert sorted(found.shards) == ["emotional_stability_minus", "wisdom_minus", "wisdom_plus", "x2_plus"]
    shard = found.shards["emotional_stability_minus"]
    assert (shard.axis, shard.direction) == ("emotional_stability", -1)
    assert (found.shards["wisdom_plus"].axis, found.shards["wisdom_plus"].direction) == ("wisdom", 1)
    assert shard.path == tmp_path / "emotional_stability_minus.jsonl"
    assert shard.size == len(LINE)
    assert found.ignored == []


def test_other_files_are_reported_as_ignored_with_a_reason(tmp_path):
    _touch(
        tmp_path,
        "wisdom_plus.txt",  # wrong extension
        "wisdom_plus.jsonl.bak",
        "notes.md",
        "Wisdom_plus.jsonl",  # upper case
        "wisdom.jsonl",  # no direction
        "wisdom-plus.jsonl",  # hyphen
        "_plus.jsonl",  # empty axis
        "wisdom_PLUS.jsonl",
        "joy_plus.jsonl",
    )
    (tmp_path / "sub_plus.jsonl").mkdir()  # a directory with a shard-like name
    found = discover_shards(tmp_path)
    assert list(found.shards) == ["joy_plus"]
    ignored = _ignored(found)
    for name in ("wisdom_plus.txt", "wisdom_plus.jsonl.bak", "notes.md"):
        assert "not a .jsonl file" in ignored[name]
    bad_names = ("Wisdom_plus.jsonl", "wisdom.jsonl", "wisdom-plus.jsonl", "_plus.jsonl", "wisdom_PLUS.jsonl")
    for name in bad_names:
        assert "name is not a trait" in ignored[name]
        assert "rename" in ignored[name]
    assert ignored["sub_plus.jsonl"] == "not a regular file"
    assert len(ignored) == 9


def test_symlinked_shard_is_not_trusted(tmp_path):
    outside = tmp_path / "elsewhere.data"
    outside.write_bytes(LINE)
    shards = tmp_path / "shards"
    shards.mkdir()
    os.symlink(outside, shards / "joy_plus.jsonl")
    found = discover_shards(shards)
    assert found.shards == {}
    assert _ignored(found) == {"joy_plus.jsonl": "not a regular file"}


def test_dotfiles_are_skipped_silently(tmp_path):
    _touch(tmp_path, ".wisdom_plus.jsonl", ".DS_Store", ".joy_plus.jsonl.swp", "joy_plus.jsonl")
    found = discover_shards(tmp_path)
    assert list(found.shards) == ["joy_plus"]
    assert found.ignored == []


def test_discovery_is_not_recursive(tmp_path):
    (tmp_path / "nested").mkdir()
    _touch(tmp_path / "nested", "joy_plus.jsonl")
    found = discover_shards(tmp_path)
    assert found.shards == {}
    assert "not a .jsonl file" in _ignored(found)["nested"]


def test_missing_directory_error_says_how_to_point_at_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="--shards-dir") as info:
        discover_shards(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(info.value)


def test_select_returns_requested_shards_in_order_without_duplicates(tmp_path):
    _touch(tmp_path, "joy_plus.jsonl", "joy_minus.jsonl", "wisdom_plus.jsonl")
    found = discover_shards(tmp_path)
    assert [s.trait for s in found.select(None)] == ["joy_minus", "joy_plus", "wisdom_plus"]
    assert [s.trait for s in found.select([])] == ["joy_minus", "joy_plus", "wisdom_plus"]
    picked = found.select(["wisdom_plus", "joy_minus", "wisdom_plus"])
    assert [s.trait for s in picked] == ["wisdom_plus", "joy_minus"]


def test_select_unknown_trait_lists_what_is_available(tmp_path):
    _touch(tmp_path, "joy_plus.jsonl", "wisdom_plus.jsonl")
    found = discover_shards(tmp_path)
    with pytest.raises(TraitNameError) as info:
        found.select(["joy_plus", "intellect_minus", "anger_plus"])
    message = str(info.value)
    assert "anger_plus, intellect_minus" in message
    assert "available: joy_plus, wisdom_plus" in message
    assert str(tmp_path) in message


def test_select_in_an_empty_directory_says_none_are_available(tmp_path):
    with pytest.raises(TraitNameError, match=r"available: \(none\)"):
        discover_shards(tmp_path).select(["joy_plus"])


def test_select_rejects_a_malformed_name_before_looking_it_up(tmp_path):
    _touch(tmp_path, "joy_plus.jsonl")
    with pytest.raises(TraitNameError, match=re.escape("invalid trait name '../joy_plus'")):
        discover_shards(tmp_path).select(["../joy_plus"])


@pytest.mark.parametrize(
    ("name", "axis", "direction"),
    [
        ("wisdom_plus", "wisdom", 1),
        ("intellect_minus", "intellect", -1),
        ("a_b_c_minus", "a_b_c", -1),
        ("plus_minus", "plus", -1),
        ("9lives_plus", "9lives", 1),
        ("a" * 64 + "_plus", "a" * 64, 1),
    ],
)
def test_parse_trait_splits_axis_and_direction(name, axis, direction):
    assert check_trait_name(name) == name
    assert parse_trait(name) == (axis, direction)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "../x_plus",
        "a/b_plus",
        "a/..",
        "..",
        "wisdom",
        "Wisdom_plus",
        "wisdom_Plus",
        "wisdom-plus",
        "_plus",
        "_wisdom_plus",
        "wisdom_plus.jsonl",
        "wisdom_plus\n",  # a trailing newline must not sneak past the end anchor
        " wisdom_plus",
        "wisdom plus",
        "wisdom_plus;rm -rf ~",
        "a" * 65 + "_plus",
        "wisdom_pluss",
        "wisdom_neutral",
    ],
)
def test_check_trait_name_rejects_names_that_are_not_safe_stems(name):
    with pytest.raises(TraitNameError) as info:
        check_trait_name(name)
    message = str(info.value)
    assert repr(name) in message
    assert "<axis>_plus or <axis>_minus" in message


def test_check_trait_name_rejects_non_strings():
    with pytest.raises(TraitNameError):
        check_trait_name(None)  # type: ignore[arg-type]
    with pytest.raises(TraitNameError):
        parse_trait(b"joy_plus")  # type: ignore[arg-type]


def test_trait_errors_are_value_errors_for_argument_parsers():
    # argparse / Airflow param validation treat ValueError as "bad user input", not a crash.
    with pytest.raises(ValueError):
        check_trait_name("nope")
