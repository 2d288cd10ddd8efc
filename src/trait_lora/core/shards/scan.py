"""One streaming pass over (part of) a shard: read, hash if asked, parse and check every line.

Shared by the validator (``validation``, the first part and the hash) and the second process
(``validation_child``, the rest of a large file), so that neither imports the other.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from trait_lora.core.shards.record_rules import (
    FORMAT_HELP,
    check_record,
    detect_format,
    short,
    type_name,
)

# 8 MiB of JSON is ~2M tokens, an order of magnitude past Llama-3.1's 128K context: no real example is
# that long, and capping here keeps the worst case (bytes + decoded str + parsed objects) under 100 MB.
MAX_LINE_BYTES = 8 << 20
READ_BUFFER = 4 << 20  # large reads keep syscalls rare; readline then slices lines out of the buffer
SKIP_CHUNK = 1 << 20  # how much of an over-long line is read at a time while skipping it


@dataclass(frozen=True)
class Problem:
    path: Path
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


class Collector:
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


def parse_line(text: str) -> Any:
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
class Scan:
    """Where a pass over (part of) a shard stands; line numbers and sizes count from where it began."""

    found: Collector
    fmt: str | None = None  # set by the first record of a known format
    fmt_line: int = 0
    records: int = 0
    size: int = 0
    lineno: int = 0
    mismatches: int = 0  # "<kind> record in a <fmt> file" problems: they cite fmt_line


def _check_parsed(record: Any, scan: Scan) -> None:
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


def scan_lines(
    fh: BinaryIO,
    scan: Scan,
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
            record = parse_line(text)
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
    parallel pass (:mod:`trait_lora.core.shards.validation_child`). Plain JSON, line numbers counted
    from ``start``."""
    scan = Scan(Collector(path, max_problems))
    with open(path, "rb", buffering=READ_BUFFER) as fh:
        fh.seek(start)
        scan_lines(fh, scan, limit=None, update=None, max_line_bytes=max_line_bytes)
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


def merge_tail(scan: Scan, tail: dict[str, Any]) -> bool:
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
