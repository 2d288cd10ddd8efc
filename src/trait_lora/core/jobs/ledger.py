"""The ledger: which job each trait has, and what produced each installed adapter; many writers.

The job ledger maps trait -> the current job (id, status, key, uploaded file): it is what lets a retry
adopt a job instead of paying for a second one. The hash ledger maps trait -> what produced the
installed adapter (shard sha256, config hash, job key, adapter sha256, time): it is what lets an
unchanged shard be skipped.

Each trait's record is its own file under ``ledger/`` (``jobs/<trait>.json``, ``hashes/<trait>.json``),
so an update costs the same at ten traits or a thousand: the seed kept one file per ledger, and
rewriting it on every update wrote O(traits^2) bytes per run. Two small indexes answer the questions
that span traits: ``files/<sha256>.json`` (a Together file already holding these bytes) and
``in_flight.json`` (which traits hold a job slot). Every update runs under one exclusive ``flock`` and
lands by atomic rename, so readers need no lock. The seed's ``lora_job_ids.json`` and
``file_hashes.json`` are still written, as snapshots, whenever the mapping is; an output dir that has
only those (a seed install, or before this layout) is imported into ``ledger/`` on its first write.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trait_lora.core.errors import LedgerError
from trait_lora.core.jobs.job_status import CREATING, JobStatus
from trait_lora.core.shards.catalog import TRAIT_RE, check_trait_name
from trait_lora.core.storage.atomic import atomic_write_json, fsync_dir
from trait_lora.core.storage.ledger_io import (
    LOCK_FILE,
    Record,
    exclusive_lock,
    parse_utc,
    read_json_object,
    read_object_or_empty,
    read_record,
    utc_now,
)

JOBS_FILE = "lora_job_ids.json"
HASHES_FILE = "file_hashes.json"
LEDGER_DIR = "ledger"
JOBS, HASHES, FILES = "jobs", "hashes", "files"
IN_FLIGHT_FILE = "in_flight.json"
WHAT = {JOBS: "job ledger", HASHES: "hash ledger"}
SHA256_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class LedgerView:
    """Both ledgers as read once: planning N traits asks about each of them."""

    output_dir: Path
    jobs: Mapping[str, Record]
    hashes: Mapping[str, Record]

    def job(self, trait: str) -> Record | None:
        return self.jobs.get(trait)

    def hash_record(self, trait: str) -> Record | None:
        return self.hashes.get(trait)


def _uploaded_pairs(record: Record) -> list[tuple[str, str]]:
    """(sha256, Together file id) of the bytes a job record says were uploaded."""
    pairs = (
        (record.get("file_sha256") or record.get("shard_sha256"), record.get("file_id")),
        (record.get("validation_sha256"), record.get("validation_file_id")),
    )
    return [(str(d), str(f)) for d, f in pairs if d and f and SHA256_RE.fullmatch(str(d))]


def _lenient_seed(path: Path) -> dict[str, Record]:
    """A seed-format ledger file as a reader that only shows state takes it: what it can read of it
    (each trait's object), nothing where it cannot; the import reports the rest to whoever writes."""
    data = read_object_or_empty(path)
    return {k: v for k, v in data.items() if isinstance(v, dict) and TRAIT_RE.fullmatch(k)}


def _file_entry(file_id: str, trait: str) -> Record:
    """An uploaded-file index entry: the file, and the trait whose upload recorded it (for a person
    reading the index; only ``file_id`` is used)."""
    return {"file_id": file_id, "trait": trait}


def _slot_entry(record: Record) -> Record:
    """What the in-flight index keeps of a record: enough to count it against the cap. The time is kept
    only where it matters (a ``creating`` with no job id goes stale), so most updates leave it alone."""
    entry = {"status": record.get("status")}
    if record.get("job_id"):
        entry["job_id"] = record["job_id"]
    elif record.get("status") == CREATING:
        entry["updated_at"] = record.get("updated_at")
    return entry


def _holds_slot(record: Record, now: datetime, stale_after_s: float) -> bool:
    status = JobStatus.of(record.get("status"))
    if not status.in_flight:
        return False
    if status.value == CREATING and not record.get("job_id"):
        # a create that never happened (its worker died before the POST and nobody retried it)
        return (now - parse_utc(record.get("updated_at"))).total_seconds() <= stale_after_s
    return True


class Ledger:
    """The ledger of one output directory."""

    def __init__(self, output_dir: str | os.PathLike[str]) -> None:
        self.output_dir = Path(output_dir)
        self.root = self.output_dir / LEDGER_DIR
        self.jobs_path = self.output_dir / JOBS_FILE  # seed-format snapshots
        self.hashes_path = self.output_dir / HASHES_FILE
        self.lock_path = self.output_dir / LOCK_FILE

    def record_path(self, kind: str, trait: str) -> Path:
        check_trait_name(trait)
        return self.root / kind / f"{trait}.json"

    # -- reads (no lock: renames are atomic, a reader sees a whole file) --
    def _seed_path(self, kind: str) -> Path:
        return self.jobs_path if kind == JOBS else self.hashes_path

    def _all(self, kind: str, tolerant: bool = False) -> dict[str, Record]:
        """Every record of one kind. ``tolerant``: an unreadable record (or seed file) reads as absent
        instead of raising, for readers that only show state (the dashboard); whoever writes still
        gets the LedgerError that says which file to fix."""
        if not self.root.is_dir():  # not imported yet: the seed-format file is the truth
            path = self._seed_path(kind)
            return _lenient_seed(path) if tolerant else read_json_object(path, what=WHAT[kind])
        records = {}
        for path in sorted((self.root / kind).glob("*.json")):
            if TRAIT_RE.fullmatch(path.stem):  # anything else is not ours (a hand-made backup)
                try:
                    record = read_record(path, what=f"{WHAT[kind]} record")
                except (LedgerError, OSError):
                    if tolerant:
                        continue
                    raise
                if record is not None:
                    records[path.stem] = record
        return records

    def _one(self, kind: str, trait: str) -> Record | None:
        if not self.root.is_dir():
            return read_json_object(self._seed_path(kind), what=WHAT[kind]).get(trait)
        return read_record(self.record_path(kind, trait), what=f"{WHAT[kind]} record")

    def jobs(self, *, tolerant: bool = False) -> dict[str, Record]:
        return self._all(JOBS, tolerant)

    def hashes(self, *, tolerant: bool = False) -> dict[str, Record]:
        return self._all(HASHES, tolerant)

    def view(self) -> LedgerView:
        """A snapshot for read-only decisions; anything that writes reads again under the lock."""
        return LedgerView(self.output_dir, self.jobs(), self.hashes())

    def job(self, trait: str) -> Record | None:
        return self._one(JOBS, trait)

    def hash_record(self, trait: str) -> Record | None:
        return self._one(HASHES, trait)

    def find_uploaded_file(self, sha256: str) -> str | None:
        """A Together file id already holding these exact bytes (saves a re-upload): a whole shard, or
        the training or validation part of a split one. Kept after its job record is replaced: the
        upload asks Together for the file anyway, and a file Together no longer has is uploaded again."""
        if not self.root.is_dir():
            for record in self.jobs().values():
                for digest, file_id in _uploaded_pairs(record):
                    if digest == sha256:
                        return file_id
            return None
        if not SHA256_RE.fullmatch(sha256):
            return None
        entry = read_record(self.root / FILES / f"{sha256}.json", what="uploaded-file index")
        return str(entry["file_id"]) if entry and entry.get("file_id") else None

    # -- writes (each under the lock; the layout is created or imported by the first one) --
    def _ensure_layout(self) -> None:
        """Create ``ledger/``, importing the seed-format files if there are any; all or nothing."""
        if self.root.is_dir():
            return
        jobs = read_json_object(self.jobs_path, what=WHAT[JOBS])  # a corrupt one stops here, unchanged
        hashes = read_json_object(self.hashes_path, what=WHAT[HASHES])
        for path, data in ((self.jobs_path, jobs), (self.hashes_path, hashes)):
            for trait in data:
                if not TRAIT_RE.fullmatch(trait):
                    raise LedgerError(
                        f"{path}: entry {trait!r} is not a trait name (<axis>_plus or <axis>_minus); "
                        "rename or remove it, nothing was changed"
                    )
        self.output_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{LEDGER_DIR}.", suffix=".tmp", dir=self.output_dir))
        try:
            for kind, data in ((JOBS, jobs), (HASHES, hashes)):
                (staging / kind).mkdir()
                for trait, record in data.items():
                    atomic_write_json(staging / kind / f"{trait}.json", record)
            (staging / FILES).mkdir()
            for trait, record in jobs.items():
                for digest, file_id in _uploaded_pairs(record):
                    atomic_write_json(staging / FILES / f"{digest}.json", _file_entry(file_id, trait))
            flying = {t: _slot_entry(r) for t, r in jobs.items() if JobStatus.of(r.get("status")).in_flight}
            atomic_write_json(staging / IN_FLIGHT_FILE, flying)
            os.chmod(staging, 0o755)  # mkdtemp's 0700 would lock out other users' workers
            os.rename(staging, self.root)
            fsync_dir(self.output_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def _in_flight(self) -> dict[str, Record]:
        return read_json_object(self.root / IN_FLIGHT_FILE, what="in-flight index")

    def _put_job(self, trait: str, old: Record | None, new: Record) -> None:
        """Write a job record and keep the indexes true. The in-flight index is written before a record
        enters (or changes) flight and after it leaves, so a worker dying between the two writes leaves
        it listing too much, never too little: the cap errs on the safe side, and the claim at the cap
        re-reads the records it counts."""
        path = self.record_path(JOBS, trait)
        flying = JobStatus.of(new.get("status")).in_flight
        index = self._in_flight()
        if flying and index.get(trait) != _slot_entry(new):
            atomic_write_json(self.root / IN_FLIGHT_FILE, {**index, trait: _slot_entry(new)})
        atomic_write_json(path, new)
        if not flying and trait in index:
            atomic_write_json(self.root / IN_FLIGHT_FILE, {t: e for t, e in index.items() if t != trait})
        known = {d for d, _ in _uploaded_pairs(old or {})}
        for digest, file_id in _uploaded_pairs(new):
            if digest not in known:
                atomic_write_json(self.root / FILES / f"{digest}.json", _file_entry(file_id, trait))

    def _change_job(self, trait: str, change: Callable[[Record | None], Record | None]) -> Record | None:
        with exclusive_lock(self.lock_path):
            self._ensure_layout()
            return self._change_job_locked(trait, change)

    def _change_job_locked(
        self, trait: str, change: Callable[[Record | None], Record | None]
    ) -> Record | None:
        """Read the trait's job record, change it, write it if it changed; the caller holds the lock."""
        old = read_record(self.record_path(JOBS, trait), what=f"{WHAT[JOBS]} record")
        new = change(old)
        if new is not None and new != old:
            self._put_job(trait, old, new)
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

        result = self._change_job(trait, change)
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

        self._change_job(trait, change)
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
        check_trait_name(trait)
        if cap < 1:
            raise LedgerError(f"the cap on jobs in flight must be >= 1, got {cap}")
        now = datetime.now(UTC)
        with exclusive_lock(self.lock_path):
            self._ensure_layout()
            index = self._in_flight()
            holders = {t: e for t, e in index.items() if t != trait and _holds_slot(e, now, stale_after_s)}
            if len(holders) >= cap:  # confirm from the records: the index may list too much (see _put_job)
                records = {t: self.job(t) for t in holders}
                holders = {t: r for t, r in records.items() if r and _holds_slot(r, now, stale_after_s)}
                gone = [t for t, r in records.items() if not (r and JobStatus.of(r.get("status")).in_flight)]
                if gone:
                    index = {t: e for t, e in index.items() if t not in gone}
                    atomic_write_json(self.root / IN_FLIGHT_FILE, index)
                if len(holders) >= cap:
                    return holders

            def claim(old: Record | None) -> Record:
                base = dict(old or {}) if (old or {}).get("job_key") in (None, job_key) else {}
                base.update(job_key=job_key, status=CREATING, updated_at=utc_now())
                if run_id is not None:
                    base["created_in_run"] = run_id
                return base

            self._change_job_locked(trait, claim)
            return {}

    def record_adapter(self, trait: str, **fields: Any) -> Record:
        """Record what produced the trait's installed adapter; call only after it verified."""
        required = ("shard_sha256", "config_hash", "job_key", "adapter_sha256")
        missing = [name for name in required if not fields.get(name)]
        if missing:
            raise LedgerError(f"record_adapter({trait!r}) is missing {', '.join(missing)}")
        from trait_lora.core.adapter.install import installed_fingerprint

        record = {**fields, "trained_at": fields.get("trained_at") or utc_now()}
        fingerprint = installed_fingerprint(self.output_dir, trait)
        if fingerprint is not None:  # lets a rerun's skip trust adapter_sha256 while it is untouched
            record.setdefault("adapter_stat", fingerprint)
        path = self.record_path(HASHES, trait)
        with exclusive_lock(self.lock_path):
            self._ensure_layout()
            atomic_write_json(path, record)
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

    def write_snapshots(self) -> None:
        """Refresh the seed-format ``lora_job_ids.json`` and ``file_hashes.json`` (one pass, so linear in
        traits; written with the mapping, once per run). Tools that read the seed's files keep working."""
        with exclusive_lock(self.lock_path):
            self._ensure_layout()
            for path, data in ((self.jobs_path, self.jobs()), (self.hashes_path, self.hashes())):
                try:
                    same = read_json_object(path, what=f"{path.name} snapshot") == data
                except LedgerError:  # only a snapshot now: the records under ledger/ are the truth
                    same = False
                if not same:
                    atomic_write_json(path, data)
