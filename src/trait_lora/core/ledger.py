"""The ledger: the seed's ``lora_job_ids.json`` and ``file_hashes.json``, safe for many writers.

``lora_job_ids.json`` maps trait -> the current job (id, status, key, uploaded file): it is what lets a
retry adopt a job instead of paying for a second one. ``file_hashes.json`` maps trait -> what produced
the installed adapter (shard sha256, config hash, job key, adapter sha256, time): it is what lets an
unchanged shard be skipped. Mapped Airflow tasks update different traits at the same moment, so every
update is a read-modify-write under an exclusive ``flock`` and lands by atomic rename. A file that does
not parse is an error, never an empty ledger: silently resetting it would re-buy every job.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trait_lora.core.atomic import atomic_write_json
from trait_lora.core.errors import LedgerError
from trait_lora.core.shards import check_trait_name

JOBS_FILE = "lora_job_ids.json"
HASHES_FILE = "file_hashes.json"
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


def read_json_object(path: Path, *, what: str) -> dict[str, Any]:
    """Load a JSON object file; missing means empty, anything unparsable is a LedgerError."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    try:
        data = json.loads(raw.decode("utf-8"))
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
    if not isinstance(data, dict):
        raise LedgerError(
            f"{path}: {what} must be a JSON object of trait -> record, got {type(data).__name__}"
        )
    for trait, record in data.items():
        if not isinstance(record, dict):
            raise LedgerError(f"{path}: entry {trait!r} of {what} must be an object, got {record!r}")
    return data


@dataclass(frozen=True)
class LedgerView:
    """Both ledgers as read once: planning N traits asks about each of them, and re-reading the files
    per trait would parse O(N) bytes N times (seconds at a thousand traits)."""

    output_dir: Path
    jobs: Mapping[str, Record]
    hashes: Mapping[str, Record]

    def job(self, trait: str) -> Record | None:
        return self.jobs.get(trait)

    def hash_record(self, trait: str) -> Record | None:
        return self.hashes.get(trait)


class Ledger:
    """Both ledger files of one output directory."""

    def __init__(self, output_dir: str | os.PathLike[str]) -> None:
        self.output_dir = Path(output_dir)
        self.jobs_path = self.output_dir / JOBS_FILE
        self.hashes_path = self.output_dir / HASHES_FILE
        self.lock_path = self.output_dir / LOCK_FILE

    # -- reads (no lock: renames are atomic, a reader sees a whole file) --
    def jobs(self) -> dict[str, Record]:
        return read_json_object(self.jobs_path, what="job ledger")

    def hashes(self) -> dict[str, Record]:
        return read_json_object(self.hashes_path, what="hash ledger")

    def view(self) -> LedgerView:
        """A snapshot for read-only decisions; anything that writes reads again under the lock."""
        return LedgerView(self.output_dir, self.jobs(), self.hashes())

    def job(self, trait: str) -> Record | None:
        return self.jobs().get(trait)

    def hash_record(self, trait: str) -> Record | None:
        return self.hashes().get(trait)

    def find_uploaded_file(self, sha256: str) -> str | None:
        """A Together file id already holding these exact bytes (saves a re-upload): a whole shard, or
        the training or validation part of a split one."""
        for record in self.jobs().values():
            pairs = (
                (record.get("file_sha256") or record.get("shard_sha256"), record.get("file_id")),
                (record.get("validation_sha256"), record.get("validation_file_id")),
            )
            for digest, file_id in pairs:
                if digest == sha256 and file_id:
                    return str(file_id)
        return None

    # -- writes --
    def _update(
        self, path: Path, what: str, trait: str, change: Callable[[Record | None], Record | None]
    ) -> Record | None:
        check_trait_name(trait)
        with exclusive_lock(self.lock_path):
            data = read_json_object(path, what=what)
            new = change(data.get(trait))
            if new is None:
                data.pop(trait, None)
            else:
                data[trait] = new
            atomic_write_json(path, data)
            return new

    def update_job(self, trait: str, **fields: Any) -> Record:
        """Merge ``fields`` into the trait's job record; a new ``job_key`` starts a fresh record."""

        def change(old: Record | None) -> Record:
            base = dict(old or {})
            if "job_key" in fields and base.get("job_key") not in (None, fields["job_key"]):
                base = {}
            base.update(fields)
            base["updated_at"] = utc_now()
            return base

        result = self._update(self.jobs_path, "job ledger", trait, change)
        assert result is not None
        return result

    def record_job_end(self, trait: str, *, job_id: str, status: str) -> bool:
        """Record that ``job_id`` ended, only if it is still the trait's current job (a refresh read
        earlier must never overwrite a newer job's record); returns whether it was recorded."""
        recorded = False

        def change(old: Record | None) -> Record | None:
            nonlocal recorded
            if old is None or old.get("job_id") != job_id:
                return old
            recorded = True
            return {**old, "status": status, "updated_at": utc_now()}

        self._update(self.jobs_path, "job ledger", trait, change)
        return recorded

    def claim_job_slot(
        self,
        trait: str,
        *,
        job_key: str,
        cap: int,
        stale_after_s: float = 1800.0,
        run_id: str | None = None,
    ) -> dict[str, Record]:
        """Mark ``trait`` as ``creating`` if fewer than ``cap`` other traits have a job in flight.

        Returns the other traits counted as in flight: empty when the slot was claimed. The count and the
        claim happen under one lock, so concurrent launches can never together pass the cap. A
        ``creating`` record with no job id older than ``stale_after_s`` is a create that never happened
        (its worker died before the POST and nobody retried it) and holds no slot. ``run_id`` is kept
        as ``created_in_run``: a job found later by that same run is its own, not adopted.
        """
        from trait_lora.core.job_status import CREATING, JobStatus

        check_trait_name(trait)
        if cap < 1:
            raise LedgerError(f"the cap on jobs in flight must be >= 1, got {cap}")
        now = datetime.now(UTC)
        with exclusive_lock(self.lock_path):
            data = read_json_object(self.jobs_path, what="job ledger")
            holders: dict[str, Record] = {}
            for other, record in data.items():
                status = JobStatus.of(record.get("status"))
                if other == trait or not status.in_flight:
                    continue
                if status.value == CREATING and not record.get("job_id"):
                    age = (now - parse_utc(record.get("updated_at"))).total_seconds()
                    if age > stale_after_s:
                        continue
                holders[other] = record
            if len(holders) >= cap:
                return holders
            base = dict(data.get(trait) or {})
            if base.get("job_key") not in (None, job_key):
                base = {}
            base.update(job_key=job_key, status=CREATING, updated_at=utc_now())
            if run_id is not None:
                base["created_in_run"] = run_id
            data[trait] = base
            atomic_write_json(self.jobs_path, data)
            return {}

    def record_adapter(self, trait: str, **fields: Any) -> Record:
        """Record what produced the trait's installed adapter; call only after it verified."""
        required = ("shard_sha256", "config_hash", "job_key", "adapter_sha256")
        missing = [name for name in required if not fields.get(name)]
        if missing:
            raise LedgerError(f"record_adapter({trait!r}) is missing {', '.join(missing)}")
        record = {**fields, "trained_at": fields.get("trained_at") or utc_now()}
        self._update(self.hashes_path, "hash ledger", trait, lambda _old: record)
        return record

    def record_planned_adapter(
        self,
        plan: Mapping[str, Any],
        *,
        adapter_sha256: str,
        job_id: str | None,
        backend: str,
        base_model: str,
        evaluation: Mapping[str, Any] | None = None,
    ) -> Record:
        """``record_adapter`` for the trait a run planned: the keys come from the plan, never recomputed.

        ``evaluation`` (held-out figures) travels with the adapter into the mapping."""
        extra = {"eval": dict(evaluation)} if evaluation else {}
        return self.record_adapter(
            plan["trait"],
            shard_sha256=plan["shard_sha256"],
            config_hash=plan["config_hash"],
            job_key=plan["job_key"],
            adapter_sha256=adapter_sha256,
            job_id=job_id,
            backend=backend,
            base_model=base_model,
            num_examples=plan.get("num_examples"),
            **extra,
        )
