"""JSON records in a store: a strict read with the version it was read at, and a compare-and-swap.

A record that does not parse is an error naming it (at its URL) and what to do, never an empty object:
silently resetting a ledger would re-buy every job. Every change is read-change-swap; on a conflict the
change is decided again from what is there now, so writers on other machines need no lock.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable

from trait_lora.core.errors import LedgerError
from trait_lora.core.storage.ledger_io import Record
from trait_lora.core.storage.opener import open_location
from trait_lora.core.storage.store import AlreadyExists, Blob, Store, VersionConflict, encode_json

CAS_TRIES = 64


def as_store(location: str | os.PathLike[str] | Store) -> Store:
    """A store as given, or the store a folder path or location URL names (``opener.open_location``)."""
    return open_location(location)


def read_versioned(store: Store, key: str, *, what: str) -> tuple[Record | None, str | None]:
    """The record at ``key`` and its version; ``(None, None)`` when missing; LedgerError if unreadable."""
    blob = store.read(key)
    if blob is None:
        return None, None
    return _parse(store, key, blob, what), blob.version


def _parse(store: Store, key: str, blob: Blob, what: str) -> Record:
    where = store.url(key)
    try:
        data = blob.json()
    except UnicodeDecodeError as exc:
        raise LedgerError(
            f"{where}: {what} is not UTF-8 text (byte {exc.start}); restore it from a backup, "
            "or move it aside to forget what it records"
        ) from None
    except json.JSONDecodeError as exc:
        raise LedgerError(
            f"{where}:{exc.lineno}: {what} is corrupt or truncated ({exc.msg}, column {exc.colno}); "
            "nothing was changed. Restore it from a backup, or move it aside to forget what it "
            "records (jobs still on Together are found again by their suffix tag)"
        ) from None
    if not isinstance(data, dict):
        raise LedgerError(
            f"{where}: {what} must be a JSON object, got {type(data).__name__}; restore it from a "
            "backup, or move it aside to forget what it records"
        )
    return data


def swap_bytes(store: Store, key: str, *, what: str, change: Callable[[Blob | None], bytes | None]) -> None:
    """Read ``key``, decide its new bytes from what is there, write them only if it is unchanged since
    the read; again on a conflict. ``change`` may run more than once; returning None writes nothing."""
    for attempt in range(CAS_TRIES):
        current = store.read(key)
        new = change(current)
        if new is None:
            return
        try:
            if current is None:
                store.create(key, new)
            else:
                store.replace(key, new, current.version)
            return
        except (AlreadyExists, VersionConflict):
            time.sleep(random.uniform(0, min(0.5, 0.005 * 2**attempt)))
    raise LedgerError(f"{store.url(key)}: {what} kept changing under {CAS_TRIES} tries; try again")


def swap(
    store: Store, key: str, *, what: str, change: Callable[[Record | None], Record | None]
) -> Record | None:
    """``swap_bytes`` for a JSON record read strictly (``read_versioned``'s errors); returning the
    record unchanged (or None) writes nothing."""
    result: list[Record | None] = [None]

    def decide(current: Blob | None) -> bytes | None:
        old = None if current is None else _parse(store, key, current, what)
        new = change(old)
        result[0] = new
        return None if new is None or new == old else encode_json(new)

    swap_bytes(store, key, what=what, change=decide)
    return result[0]
