"""The cap on jobs in flight: a slot taken by one swap of the in-flight index, then the create claim.

The index (``ledger/in_flight.json``) lists every trait whose job may be running (and ``trait@job_id``
for a job whose trait moved on to a new key while it ran). It is written before a record enters flight
and after it leaves, so it may list too much, never too little; at the cap the counted entries are
confirmed from their records before anyone is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from trait_lora.core.errors import LedgerError
from trait_lora.core.jobs.claims import Claim, Holder, decide_claim, is_fresh_creating
from trait_lora.core.jobs.job_status import CREATING, JobStatus
from trait_lora.core.shards.catalog import check_trait_name
from trait_lora.core.storage.ledger_io import Record, utc_now


class Ledger(Protocol):
    """What the cap needs of the ledger (``ledger.Ledger``), named here so the two do not import
    each other."""

    def _ensure_layout(self) -> None: ...

    def _swap(
        self, key: str, what: str, change: Callable[[Record | None], Record | None]
    ) -> Record | None: ...

    def _change_job(self, trait: str, change: Callable[[Record | None], Record | None]) -> Record | None: ...

    def job(self, trait: str) -> Record | None: ...


IN_FLIGHT_KEY = "ledger/in_flight.json"


@dataclass(frozen=True)
class SlotClaim:
    """The outcome of a claim: the claim (when taken), or the other jobs holding every slot."""

    claim: Claim | None
    holders: dict[str, Record] = field(default_factory=dict)


def slot_entry(record: Record) -> Record:
    """What the in-flight index keeps of a record: enough to count it against the cap. The time is kept
    only where it matters (a ``creating`` with no job id goes stale), so most updates leave it alone."""
    entry = {"status": record.get("status")}
    if record.get("job_id"):
        entry["job_id"] = record["job_id"]
    elif record.get("status") == CREATING:
        entry["updated_at"] = record.get("updated_at")
        if record.get("posted"):
            entry["posted"] = True
    return entry


def holds_slot(record: Record, now: datetime, stale_after_s: float) -> bool:
    if not JobStatus.of(record.get("status")).in_flight:
        return False
    if record.get("status") == CREATING and not record.get("job_id"):
        return is_fresh_creating(record, now, stale_after_s)
    return True


def index_trait(entry_key: str) -> str:
    """``trait`` or ``trait@job_id`` (a superseded job of the trait, still counted until it ends)."""
    return entry_key.split("@", 1)[0]


def claim_create(
    ledger: Ledger,
    trait: str,
    *,
    job_key: str,
    cap: int,
    holder: Holder,
    stale_after_s: float = 1800.0,
    run_id: str | None = None,
) -> SlotClaim:
    """Claim the trait's create for ``holder`` if fewer than ``cap`` other jobs are in flight.

    The slot is a swap of the in-flight index (the count and the entry in one write, so concurrent
    launches can never together pass the cap), then the claim a swap of the trait's record (ClaimHeld
    if another task instance holds a fresh claim for the same key). A ``creating`` with no job id
    older than ``stale_after_s`` is a create that never happened and holds no slot, unless its POST
    may have been sent (``posted``). ``run_id`` is kept as ``created_in_run``."""
    check_trait_name(trait)
    if cap < 1:
        raise LedgerError(f"the cap on jobs in flight must be >= 1, got {cap}")
    ledger._ensure_layout()
    now = datetime.now(UTC)
    blocked: dict[str, Record] = {}

    def take(old: Record | None) -> Record | None:
        index = dict(old or {})
        others = {
            k: e for k, e in index.items() if index_trait(k) != trait and holds_slot(e, now, stale_after_s)
        }
        blocked.clear()
        if len(others) >= cap:
            blocked.update(others)
            return old
        index[trait] = {"status": CREATING, "updated_at": utc_now()}
        return index

    ledger._swap(IN_FLIGHT_KEY, "in-flight index", take)
    if blocked:  # confirm from the records: the index may list too much
        holders, gone = _confirm(ledger, blocked, now, stale_after_s)
        if len(holders) >= cap:
            return SlotClaim(None, holders)

        def drop_gone(old: Record | None) -> Record | None:
            # only entries still as we confirmed them: one re-claimed meanwhile stays counted
            index = dict(old or {})
            for entry_key, seen in gone.items():
                if index.get(entry_key) == seen:
                    del index[entry_key]
            return index

        ledger._swap(IN_FLIGHT_KEY, "in-flight index", drop_gone)
        ledger._swap(IN_FLIGHT_KEY, "in-flight index", take)
        if blocked:
            return SlotClaim(None, dict(blocked))
    made: dict[str, Claim] = {}

    def claim(old: Record | None) -> Record:
        record, taken = decide_claim(
            trait, old, job_key=job_key, holder=holder, now=datetime.now(UTC), stale_after_s=stale_after_s
        )
        if run_id is not None:
            record["created_in_run"] = run_id
        made["claim"] = taken
        return record

    ledger._change_job(trait, claim)
    return SlotClaim(made["claim"])


def _confirm(
    ledger: Ledger, entries: Mapping[str, Record], now: datetime, stale_after_s: float
) -> tuple[dict[str, Record], dict[str, Record]]:
    """Which index entries really hold a slot, read from their records; and which are gone.

    A fresh ``creating`` entry counts whatever its record says: its claim may be between the index
    write and the record write. Anything else counts only if its record holds a slot."""
    holders: dict[str, Record] = {}
    gone: dict[str, Record] = {}
    for entry_key, entry in entries.items():
        if "@" in entry_key:  # a superseded job: only Together (a refresh) can say it ended
            holders[entry_key] = {**entry, "job_id": entry.get("job_id") or entry_key.split("@", 1)[1]}
            continue
        record = ledger.job(entry_key)
        if record and holds_slot(record, now, stale_after_s):
            holders[entry_key] = record
        elif entry.get("status") == CREATING and is_fresh_creating(entry, now, stale_after_s):
            holders[entry_key] = {**(record or {}), **entry}
        else:
            gone[entry_key] = entry
    return holders, gone
