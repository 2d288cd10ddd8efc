"""Shard validation: every problem a user must fix, each with its file and line."""

from __future__ import annotations

import hashlib
import json
import tracemalloc
from pathlib import Path

import pytest

from trait_lora.core.errors import ShardError
from trait_lora.core.shards.catalog import discover_shards
from trait_lora.core.shards.record_rules import FORMATS
from trait_lora.core.shards.validation import (
    Problem,
    iter_examples,
    require_valid,
    validate_shard,
)

SAMPLES = Path(__file__).resolve().parents[2] / "include" / "sample_shards"


def user(text="Hi"):
    return {"role": "user", "content": text}


def assistant(text="Hello there."):
    return {"role": "assistant", "content": text}


def system(text="Be helpful."):
    return {"role": "system", "content": text}


def chat(*messages):
    return json.dumps({"messages": list(messages)})


GOOD = chat(user(), assistant())


def write(tmp_path, *lines, name="joy_plus.jsonl"):
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def only_problem(report):
    assert not report.ok
    assert len(report.problems) == 1, report.error_lines()
    return report.problems[0]


# -- valid inputs -------------------------------------------------------------------------------------


def test_valid_chat_shard(tmp_path):
    path = write(
        tmp_path,
        GOOD,
        chat(system(), user("Q1"), assistant("A1"), user("Q2"), assistant("A2")),
        chat(system("s1"), system("s2"), user(), assistant()),
        chat(user(), assistant(""), user(), assistant("now with content")),
        chat(user(), assistant(), user("trailing question")),
    )
    report = validate_shard(path)
    assert report.ok, report.error_lines()
    assert report.format == "chat"
    assert report.num_examples == 5
    assert report.error_lines() == []
    assert require_valid(path).sha256 == report.sha256


def test_prompt_completion_and_text_formats_are_valid(tmp_path):
    pc = write(tmp_path, json.dumps({"prompt": "2+2?", "completion": "4"}), name="a_plus.jsonl")
    text = write(
        tmp_path, json.dumps({"text": "once upon a time"}), json.dumps({"text": "x"}), name="b_plus.jsonl"
    )
    assert (validate_shard(pc).format, validate_shard(pc).ok) == ("prompt_completion", True)
    assert (validate_shard(text).format, validate_shard(text).num_examples) == ("text", 2)
    assert validate_shard(text).ok
    assert FORMATS == ("chat", "prompt_completion", "text")


def test_blank_lines_crlf_and_missing_final_newline_are_fine(tmp_path):
    path = tmp_path / "joy_plus.jsonl"
    path.write_bytes(b"\n" + GOOD.encode() + b"\r\n   \n\t\n  " + GOOD.encode() + b" \t\r\n" + GOOD.encode())
    report = validate_shard(path)
    assert report.ok, report.error_lines()
    assert report.num_examples == 3


def test_non_ascii_utf8_is_accepted(tmp_path):
    path = write(
        tmp_path,
        json.dumps({"messages": [user("¿Qué tal? 日本"), assistant("Très bien 🙂")]}, ensure_ascii=False),
    )
    assert validate_shard(path).ok


def test_sha256_and_size_are_of_the_exact_file_bytes(tmp_path):
    path = tmp_path / "joy_plus.jsonl"
    data = (GOOD + "\n\n" + "not json\n" + GOOD).encode()  # invalid lines are hashed too
    path.write_bytes(data)
    report = validate_shard(path)
    assert report.sha256 == hashlib.sha256(data).hexdigest()
    assert report.size == len(data)


# -- one problem at a time ----------------------------------------------------------------------------


# Chat-shaped and unparseable records follow a valid chat record (so they are on line 2); records of the
# other formats stand alone (line 1), so that only the rule under test can fire.
_BAD_CASES = [
    (chat(user(), {"role": "bot", "content": "x"}), 2, "messages[1].role is 'bot'; use one of system"),
    (chat(user(), {"content": "x"}), 2, "messages[1] has no 'role'"),
    (chat(user(), {"role": "assistant"}), 2, "messages[1] has no 'content'"),
    (chat(user(), {"role": "assistant", "content": ["x"]}), 2, "messages[1].content must be a string"),
    (chat(user(), "hello"), 2, "messages[1] must be an object with 'role' and 'content', got string"),
    (chat(user(), assistant(), system()), 2, "messages[2] is a system message after the conversation"),
    (chat(system(), assistant(), user()), 2, "messages[1]: the first non-system message must be from"),
    (chat(user("a"), user("b"), assistant()), 2, "messages[1]: two 'user' messages in a row"),
    (chat(user(), assistant(), assistant()), 2, "messages[2]: two 'assistant' messages in a row"),
    (chat(user()), 2, "no assistant message"),
    (chat(system(), user()), 2, "no assistant message"),
    (chat(user(), assistant("")), 2, "every assistant message is empty"),
    (chat(user(), assistant("  \n "), user(), assistant("")), 2, "every assistant message is empty"),
    (json.dumps({"messages": []}), 2, "'messages' is empty"),
    (json.dumps({"messages": {"role": "user"}}), 2, "'messages' must be a list"),
    (json.dumps({"input": "x", "output": "y"}), 2, "unknown record format (keys: 'input', 'output')"),
    ("[1, 2]", 2, "expected a JSON object, got array"),
    ('"just a string"', 2, "expected a JSON object, got string"),
    ("null", 2, "expected a JSON object, got null"),
    ('{"messages": [', 2, "invalid JSON at column"),
    ("{'messages': []}", 2, "invalid JSON at column 2: Expecting property name enclosed in double"),
    ('{"text": "a"} {"text": "b"}', 2, "invalid JSON at column 15: Extra data"),
    ('{"text": NaN}', 2, "NaN is not valid JSON"),
    (json.dumps({"prompt": "q"}), 1, "missing 'completion'"),
    (json.dumps({"completion": "a"}), 1, "missing 'prompt'"),
    (json.dumps({"prompt": "q", "completion": ""}), 1, "'completion' is empty"),
    (json.dumps({"prompt": 3, "completion": "a"}), 1, "'prompt' must be a string, got number"),
    (json.dumps({"text": None}), 1, "'text' must be a string, got null"),
    (json.dumps({"text": "   "}), 1, "'text' is empty"),
]


@pytest.mark.parametrize(
    ("record", "line", "expected"),
    _BAD_CASES,
)
def test_each_bad_record_is_reported_on_its_line(tmp_path, record, line, expected):
    path = write(tmp_path, GOOD, record) if line == 2 else write(tmp_path, record)
    problem = only_problem(validate_shard(path))
    assert expected in problem.message
    assert problem.line == line
    assert str(problem) == f"{path}:{line}: {problem.message}"


def test_broken_json_names_file_line_and_column(tmp_path):
    path = write(tmp_path, GOOD, GOOD, '{"messages": [{"role": "user", "content": "hi"},]}')
    problem = only_problem(validate_shard(path))
    assert (problem.line, problem.path) == (3, path)
    assert str(problem).startswith(f"{path}:3: invalid JSON at column 49")


def test_non_utf8_bytes_are_reported_with_their_position(tmp_path):
    path = tmp_path / "joy_plus.jsonl"
    path.write_bytes(GOOD.encode() + b'\n{"text": "caf\xe9"}\n')
    problem = only_problem(validate_shard(path))
    assert problem.line == 2
    assert "not valid UTF-8 (byte 14 of the line is 0xe9)" in problem.message


def test_utf8_bom_gets_a_specific_hint(tmp_path):
    path = tmp_path / "joy_plus.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode() + b"\n")
    problem = only_problem(validate_shard(path))
    assert problem.line == 1
    assert "byte-order mark" in problem.message


def test_mixed_formats_name_both_formats_and_the_deciding_line(tmp_path):
    pc, text = json.dumps({"prompt": "q", "completion": "a"}), json.dumps({"text": "t"})
    path = write(tmp_path, "", GOOD, pc, GOOD, text)
    report = validate_shard(path)
    assert report.format == "chat"
    assert [(p.line, p.message) for p in report.problems] == [
        (3, "prompt_completion record in a chat file (format set by line 2); use one format per file"),
        (5, "text record in a chat file (format set by line 2); use one format per file"),
    ]


def test_format_is_decided_by_the_first_recognisable_record(tmp_path):
    path = write(tmp_path, "oops", json.dumps({"text": "t"}), GOOD)
    report = validate_shard(path)
    assert report.format == "text"
    assert [p.line for p in report.problems] == [1, 3]
    assert "chat record in a text file (format set by line 2)" in report.problems[1].message


@pytest.mark.parametrize(("content", "what"), [(b"", "empty"), (b"\n\n  \n\r\n", "only blank lines")])
def test_empty_file_is_an_error_on_line_1(tmp_path, content, what):
    path = tmp_path / "joy_plus.jsonl"
    path.write_bytes(content)
    report = validate_shard(path)
    problem = only_problem(report)
    assert str(problem) == f"{path}:1: file is {what}: a shard needs at least one example"
    assert (report.num_examples, report.format) == (0, None)


def test_over_long_line_is_reported_and_skipped_without_losing_the_hash(tmp_path):
    path = tmp_path / "joy_plus.jsonl"
    long_record = json.dumps({"text": "x" * 5000}).encode()
    data = GOOD.encode() + b"\n" + long_record + b"\n" + b"not json\n" + long_record
    path.write_bytes(data)
    report = validate_shard(path, max_line_bytes=1000)
    too_long = "bytes, over the 1000-byte limit for one example; split or shorten it"
    assert [(p.line, p.message) for p in report.problems] == [
        (2, f"line is {len(long_record) + 1} {too_long}"),
        (3, "invalid JSON at column 1: Expecting value"),
        (4, f"line is {len(long_record)} {too_long}"),  # the last line has no newline
    ]
    assert report.sha256 == hashlib.sha256(data).hexdigest()
    assert report.size == len(data)
    assert report.num_examples == 4


def test_over_long_line_is_never_held_in_memory_whole(tmp_path):
    path = tmp_path / "joy_plus.jsonl"
    with open(path, "wb") as fh:
        fh.write(GOOD.encode() + b"\n" + b'{"text": "' + b"x" * (24 << 20) + b'"}\n' + GOOD.encode() + b"\n")
    tracemalloc.start()
    try:
        report = validate_shard(path, max_line_bytes=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [p.line for p in report.problems] == [2]
    assert peak < 12 << 20, f"peak {peak / 2**20:.1f} MiB while skipping a 24 MiB line"


def test_line_exactly_at_the_limit_is_accepted(tmp_path):
    path = tmp_path / "joy_plus.jsonl"
    record = json.dumps({"text": "x" * 100}).encode()
    path.write_bytes(record + b"\n" + record)
    assert validate_shard(path, max_line_bytes=len(record)).ok
    assert not validate_shard(path, max_line_bytes=len(record) - 1).ok


# -- many problems ------------------------------------------------------------------------------------


def test_every_problem_in_a_file_is_reported_with_its_line(tmp_path):
    path = tmp_path / "joy_plus.jsonl"
    lines = [
        GOOD,  # 1
        chat(assistant(), user()),  # 2: assistant first
        "",  # 3: blank, skipped
        "{broken",  # 4
        GOOD,  # 5
        chat(user(), {"role": "robot", "content": "x"}, system()),  # 6: bad role and late system
        "[]",  # 7
        chat(user(), user(), assistant("")),  # 8: two users, empty assistant
    ]
    path.write_bytes("\n".join(lines).encode() + b"\n\xff\n")  # 9: not UTF-8
    report = validate_shard(path)
    assert [p.line for p in report.problems] == [2, 4, 6, 6, 7, 8, 8, 9]
    assert report.num_examples == 8
    lines_out = report.error_lines()
    assert lines_out[0] == (
        f"{path}:2: messages[0]: the first non-system message must be from 'user', got 'assistant'"
    )
    assert all(line.startswith(f"{path}:") for line in lines_out)


def test_problem_cap_counts_the_rest_and_says_so(tmp_path):
    path = write(tmp_path, *(["not json"] * 12), GOOD)
    report = validate_shard(path, max_problems=5)
    assert [p.line for p in report.problems] == [1, 2, 3, 4, 5]
    assert report.more_problems == 7
    assert not report.ok
    assert report.error_lines()[-1] == f"... and 7 more problem(s) in {path}"
    assert len(report.error_lines()) == 6
    # The cap limits what is stored, not what is scanned: the whole file is still hashed.
    assert report.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_require_valid_raises_with_every_error_line(tmp_path):
    path = write(tmp_path, GOOD, "nope", chat(user()))
    with pytest.raises(ShardError) as info:
        require_valid(path)
    assert info.value.problems == [
        f"{path}:2: invalid JSON at column 1: Expecting value",
        f"{path}:3: no assistant message: add at least one assistant reply to train on",
    ]
    message = str(info.value)
    assert str(path) in message and "2 problem(s)" in message
    assert f"{path}:3: no assistant message" in message


def test_require_valid_message_stays_short_for_a_very_broken_file(tmp_path):
    path = write(tmp_path, *(["x"] * 200))
    with pytest.raises(ShardError) as info:
        require_valid(path, max_problems=20)
    assert len(info.value.problems) == 21
    assert info.value.problems[-1] == f"... and 180 more problem(s) in {path}"
    message_lines = str(info.value).splitlines()
    assert len(message_lines) == 12  # header, the first 10 problems, a count of the rest
    assert message_lines[1] == f"{path}:1: invalid JSON at column 1: Expecting value"
    assert message_lines[-1] == "... and 190 more problem(s)"


def test_problem_str_is_path_line_message():
    assert str(Problem(Path("a/b.jsonl"), 7, "bad")) == "a/b.jsonl:7: bad"


# -- iter_examples ------------------------------------------------------------------------------------


def test_iter_examples_yields_records_and_skips_blank_lines(tmp_path):
    second = chat(system(), user("Q"), assistant("A"))
    path = write(tmp_path, GOOD, "", second)
    assert list(iter_examples(path)) == [json.loads(GOOD), json.loads(second)]


def test_iter_examples_names_the_line_of_an_unvalidated_bad_record(tmp_path):
    path = write(tmp_path, GOOD, "{oops")
    with pytest.raises(ShardError, match=r"joy_plus\.jsonl:2: unreadable record"):
        list(iter_examples(path))


# -- the committed samples ----------------------------------------------------------------------------


def test_sample_shards_are_all_valid_chat_with_enough_examples():
    found = discover_shards(SAMPLES)
    axes = ("wisdom", "intellect", "joy", "neuroticism")
    expected = {f"{axis}_{d}" for axis in axes for d in ("plus", "minus")}
    assert expected <= set(found.shards)
    for trait, shard in found.shards.items():
        report = validate_shard(shard.path)
        assert report.ok, report.error_lines()
        assert report.format == "chat", trait
        assert 30 <= report.num_examples <= 40, trait
        turns = [len(ex["messages"]) for ex in iter_examples(shard.path)]
        assert max(turns) > 2, f"{trait} has no multi-turn conversation"


def test_sample_readme_is_reported_as_ignored():
    ignored = {item.path.name: item.reason for item in discover_shards(SAMPLES).ignored}
    assert "README.md" in ignored
    assert "not a .jsonl file" in ignored["README.md"]


def test_sample_traits_read_differently():
    # The plus and minus shards of an axis must not share assistant text, or there is nothing to learn.
    def replies(trait):
        return {
            m["content"]
            for ex in iter_examples(SAMPLES / f"{trait}.jsonl")
            for m in ex["messages"]
            if m["role"] == "assistant"
        }

    for axis in ("wisdom", "intellect", "joy", "neuroticism"):
        plus, minus = replies(f"{axis}_plus"), replies(f"{axis}_minus")
        assert not plus & minus, axis
        assert len(plus) > 40 and len(minus) > 40, "replies should be varied, not a handful repeated"


BAD_RECORDS = [case[0] for case in _BAD_CASES]


def test_the_msgspec_fast_path_reports_exactly_what_the_json_path_reports(tmp_path, monkeypatch):
    """Every bad record of the corpus, plus edge cases only a second parser could disagree on, in one
    shard: the report (every path:line: message, format, count, sha256) is identical with msgspec's
    fast path and with plain ``json`` alone."""
    from trait_lora.core.shards import scan

    extra = [
        '{"text": "x\tliteral tab"}'.replace("\\t", "\t"),
        '{"text": 1e400}',
        '{"text": "a", "text": "dup key"}',
        '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "w": 1}]}',
        '\ufeff{"text": "bom"}',
        '{"messages": [{"role": "user", "content": "\\ud800"}, {"role": "assistant", "content": "a"}]}',
        "   ",
        '{"text": "x"}   ',
    ]
    lines = [GOOD, *BAD_RECORDS, *extra, GOOD]
    path = tmp_path / "joy_plus.jsonl"
    path.write_bytes("\n".join(lines).encode() + b"\n\xff\xfe\n")
    fast = validate_shard(path, max_problems=1000)
    monkeypatch.setattr(scan, "_FAST_DECODE", None)
    slow = validate_shard(path, max_problems=1000)
    assert [str(p) for p in fast.problems] == [str(p) for p in slow.problems]
    assert (fast.format, fast.num_examples, fast.sha256, fast.size) == (
        slow.format,
        slow.num_examples,
        slow.sha256,
        slow.size,
    )
    assert len(slow.problems) >= len(BAD_RECORDS)


def _corpus_shard(tmp_path: Path) -> Path:
    lines = [GOOD, *BAD_RECORDS, '{"text": "a text record among chat ones"}', "   ", GOOD, GOOD]
    path = tmp_path / "joy_plus.jsonl"
    path.write_bytes("\n".join(lines).encode() + b"\n\xff\xfe\n" + GOOD.encode() + b"\n")
    return path


def _as_tuple(report):
    return (
        [str(p) for p in report.problems],
        report.more_problems,
        report.format,
        report.num_examples,
        report.sha256,
        report.size,
    )


@pytest.mark.parametrize("max_problems", [1000, 3])
def test_a_split_check_reports_exactly_what_one_pass_reports_wherever_it_splits(tmp_path, max_problems):
    """The second process's findings are renumbered and merged (or redone here when they depend on the
    first part's format): at every line start, the report is the one-pass report."""
    path = _corpus_shard(tmp_path)
    whole = validate_shard(path, max_problems=max_problems)
    assert whole.total_problems >= len(BAD_RECORDS)
    data = path.read_bytes()
    starts = [i + 1 for i, byte in enumerate(data) if byte == ord("\n") and i + 1 < len(data)]
    for split in starts:
        assert _as_tuple(validate_shard(path, max_problems=max_problems, split_at=split)) == _as_tuple(
            whole
        ), f"split at byte {split}"


def test_a_large_shard_is_checked_by_two_processes_and_a_failed_child_costs_nothing(tmp_path, monkeypatch):
    from trait_lora.core.shards import validation, validation_child

    path = tmp_path / "joy_plus.jsonl"
    path.write_text("\n".join([GOOD] * 400) + "\n")
    whole = validate_shard(path)
    merged: list[bool] = []
    real_result = validation_child.Child.result

    def spy(self):
        value = real_result(self)
        merged.append(value is not None)
        return value

    monkeypatch.setattr(validation, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(validation_child.Child, "result", spy)
    split = validate_shard(path)
    assert merged == [True], "the second process did not check the rest"
    assert _as_tuple(split) == _as_tuple(whole) and split.ok and split.num_examples == 400

    # A child that cannot start (or crashes, or prints garbage): the rest is checked here instead.
    monkeypatch.setattr(validation, "start_child", lambda *a: validation_child.Child(None))
    assert _as_tuple(validate_shard(path)) == _as_tuple(whole)
    broken = path.read_bytes().replace(b'"assistant"', b'"assistent"', 1)
    (tmp_path / "bad").mkdir()
    bad = tmp_path / "bad" / "joy_plus.jsonl"
    bad.write_bytes(broken[: len(broken) // 2] + broken[len(broken) // 2 :].replace(b"user", b"usr", 1))
    monkeypatch.undo()
    one_pass = _as_tuple(validate_shard(bad, max_problems=1000))  # small: one process
    assert len(one_pass[0]) == 2, one_pass[0]
    monkeypatch.setattr(validation, "PARALLEL_MIN_BYTES", 0)
    assert _as_tuple(validate_shard(bad, max_problems=1000)) == one_pass
