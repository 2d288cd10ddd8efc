"""Locking and strict JSON reads for the files many workers share (the ledger, per-run records).

A file that does not parse is an error that names it, never an empty object: silently resetting a
ledger would re-buy every job. Only readers that show state and decide nothing (the dashboard) use
``read_object_or_empty``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trait_lora.core.errors import LedgerError

LOCK_FILE = ".ledger.lock"

Record = dict[str, Any]


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_utc(stamp: object) -> datetime:
    """The inverse of ``utc_now``; an unreadable stamp reads as the epoch (as old as can be)."""
    try:
        return datetime.strptime(str(stamp), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return datetime.fromtimestamp(0, UTC)


@contextlib.contextmanager
def exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Serialise writers across processes (Airflow workers on one host or one shared volume)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _load(path: Path, what: str) -> Any:
    """The file's JSON value; ``None`` when it does not exist."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise LedgerError(
            f"{path}: {what} is not UTF-8 text (byte {exc.start}); restore it from a backup, "
            f"or move it aside to forget what it records"
        ) from None
    except json.JSONDecodeError as exc:
        raise LedgerError(
            f"{path}:{exc.lineno}: {what} is corrupt or truncated ({exc.msg}, column {exc.colno}); "
            "nothing was changed. Restore it from a backup, or move it aside to forget what it "
            "records (jobs still on Together are found again by their suffix tag)"
        ) from None


def read_json_object(path: Path, *, what: str) -> dict[str, Record]:
    """A JSON object of key -> record; missing means empty, anything else is a LedgerError."""
    data = _load(path, what)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LedgerError(
            f"{path}: {what} must be a JSON object of trait -> record, got {type(data).__name__}"
        )
    for trait, record in data.items():
        if not isinstance(record, dict):
            raise LedgerError(f"{path}: entry {trait!r} of {what} must be an object, got {record!r}")
    return data


def read_object_or_empty(path: Path) -> dict[str, Any]:
    """The file's JSON object, or an empty one when it is missing, unreadable or not an object: for a
    reader that only shows state; whoever writes reads strictly and is told what to fix."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_record(path: Path, *, what: str) -> Record | None:
    """One record file (a JSON object); ``None`` when missing, a LedgerError when unreadable."""
    data = _load(path, what)
    if data is not None and not isinstance(data, dict):
        raise LedgerError(
            f"{path}: {what} must be a JSON object, got {type(data).__name__}; restore it from a "
            "backup, or move it aside to forget what it records"
        )
    return data
