"""Keep what was paid for: a downloaded archive that failed verification is set aside, not deleted.

A Together job is paid for once its adapter exists; deleting a refused download would throw away the
only evidence (and the only copy, should the refusal be ours to fix). The archive goes to
``<output_dir>/quarantine/<trait>/<job_id>/`` beside a ``reason.txt``. Nothing reads from there to
install or publish: adapters are installed only from a fresh download that verified.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from trait_lora.core.shards.catalog import check_trait_name
from trait_lora.core.storage.atomic import atomic_write_bytes, fsync_dir
from trait_lora.core.storage.ledger_io import utc_now
from trait_lora.core.storage.local import LocalStore
from trait_lora.core.storage.records import as_store
from trait_lora.core.storage.store import Store

QUARANTINE_DIR = "quarantine"
JOB_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def quarantine_key(trait: str, job_id: str) -> str:
    check_trait_name(trait)
    if not JOB_ID_RE.fullmatch(job_id) or job_id in (".", ".."):
        raise ValueError(f"job id {job_id!r} cannot name a quarantine folder")
    return f"{QUARANTINE_DIR}/{trait}/{job_id}"


def quarantine_dir(output_dir: str | os.PathLike[str], trait: str, job_id: str) -> Path:
    return Path(output_dir) / quarantine_key(trait, job_id)


def quarantine_archive(
    output_dir: str | os.PathLike[str] | Store, trait: str, job_id: str, archive: Path, reason: str
) -> str:
    """Move ``archive`` into quarantine with the reason; returns where (a folder or a URL). A later
    refusal of the same job replaces the earlier copy (the same bytes, or newer).

    On a local folder the archive is a temp file under the output dir and is renamed in; on object
    storage it is uploaded whole (one writer: the job's download task) and the local file removed."""
    text = (
        f"trait: {trait}\njob: {job_id}\nrefused: {utc_now()}\nreason: {reason}\n\n"
        "This archive was NOT installed or published. To install it after fixing the cause, run\n"
        f"  trait-lora download {trait} --job-id {job_id}\n"
        "which downloads the job again and installs it if it verifies (no new job is paid for).\n"
    ).encode()
    store = as_store(output_dir)
    if not isinstance(store, LocalStore):
        folder = quarantine_key(trait, job_id)
        store.put(f"{folder}/adapter-archive", archive.read_bytes())
        store.put(f"{folder}/reason.txt", text)
        archive.unlink(missing_ok=True)
        return store.url(folder)
    local = quarantine_dir(store.root, trait, job_id)
    local.mkdir(parents=True, exist_ok=True)
    os.replace(archive, local / "adapter-archive")  # same filesystem: the temp file is under output_dir
    fsync_dir(local)
    atomic_write_bytes(local / "reason.txt", text)
    return str(local)
