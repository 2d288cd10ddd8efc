"""Validate Together fine-tuning JSONL shards before any money is spent on them.

Together's SDK only checks that each line is a JSON object; the chat rules are checked on the server,
asynchronously, so a bad shard surfaces as a failed (and possibly billed) job hours later. This module
checks the rules up front and reports *every* problem as ``path:line: message`` so that one run of
``trait-lora validate`` is enough to fix a file.

One streaming pass does everything: it hashes the bytes (the job key needs the sha256 anyway, and
reading a 1 GiB shard twice would double the I/O), decodes, parses and checks each line, and never holds
more than one line in memory. A line longer than :data:`MAX_LINE_BYTES` is reported, not read whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trait_lora.core.errors import ShardError

FORMATS = ("chat", "prompt_completion", "text")
ROLES = ("system", "user", "assistant")
_ROLE_LIST = ", ".join(ROLES)

# 8 MiB of JSON is ~2M tokens, an order of magnitude past Llama-3.1's 128K context: no real example is
# that long, and capping here keeps the worst case (bytes + decoded str + parsed objects) under 100 MB.
MAX_LINE_BYTES = 8 << 20
READ_BUFFER = 4 << 20  # large reads keep syscalls rare; readline then slices lines out of the buffer
SKIP_CHUNK = 1 << 20  # how much of an over-long line is read at a time while skipping it
DEFAULT_MAX_PROBLEMS = 50

FORMAT_HELP = (
    'each line must be one of: {"messages": [{"role": ..., "content": ...}, ...]} (chat), '
    '{"prompt": ..., "completion": ...} (prompt_completion) or {"text": ...} (text)'
)


@dataclass(frozen=True)
class Problem:
    path: Path
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass
class ShardReport:
    """What one pass over a shard found; ``num_examples`` counts non-blank lines (records)."""

    path: Path
    format: str | None
    num_examples: int
    sha256: str
    size: int
    problems: list[Problem] = field(default_factory=list)
    more_problems: int = 0  # found beyond the cap and only counted, so a broken 1 GiB file stays cheap

    @property
    def ok(self) -> bool:
        return not self.problems and not self.more_problems

    @property
    def total_problems(self) -> int:
        return len(self.problems) + self.more_problems

    def error_lines(self) -> list[str]:
        lines = [str(p) for p in self.problems]
        if self.more_problems:
            lines.append(f"... and {self.more_problems} more problem(s) in {self.path}")
        return lines


class _Collector:
    """Keeps the first ``cap`` problems and counts the rest, so scanning never stops early."""

    def __init__(self, path: Path, cap: int) -> None:
        self.path = path
        self.cap = max(0, cap)
        self.problems: list[Problem] = []
        self.more = 0

    def add(self, line: int, message: str) -> None:
        if len(self.problems) < self.cap:
            self.problems.append(Problem(self.path, line, message))
        else:
            self.more += 1


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN/Infinity; strict JSON parsers (Together's server) do not.
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_SCAN = _DECODER.scan_once
_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _parse_line(text: str) -> Any:
    """``json.loads`` for one line, minus its two regex calls in the usual case (~10% of the pass).

    Same errors as ``JSONDecoder.decode``: "Expecting value" when no value starts, "Extra data" when
    anything but whitespace follows it.
    """
    start = _WHITESPACE.match(text).end() if text[0] in " \t\r\n" else 0  # type: ignore[union-attr]
    try:
        value, end = _SCAN(text, start)
    except StopIteration as exc:
        raise json.JSONDecodeError("Expecting value", text, exc.value) from None
    if end != len(text) and text[end:] != "\n":
        end = _WHITESPACE.match(text, end).end()  # type: ignore[union-attr]
        if end != len(text):
            raise json.JSONDecodeError("Extra data", text, end)
    return value


def _fast_decoder() -> Any:
    """msgspec's JSON decoder (it comes with Airflow), or None where it is not installed.

    It parses bytes straight to Python objects about twice as fast as ``json``, which bounds the pass.
    It is only ever trusted with a line it accepts: it refuses everything ``json`` refuses here (NaN,
    Infinity, control characters, a BOM, bad UTF-8, trailing data), and whatever it refuses goes to the
    ``json`` path, which words the error exactly as before (or accepts what msgspec is stricter about,
    such as 1e400), so reports are identical either way.
    """
    try:
        import msgspec
    except ImportError:
        return None
    return msgspec.json.Decoder().decode


_FAST_DECODE = _fast_decoder()
_REFUSED = object()


def _fast_parse(line: bytes) -> Any:
    if _FAST_DECODE is None:
        return _REFUSED
    try:
        return _FAST_DECODE(line)
    except Exception:  # any refusal: the json path decides and words it
        return _REFUSED


def _short(value: Any, limit: int = 40) -> str:
    """A repr fit for an error line: a 1 MB bogus role must not become a 1 MB message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number" if isinstance(value, int | float) else type(value).__name__
    )


def _detect_format(record: dict[str, Any]) -> str | None:
    if "messages" in record:
        return "chat"
    if "prompt" in record or "completion" in record:
        return "prompt_completion"
    if "text" in record:
        return "text"
    return None


def _nonempty_str(record: dict[str, Any], key: str) -> str | None:
    """The problem with ``record[key]`` as a training string, or None when it is fine."""
    if key not in record:
        return f"missing {key!r}: add a non-empty string"
    value = record[key]
    if not isinstance(value, str):
        return f"{key!r} must be a string, got {_type_name(value)}"
    if not value.strip():
        return f"{key!r} is empty: give it some text"
    return None


def _check_chat(messages: Any) -> list[str]:
    """Every rule a chat record breaks; ordering is only judged between turns with a known role.

    This runs once per record of a possibly huge file, so the well-formed path does no string building.
    """
    if type(messages) is not list:
        return [f"'messages' must be a list of {{role, content}} objects, got {_type_name(messages)}"]
    if not messages:
        return ["'messages' is empty: add a user turn and an assistant reply"]
    out: list[str] = []
    previous: str | None = None  # role of the last user/assistant turn; "?" after an unreadable one
    broken = False  # some message has no usable role or content
    assistant_seen = False
    answered = False
    for i, msg in enumerate(messages):
        if type(msg) is not dict:
            out.append(f"messages[{i}] must be an object with 'role' and 'content', got {_type_name(msg)}")
            previous, broken = "?", True
            continue
        role = msg.get("role")
        content = msg.get("content")
        if type(content) is not str:
            broken = True
            if "content" not in msg:
                out.append(f"messages[{i}] has no 'content': add the message text as a string")
            else:
                out.append(f"messages[{i}].content must be a string, got {_type_name(content)}")
        if role == "user":
            if previous == "user":
                out.append(f"messages[{i}]: two 'user' messages in a row; user and assistant must alternate")
            previous = "user"
        elif role == "assistant":
            if previous is None:
                out.append(
                    f"messages[{i}]: the first non-system message must be from 'user', got 'assistant'"
                )
            elif previous == "assistant":
                out.append(
                    f"messages[{i}]: two 'assistant' messages in a row; user and assistant must alternate"
                )
            previous = "assistant"
            assistant_seen = True
            if not answered and type(content) is str and content and not content.isspace():
                answered = True
        elif role == "system":
            if previous is not None:
                out.append(
                    f"messages[{i}] is a system message after the conversation started; "
                    "move system messages to the start"
                )
        else:
            if "role" not in msg:
                out.append(f"messages[{i}] has no 'role': use one of {_ROLE_LIST}")
            else:
                out.append(f"messages[{i}].role is {_short(role)}; use one of {_ROLE_LIST}")
            previous, broken = "?", True
    if broken:
        # A broken message may well be the missing reply (a misspelt role, say): don't pile on guesses.
        return out
    if not assistant_seen:
        out.append("no assistant message: add at least one assistant reply to train on")
    elif not answered:
        out.append("every assistant message is empty: at least one reply needs text to train on")
    return out


def _check_record(fmt: str, record: dict[str, Any]) -> list[str]:
    if fmt == "chat":
        return _check_chat(record["messages"])
    keys = ("prompt", "completion") if fmt == "prompt_completion" else ("text",)
    return [p for p in (_nonempty_str(record, k) for k in keys) if p is not None]


def _check_parsed(
    record: Any, lineno: int, found: _Collector, fmt: str | None, fmt_line: int
) -> tuple[str | None, int]:
    """Check one parsed line; returns the file's format (set by its first record) and that line."""
    if not isinstance(record, dict):
        found.add(lineno, f"expected a JSON object, got {_type_name(record)}; {FORMAT_HELP}")
        return fmt, fmt_line
    kind = _detect_format(record)
    if kind is None:
        keys = ", ".join(_short(k) for k in list(record)[:5]) or "none"
        found.add(lineno, f"unknown record format (keys: {keys}); {FORMAT_HELP}")
        return fmt, fmt_line
    if fmt is None:
        fmt, fmt_line = kind, lineno
    elif kind != fmt:
        found.add(
            lineno, f"{kind} record in a {fmt} file (format set by line {fmt_line}); use one format per file"
        )
        return fmt, fmt_line
    for message in _check_record(kind, record):
        found.add(lineno, message)
    return fmt, fmt_line


def validate_shard(
    path: str | os.PathLike[str],
    max_problems: int = DEFAULT_MAX_PROBLEMS,
    *,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> ShardReport:
    """Check a shard and hash its bytes in one streaming pass; collects every problem up to the cap."""
    shard = Path(path)
    digest = hashlib.sha256()
    found = _Collector(shard, max_problems)
    fmt: str | None = None
    fmt_line = 0
    records = 0
    size = 0
    lineno = 0
    with open(shard, "rb", buffering=READ_BUFFER) as fh:
        readline = fh.readline
        update = digest.update
        while line := readline(max_line_bytes + 1):
            lineno += 1
            size += len(line)
            update(line)
            if len(line) > max_line_bytes and not line.endswith(b"\n"):
                # Hash the rest of the line in bounded pieces instead of reading it whole.
                length = len(line)
                while not line.endswith(b"\n") and (line := readline(SKIP_CHUNK)):
                    length += len(line)
                    size += len(line)
                    update(line)
                records += 1
                found.add(
                    lineno,
                    f"line is {length} bytes, over the {max_line_bytes}-byte limit for one "
                    "example; split or shorten it",
                )
                continue
            if line.isspace():
                continue
            records += 1
            record = _fast_parse(line)
            if record is not _REFUSED:
                fmt, fmt_line = _check_parsed(record, lineno, found, fmt, fmt_line)
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                found.add(
                    lineno,
                    f"not valid UTF-8 (byte {exc.start + 1} of the line is "
                    f"0x{line[exc.start]:02x}); save the file as UTF-8",
                )
                continue
            try:
                record = _parse_line(text)
            except json.JSONDecodeError as exc:
                if text.startswith("\ufeff"):
                    found.add(
                        lineno, "line starts with a UTF-8 byte-order mark; save the file as UTF-8 without BOM"
                    )
                else:
                    found.add(lineno, f"invalid JSON at column {exc.colno}: {exc.msg}")
                continue
            except (ValueError, RecursionError) as exc:
                found.add(lineno, f"invalid JSON: {exc}")
                continue
            fmt, fmt_line = _check_parsed(record, lineno, found, fmt, fmt_line)
    if records == 0:
        what = "empty" if size == 0 else "only blank lines"
        found.add(1, f"file is {what}: a shard needs at least one example")
    return ShardReport(
        path=shard,
        format=fmt,
        num_examples=records,
        sha256=digest.hexdigest(),
        size=size,
        problems=found.problems,
        more_problems=found.more,
    )


def require_valid(path: str | os.PathLike[str], max_problems: int = DEFAULT_MAX_PROBLEMS) -> ShardReport:
    """The report of a valid shard; otherwise a ShardError carrying every ``path:line: message``."""
    report = validate_shard(path, max_problems)
    if report.ok:
        return report
    lines = report.error_lines()
    shown = "\n".join(lines[:10])
    if len(lines) > 10:
        shown += f"\n... and {report.total_problems - 10} more problem(s)"
    raise ShardError(
        f"{report.path} is not a valid fine-tuning shard ({report.total_problems} problem(s)); "
        f"fix them and run validation again:\n{shown}",
        problems=lines,
    )


def iter_examples(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Parsed records of a validated shard, one at a time (the local trainer never loads it whole)."""
    shard = Path(path)
    with open(shard, "rb", buffering=READ_BUFFER) as fh:
        for lineno, line in enumerate(fh, start=1):
            if line.isspace():
                continue
            try:
                record = _parse_line(line.decode("utf-8"))
            except (ValueError, RecursionError) as exc:
                raise ShardError(
                    f"{shard}:{lineno}: unreadable record ({exc}); validate the shard before training",
                    problems=[f"{shard}:{lineno}: {exc}"],
                ) from None
            if not isinstance(record, dict):
                raise ShardError(
                    f"{shard}:{lineno}: expected a JSON object; validate the shard before training",
                    problems=[f"{shard}:{lineno}: expected a JSON object, got {_type_name(record)}"],
                )
            yield record
