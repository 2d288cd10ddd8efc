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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from trait_lora.core.errors import ShardError
from trait_lora.core.record_rules import (
    FORMAT_HELP,
    check_record,
    detect_format,
    short,
    type_name,
)
from trait_lora.core.validation_child import start_child

# 8 MiB of JSON is ~2M tokens, an order of magnitude past Llama-3.1's 128K context: no real example is
# that long, and capping here keeps the worst case (bytes + decoded str + parsed objects) under 100 MB.
MAX_LINE_BYTES = 8 << 20
READ_BUFFER = 4 << 20  # large reads keep syscalls rare; readline then slices lines out of the buffer
SKIP_CHUNK = 1 << 20  # how much of an over-long line is read at a time while skipping it
DEFAULT_MAX_PROBLEMS = 50
# From this size a second process checks the rest of the file (its start-up, ~0.1 s, then pays off).
PARALLEL_MIN_BYTES = 64 << 20
# This process also hashes the whole file, so it checks a little less than half.
MAIN_SHARE = 0.45


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


@dataclass
class _Scan:
    """Where a pass over (part of) a shard stands; line numbers and sizes count from where it began."""

    found: _Collector
    fmt: str | None = None  # set by the first record of a known format
    fmt_line: int = 0
    records: int = 0
    size: int = 0
    lineno: int = 0
    mismatches: int = 0  # "<kind> record in a <fmt> file" problems: they cite fmt_line


def _check_parsed(record: Any, scan: _Scan) -> None:
    """Check one parsed line; the file's format is set by its first record."""
    lineno, found = scan.lineno, scan.found
    if not isinstance(record, dict):
        found.add(lineno, f"expected a JSON object, got {type_name(record)}; {FORMAT_HELP}")
        return
    kind = detect_format(record)
    if kind is None:
        keys = ", ".join(short(k) for k in list(record)[:5]) or "none"
        found.add(lineno, f"unknown record format (keys: {keys}); {FORMAT_HELP}")
        return
    if scan.fmt is None:
        scan.fmt, scan.fmt_line = kind, lineno
    elif kind != scan.fmt:
        scan.mismatches += 1
        found.add(
            lineno,
            f"{kind} record in a {scan.fmt} file (format set by line {scan.fmt_line}); "
            "use one format per file",
        )
        return
    for message in check_record(kind, record):
        found.add(lineno, message)


def _scan(
    fh: BinaryIO,
    scan: _Scan,
    *,
    limit: int | None,
    update: Callable[[bytes], Any] | None,
    max_line_bytes: int,
) -> None:
    """Read, (optionally) hash and check lines from ``fh``'s position until ``limit`` bytes or EOF.

    ``limit`` always falls on a line start, so the last line read ends exactly there.
    """
    readline = fh.readline
    found = scan.found
    while (limit is None or scan.size < limit) and (line := readline(max_line_bytes + 1)):
        scan.lineno += 1
        scan.size += len(line)
        if update is not None:
            update(line)
        if len(line) > max_line_bytes and not line.endswith(b"\n"):
            # Hash the rest of the line in bounded pieces instead of reading it whole.
            length = len(line)
            while not line.endswith(b"\n") and (line := readline(SKIP_CHUNK)):
                length += len(line)
                scan.size += len(line)
                if update is not None:
                    update(line)
            scan.records += 1
            found.add(
                scan.lineno,
                f"line is {length} bytes, over the {max_line_bytes}-byte limit for one "
                "example; split or shorten it",
            )
            continue
        if line.isspace():
            continue
        scan.records += 1
        record = _fast_parse(line)
        if record is not _REFUSED:
            _check_parsed(record, scan)
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            found.add(
                scan.lineno,
                f"not valid UTF-8 (byte {exc.start + 1} of the line is "
                f"0x{line[exc.start]:02x}); save the file as UTF-8",
            )
            continue
        try:
            record = _parse_line(text)
        except json.JSONDecodeError as exc:
            if text.startswith("\ufeff"):
                found.add(
                    scan.lineno,
                    "line starts with a UTF-8 byte-order mark; save the file as UTF-8 without BOM",
                )
            else:
                found.add(scan.lineno, f"invalid JSON at column {exc.colno}: {exc.msg}")
            continue
        except (ValueError, RecursionError) as exc:
            found.add(scan.lineno, f"invalid JSON: {exc}")
            continue
        _check_parsed(record, scan)


def scan_range(path: Path, start: int, max_problems: int, max_line_bytes: int) -> dict[str, Any]:
    """Check the lines from byte ``start`` (a line start) to EOF, without hashing: the second half of a
    parallel pass (:mod:`trait_lora.core.validation_child`). Plain JSON, line numbers from ``start``."""
    scan = _Scan(_Collector(path, max_problems))
    with open(path, "rb", buffering=READ_BUFFER) as fh:
        fh.seek(start)
        _scan(fh, scan, limit=None, update=None, max_line_bytes=max_line_bytes)
    return {
        "fmt": scan.fmt,
        "fmt_line": scan.fmt_line,
        "records": scan.records,
        "size": scan.size,
        "lineno": scan.lineno,
        "mismatches": scan.mismatches,
        "problems": [[p.line, p.message] for p in scan.found.problems],
        "more": scan.found.more,
    }


def _merge(scan: _Scan, tail: dict[str, Any]) -> bool:
    """Append the second half's findings, renumbered; False when they depend on the first half.

    The child started without knowing the file's format: its results stand only if it judged no record
    against a format (mismatch messages cite the line that set it) and its format agrees with ours.
    """
    if tail["mismatches"] or (scan.fmt is not None and tail["fmt"] not in (None, scan.fmt)):
        return False
    base = scan.lineno
    if scan.fmt is None and tail["fmt"] is not None:
        scan.fmt, scan.fmt_line = tail["fmt"], base + tail["fmt_line"]
    for line, message in tail["problems"]:
        scan.found.add(base + line, message)
    scan.found.more += tail["more"]
    scan.records += tail["records"]
    scan.lineno += tail["lineno"]
    return True


def _split_point(fh: BinaryIO, total: int, max_line_bytes: int) -> int | None:
    """Where a second process takes over: the first line start after MAIN_SHARE of the file, or None
    (small file, one CPU, or no line end within reach of the target)."""
    if total < PARALLEL_MIN_BYTES or (os.cpu_count() or 1) < 2:
        return None
    target = int(total * MAIN_SHARE)
    fh.seek(target)
    scanned = 0
    while scanned <= max_line_bytes and (chunk := fh.read(1 << 16)):
        newline = chunk.find(b"\n")
        if newline >= 0:
            split = target + scanned + newline + 1
            fh.seek(0)
            return split if split < total else None
        scanned += len(chunk)
    fh.seek(0)
    return None


def validate_shard(
    path: str | os.PathLike[str],
    max_problems: int = DEFAULT_MAX_PROBLEMS,
    *,
    max_line_bytes: int = MAX_LINE_BYTES,
    split_at: int | None = None,
) -> ShardReport:
    """Check a shard and hash its bytes in one streaming pass; collects every problem up to the cap.

    A large shard is checked by two processes: this one hashes the whole file and checks its first part
    while a child (:mod:`trait_lora.core.validation_child`) checks the rest; parsing, not hashing, is
    the bound, so this roughly halves the wall time on two cores. The report is identical either way
    (the child's findings are renumbered, or the rest is checked here when they cannot be). ``split_at``
    (a line start) forces the split, for tests.
    """
    shard = Path(path)
    digest = hashlib.sha256()
    scan = _Scan(_Collector(shard, max_problems))
    with open(shard, "rb", buffering=READ_BUFFER) as fh:
        total = os.fstat(fh.fileno()).st_size
        split = split_at if split_at is not None else _split_point(fh, total, max_line_bytes)
        child = start_child(shard, split, max_problems, max_line_bytes) if split else None
        try:
            _scan(fh, scan, limit=split, update=digest.update, max_line_bytes=max_line_bytes)
            if split:
                rest = 0
                while block := fh.read(READ_BUFFER):  # hashing runs at disk speed; the child parses
                    digest.update(block)
                    rest += len(block)
                tail = child.result() if child is not None else None
                if tail is not None and tail["size"] == rest and _merge(scan, tail):
                    scan.size += rest
                else:
                    fh.seek(scan.size)
                    _scan(fh, scan, limit=None, update=None, max_line_bytes=max_line_bytes)
        finally:
            if child is not None:
                child.close()
    if scan.records == 0:
        what = "empty" if scan.size == 0 else "only blank lines"
        scan.found.add(1, f"file is {what}: a shard needs at least one example")
    return ShardReport(
        path=shard,
        format=scan.fmt,
        num_examples=scan.records,
        sha256=digest.hexdigest(),
        size=scan.size,
        problems=scan.found.problems,
        more_problems=scan.found.more,
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
                    problems=[f"{shard}:{lineno}: expected a JSON object, got {type_name(record)}"],
                )
            yield record
