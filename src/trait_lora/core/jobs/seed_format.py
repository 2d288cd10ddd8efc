"""The seed's two ledger files: read as they are, imported into ``ledger/`` once, kept as snapshots.

``lora_job_ids.json`` and ``file_hashes.json`` were the seed's whole ledger (one object of trait ->
record each). A local output folder that has only those is read from them until its first write,
which imports them into per-trait records all or nothing (staged in a temp folder, renamed in). After
that they are snapshots, rewritten with every mapping, so tools that read the seed's files still work.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from trait_lora.core.errors import LedgerError
from trait_lora.core.jobs.job_status import JobStatus
from trait_lora.core.jobs.slots import slot_entry
from trait_lora.core.shards.catalog import TRAIT_RE
from trait_lora.core.storage.atomic import atomic_write_json, fsync_dir
from trait_lora.core.storage.ledger_io import Record, read_json_object, read_object_or_empty
from trait_lora.core.storage.store import Store, encode_json

JOBS_FILE = "lora_job_ids.json"
HASHES_FILE = "file_hashes.json"
LEDGER_DIR = "ledger"
JOBS, HASHES, FILES = "jobs", "hashes", "files"
IN_FLIGHT_FILE = "in_flight.json"
WHAT = {JOBS: "job ledger", HASHES: "hash ledger"}
SHA256_RE = re.compile(r"[0-9a-f]{64}")


def uploaded_pairs(record: Record) -> list[tuple[str, str]]:
    """(sha256, Together file id) of the bytes a job record says were uploaded."""
    pairs = (
        (record.get("file_sha256") or record.get("shard_sha256"), record.get("file_id")),
        (record.get("validation_sha256"), record.get("validation_file_id")),
    )
    return [(str(d), str(f)) for d, f in pairs if d and f and SHA256_RE.fullmatch(str(d))]


def file_entry(file_id: str, trait: str) -> Record:
    """An uploaded-file index entry: the file, and the trait whose upload recorded it (for a person
    reading the index; only ``file_id`` is used)."""
    return {"file_id": file_id, "trait": trait}


def lenient_seed(path: Path) -> dict[str, Record]:
    """A seed-format ledger file as a reader that only shows state takes it: what it can read of it
    (each trait's object), nothing where it cannot; the import reports the rest to whoever writes."""
    data = read_object_or_empty(path)
    return {k: v for k, v in data.items() if isinstance(v, dict) and TRAIT_RE.fullmatch(k)}


def import_seed(output_dir: Path) -> None:
    """Create ``output_dir/ledger`` from the seed-format files (or empty); all or nothing."""
    jobs_path, hashes_path = output_dir / JOBS_FILE, output_dir / HASHES_FILE
    jobs = read_json_object(jobs_path, what=WHAT[JOBS])  # a corrupt one stops here, unchanged
    hashes = read_json_object(hashes_path, what=WHAT[HASHES])
    for path, data in ((jobs_path, jobs), (hashes_path, hashes)):
        for trait in data:
            if not TRAIT_RE.fullmatch(trait):
                raise LedgerError(
                    f"{path}: entry {trait!r} is not a trait name (<axis>_plus or <axis>_minus); "
                    "rename or remove it, nothing was changed"
                )
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{LEDGER_DIR}.", suffix=".tmp", dir=output_dir))
    try:
        for kind, data in ((JOBS, jobs), (HASHES, hashes)):
            (staging / kind).mkdir()
            for trait, record in data.items():
                atomic_write_json(staging / kind / f"{trait}.json", record)
        (staging / FILES).mkdir()
        for trait, record in jobs.items():
            for digest, file_id in uploaded_pairs(record):
                atomic_write_json(staging / FILES / f"{digest}.json", file_entry(file_id, trait))
        flying = {t: slot_entry(r) for t, r in jobs.items() if JobStatus.of(r.get("status")).in_flight}
        atomic_write_json(staging / IN_FLIGHT_FILE, flying)
        os.chmod(staging, 0o755)  # mkdtemp's 0700 would lock out other users' workers
        os.rename(staging, output_dir / LEDGER_DIR)
        fsync_dir(output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_snapshots(store: Store, jobs: dict[str, Record], hashes: dict[str, Record]) -> None:
    """Rewrite the two seed-format files where they differ from the records."""
    for name, data in ((JOBS_FILE, jobs), (HASHES_FILE, hashes)):
        blob = store.read(name)
        try:
            same = blob is not None and blob.json() == data
        except ValueError:  # only a snapshot now: the records under ledger/ are the truth
            same = False
        if not same:
            store.put(name, encode_json(data))
