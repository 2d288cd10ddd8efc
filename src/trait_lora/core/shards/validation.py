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
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from trait_lora.core.errors import ShardError
from trait_lora.core.shards.record_rules import type_name
from trait_lora.core.shards.scan import (
    MAX_LINE_BYTES,
    READ_BUFFER,
    Collector,
    Problem,
    Scan,
    merge_tail,
    parse_line,
    scan_lines,
)
from trait_lora.core.shards.validation_child import start_child

__all__ = ["MAX_LINE_BYTES", "Problem", "ShardReport", "iter_examples", "require_valid", "validate_shard"]

DEFAULT_MAX_PROBLEMS = 50
# From this size a second process checks the rest of the file (its start-up, ~0.1 s, then pays off).
PARALLEL_MIN_BYTES = 64 << 20
# This process also hashes the whole file, so it checks a little less than half.
MAIN_SHARE = 0.45


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
    while a child (:mod:`trait_lora.core.shards.validation_child`) checks the rest; parsing, not hashing, is
    the bound, so this roughly halves the wall time on two cores. The report is identical either way
    (the child's findings are renumbered, or the rest is checked here when they cannot be). ``split_at``
    (a line start) forces the split, for tests.
    """
    shard = Path(path)
    digest = hashlib.sha256()
    scan = Scan(Collector(shard, max_problems))
    with open(shard, "rb", buffering=READ_BUFFER) as fh:
        total = os.fstat(fh.fileno()).st_size
        split = split_at if split_at is not None else _split_point(fh, total, max_line_bytes)
        child = start_child(shard, split, max_problems, max_line_bytes) if split else None
        try:
            scan_lines(fh, scan, limit=split, update=digest.update, max_line_bytes=max_line_bytes)
            if split:
                rest = 0
                while block := fh.read(READ_BUFFER):  # hashing runs at disk speed; the child parses
                    digest.update(block)
                    rest += len(block)
                tail = child.result() if child is not None else None
                if tail is not None and tail["size"] == rest and merge_tail(scan, tail):
                    scan.size += rest
                else:
                    fh.seek(scan.size)
                    scan_lines(fh, scan, limit=None, update=None, max_line_bytes=max_line_bytes)
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
                record = parse_line(line.decode("utf-8"))
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
