"""The ledger: which job each trait has, and what produced each installed adapter; many writers.

The job ledger maps trait -> the current job (id, status, key, uploaded file, the create claim): it is
what lets a retry adopt a job instead of paying for a second one. The hash ledger maps trait -> what
produced the installed adapter (shard sha256, config hash, job key, adapter sha256, time): it is what
lets an unchanged shard be skipped.

Each trait's record is its own object under ``ledger/`` (``jobs/<trait>.json``, ``hashes/<trait>.json``),
so an update costs the same at ten traits or a thousand. Two small indexes answer the questions that
span traits: ``files/<sha256>.json`` (a Together file already holding these bytes) and
``in_flight.json`` (which traits hold a job slot). Every object lives in a ``Store`` (a local folder
or object storage) and every change is a compare-and-swap on one object: read it with its version,
change it, write it only if it is still at that version, else read again. No lock spans objects, so
the order of writes keeps the cap safe: a record enters the in-flight index before it enters flight
and leaves it after. The seed's ``lora_job_ids.json`` and ``file_hashes.json`` are written as
snapshots with the mapping; a local output dir that has only those is imported on its first write.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from trait_lora.core.errors import LedgerError
from trait_lora.core.jobs.claims import Claim, Holder, check_holder
from trait_lora.core.jobs.job_status import JobStatus
from trait_lora.core.jobs.known_jobs import KnownJobs
from trait_lora.core.jobs.seed_format import (
    FILES,
    HASHES,
    HASHES_FILE,
    IN_FLIGHT_FILE,
    JOBS,
    JOBS_FILE,
    LEDGER_DIR,
    SHA256_RE,
    WHAT,
    file_entry,
    import_seed,
    lenient_seed,
    uploaded_pairs,
    write_snapshots,
)
from trait_lora.core.jobs.slots import SlotClaim, claim_create, slot_entry
from trait_lora.core.jobs.view import JobsOnDemand, LedgerView
from trait_lora.core.shards.catalog import TRAIT_RE, check_trait_name
from trait_lora.core.storage.ledger_io import LOCK_FILE, Record, exclusive_lock, read_json_object, utc_now
from trait_lora.core.storage.local import LocalStore
from trait_lora.core.storage.opener import open_location
from trait_lora.core.storage.records import read_versioned, swap
from trait_lora.core.storage.store import AlreadyExists, Store, StoreError, VersionConflict, encode_json

__all__ = ["HASHES_FILE", "JOBS_FILE", "LEDGER_DIR", "Ledger", "LedgerView", "SlotClaim"]

NO_HOLDER = Holder("unnamed")  # callers that do not say who they are (tests, tools): one holder


class Ledger:
    """The ledger of one output location (a folder path, or any ``Store``)."""

    def __init__(self, output: str | os.PathLike[str] | Store) -> None:
        self.store: Store = open_location(output)
        # A local folder keeps today's paths (the seed's snapshots, the import, the adapter stat).
        self.local = isinstance(self.store, LocalStore)
        self.output_dir = self.store.root if isinstance(self.store, LocalStore) else Path(self.store.location)
        self.root = self.output_dir / LEDGER_DIR
        self.jobs_path = self.output_dir / JOBS_FILE  # seed-format snapshots
        self.hashes_path = self.output_dir / HASHES_FILE
        self.lock_path = self.output_dir / LOCK_FILE

    @staticmethod
    def key(kind: str, trait: str) -> str:
        check_trait_name(trait)
        return f"{LEDGER_DIR}/{kind}/{trait}.json"

    def record_path(self, kind: str, trait: str) -> Path:
        return self.output_dir / self.key(kind, trait)

    # -- reads (no lock: every write lands whole, a reader sees one version or the next) --
    def _read(self, key: str, what: str) -> tuple[Record | None, str | None]:
        return read_versioned(self.store, key, what=what)

    def _laid_out(self) -> bool:
        """Whether ``ledger/`` exists; only a local folder can hold a seed-format ledger instead."""
        return not self.local or self.root.is_dir()

    def _seed_path(self, kind: str) -> Path:
        return self.jobs_path if kind == JOBS else self.hashes_path

    def _all(self, kind: str, tolerant: bool = False) -> dict[str, Record]:
        """Every record of one kind. ``tolerant``: an unreadable record (or seed file) reads as absent
        instead of raising, for readers that only show state (the dashboard); whoever writes still
        gets the LedgerError that says which file to fix."""
        if not self._laid_out():  # not imported yet: the seed-format file is the truth
            path = self._seed_path(kind)
            return lenient_seed(path) if tolerant else read_json_object(path, what=WHAT[kind])
        records = {}
        for key in self.store.list(f"{LEDGER_DIR}/{kind}/"):
            name = key.rsplit("/", 1)[-1]
            stem = name.removesuffix(".json")
            if key.count("/") != 2 or not name.endswith(".json") or not TRAIT_RE.fullmatch(stem):
                continue  # not ours (a hand-made backup)
            try:
                record, _ = self._read(key, f"{WHAT[kind]} record")
            except (LedgerError, OSError, StoreError):
                if tolerant:
                    continue
                raise
            if record is not None:
                records[stem] = record
        return records

    def _one(self, kind: str, trait: str) -> Record | None:
        if not self._laid_out():
            return read_json_object(self._seed_path(kind), what=WHAT[kind]).get(trait)
        return self._read(self.key(kind, trait), f"{WHAT[kind]} record")[0]

    def jobs(self, *, tolerant: bool = False) -> dict[str, Record]:
        return self._all(JOBS, tolerant)

    def hashes(self, *, tolerant: bool = False) -> dict[str, Record]:
        return self._all(HASHES, tolerant)

    def view(self) -> LedgerView:
        """A snapshot for read-only decisions; anything that writes reads again as it swaps.

        Hash records are read for every trait (each decision needs one); job records only for the
        traits that ask (``_JobsOnDemand``): a trait that skips never needs its job, so a rerun with
        nothing changed reads one record per trait, not two."""
        jobs: Mapping[str, Record] = JobsOnDemand(self.job, self.jobs) if self._laid_out() else self.jobs()
        return LedgerView(self.output_dir, jobs, self.hashes())

    def job(self, trait: str) -> Record | None:
        return self._one(JOBS, trait)

    def hash_record(self, trait: str) -> Record | None:
        return self._one(HASHES, trait)

    def known_jobs(self) -> KnownJobs:
        """What Together's jobs are called, remembered beside this ledger (``known_jobs``)."""
        return KnownJobs(self.store, prepare=self._ensure_layout)

    def find_uploaded_file(self, sha256: str) -> str | None:
        """A Together file id already holding these exact bytes (saves a re-upload): a whole shard, or
        the training or validation part of a split one. Kept after its job record is replaced: the
        upload asks Together for the file anyway, and a file Together no longer has is uploaded again."""
        if not self._laid_out():
            for record in self.jobs().values():
                for digest, file_id in uploaded_pairs(record):
                    if digest == sha256:
                        return file_id
            return None
        if not SHA256_RE.fullmatch(sha256):
            return None
        entry, _ = self._read(f"{LEDGER_DIR}/{FILES}/{sha256}.json", "uploaded-file index")
        return str(entry["file_id"]) if entry and entry.get("file_id") else None

    # -- writes: one compare-and-swap per object --
    def _swap(self, key: str, what: str, change: Callable[[Record | None], Record | None]) -> Record | None:
        return swap(self.store, key, what=what, change=change)

    def _ensure_layout(self) -> None:
        """Create ``ledger/`` in a local folder, importing the seed-format files if there are any; all
        or nothing. Object storage never held the seed's format: nothing to import there."""
        if self._laid_out():
            return
        with exclusive_lock(self.lock_path):
            if self.root.is_dir():
                return
            import_seed(self.output_dir)

    def _in_flight(self) -> dict[str, Record]:
        return {k: v for k, v in self._read_index()[0].items() if isinstance(v, dict)}

    def _read_index(self) -> tuple[Record, str | None]:
        index, version = self._read(f"{LEDGER_DIR}/{IN_FLIGHT_FILE}", "in-flight index")
        return index or {}, version

    def _index(
        self, updates: Mapping[str, Record | None], known: tuple[Record, str | None] | None = None
    ) -> None:
        """Set (or, with None, drop) entries of the in-flight index. ``known``: the index as just
        read, tried first so a change costs one write, not a second read (a conflict reads again)."""

        def change(old: Record | None) -> Record:
            index = dict(old or {})
            for entry_key, entry in updates.items():
                if entry is None:
                    index.pop(entry_key, None)
                else:
                    index[entry_key] = entry
            return index

        key = f"{LEDGER_DIR}/{IN_FLIGHT_FILE}"
        if known is not None:
            index, version = known
            new = change(index)
            if new == index:
                return
            try:
                if version is None:
                    self.store.create(key, encode_json(new))
                else:
                    self.store.replace(key, encode_json(new), version)
                return
            except (AlreadyExists, VersionConflict):
                pass  # changed since: decide again from what is there now
        self._swap(key, "in-flight index", change)

    def _change_job(
        self,
        trait: str,
        change: Callable[[Record | None], Record | None],
        *,
        claim: Claim | None = None,
        also_drop: tuple[str, ...] = (),
    ) -> Record | None:
        """Change the trait's job record (refused if ``claim`` was taken over) and keep the indexes
        true. The in-flight index is written before a record enters (or changes) flight and after it
        leaves, so a worker dying between the two leaves it listing too much, never too little.
        ``also_drop``: index entries to remove with it (a superseded job that ended)."""
        self._ensure_layout()
        key = self.key(JOBS, trait)
        seen: dict[str, Record | None] = {}

        def guarded(old: Record | None) -> Record | None:
            if claim is not None:
                check_holder(trait, old, claim)
            new = change(old)
            seen["old"] = old
            if new is not None and new != old and JobStatus.of(new.get("status")).in_flight:
                entry = slot_entry(new)
                known = self._read_index()
                if known[0].get(trait) != entry:
                    self._index({trait: entry}, known)
            return new

        new = self._swap(key, f"{WHAT[JOBS]} record", guarded)
        old = seen.get("old")
        drop: dict[str, Record | None] = dict.fromkeys(also_drop)
        if new is None or new == old:
            if drop:
                known = self._read_index()
                if set(drop) & set(known[0]):
                    self._index(drop, known)
            return new
        if not JobStatus.of(new.get("status")).in_flight:
            drop[trait] = None
        old_job = (old or {}).get("job_id")
        if old_job and old_job != new.get("job_id") and JobStatus.of((old or {}).get("status")).in_flight:
            # the trait's key changed while its job ran: that job still costs a slot until it ends
            drop[f"{trait}@{old_job}"] = slot_entry(old or {})
        if drop:
            known = self._read_index()
            if set(drop) & set(known[0]) or any(v is not None for v in drop.values()):
                self._index(drop, known)
        known_files = {d for d, _ in uploaded_pairs(old or {})}
        for digest, file_id in uploaded_pairs(new):
            if digest not in known_files:
                self.store.put(f"{LEDGER_DIR}/{FILES}/{digest}.json", encode_json(file_entry(file_id, trait)))
        return new

    def update_job(self, trait: str, *, claim: Claim | None = None, **fields: Any) -> Record:
        """Merge ``fields`` into the trait's job record; a new ``job_key`` starts a fresh record.
        With ``claim``, refused (ClaimLost) when that claim was taken over meanwhile."""

        def change(old: Record | None) -> Record:
            base = dict(old or {})
            if "job_key" in fields and base.get("job_key") not in (None, fields["job_key"]):
                base = {}
            base.update(fields)
            base["updated_at"] = utc_now()
            return base

        result = self._change_job(trait, change, claim=claim)
        assert result is not None
        return result

    def mark_posted(self, trait: str, claim: Claim) -> None:
        """Just before the POST: check the claim is still ours and note that a job may now exist, so
        the record never goes stale by age alone (only a search by suffix may let it go)."""
        self.update_job(trait, claim=claim, posted=True)

    def record_job_end(self, trait: str, *, job_id: str, status: str) -> bool:
        """Record that ``job_id`` ended, only if it is still the trait's current job (a refresh read
        earlier must never overwrite a newer job's record); returns whether it was recorded. A
        superseded job of the trait (its key changed while it ran) leaves the in-flight index too."""
        recorded = False

        def change(old: Record | None) -> Record | None:
            nonlocal recorded
            if old is None or old.get("job_id") != job_id:
                return old
            recorded = True
            return {**old, "status": status, "updated_at": utc_now()}

        self._change_job(trait, change, also_drop=(f"{trait}@{job_id}",))
        return recorded

    def claim_create(
        self,
        trait: str,
        *,
        job_key: str,
        cap: int,
        holder: Holder = NO_HOLDER,
        stale_after_s: float = 1800.0,
        run_id: str | None = None,
    ) -> SlotClaim:
        """Claim the trait's create under the cap on jobs in flight (``slots.claim_create``)."""
        return claim_create(
            self, trait, job_key=job_key, cap=cap, holder=holder, stale_after_s=stale_after_s, run_id=run_id
        )

    def claim_job_slot(
        self,
        trait: str,
        *,
        job_key: str,
        cap: int,
        stale_after_s: float = 1800.0,
        run_id: str | None = None,
        holder: Holder = NO_HOLDER,
    ) -> dict[str, Record]:
        """``claim_create`` for callers that need only the holders (empty: the slot was claimed)."""
        outcome = self.claim_create(
            trait, job_key=job_key, cap=cap, holder=holder, stale_after_s=stale_after_s, run_id=run_id
        )
        return outcome.holders

    def record_adapter(self, trait: str, **fields: Any) -> Record:
        """Record what produced the trait's installed adapter; call only after it verified."""
        required = ("shard_sha256", "config_hash", "job_key", "adapter_sha256")
        missing = [name for name in required if not fields.get(name)]
        if missing:
            raise LedgerError(f"record_adapter({trait!r}) is missing {', '.join(missing)}")
        record = {**fields, "trained_at": fields.get("trained_at") or utc_now()}
        if self.local:
            from trait_lora.core.adapter.install import installed_fingerprint

            fingerprint = installed_fingerprint(self.output_dir, trait)
            if fingerprint is not None:  # lets a rerun's skip trust adapter_sha256 while untouched
                record.setdefault("adapter_stat", fingerprint)
        self._ensure_layout()
        self._swap(self.key(HASHES, trait), f"{WHAT[HASHES]} record", lambda _old: record)
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
        adapter_path: str | None = None,
        base: Mapping[str, Any] | None = None,
    ) -> Record:
        """``record_adapter`` for the trait a run planned: the keys come from the plan, never recomputed.

        ``evaluation`` (held-out figures) travels with the adapter into the mapping; ``adapter_path``
        is the content-addressed folder of an adapter on object storage (``adapter.content``); ``base``
        says exactly which base it was trained on (``base_model_source``, ``base_model_revision``,
        ``quantization``), so stage 3 never pairs an adapter with other weights."""
        extra: dict[str, Any] = {"eval": dict(evaluation)} if evaluation else {}
        if adapter_path:
            extra["adapter_path"] = adapter_path
        extra.update(base or {})
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
        self._ensure_layout()
        write_snapshots(self.store, self.jobs(), self.hashes())
