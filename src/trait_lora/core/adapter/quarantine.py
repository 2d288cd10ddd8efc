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

QUARANTINE_DIR = "quarantine"
JOB_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def quarantine_dir(output_dir: str | os.PathLike[str], trait: str, job_id: str) -> Path:
    check_trait_name(trait)
    if not JOB_ID_RE.fullmatch(job_id) or job_id in (".", ".."):
        raise ValueError(f"job id {job_id!r} cannot name a quarantine folder")
    return Path(output_dir) / QUARANTINE_DIR / trait / job_id


def quarantine_archive(
    output_dir: str | os.PathLike[str], trait: str, job_id: str, archive: Path, reason: str
) -> Path:
    """Move ``archive`` (a temp file under the output dir) into quarantine with the reason; returns the
    folder. A later refusal of the same job replaces the earlier copy (the same bytes, or newer)."""
    folder = quarantine_dir(output_dir, trait, job_id)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "adapter-archive"
    os.replace(archive, target)  # same filesystem: the download's temp file lives under output_dir
    fsync_dir(folder)
    text = (
        f"trait: {trait}\njob: {job_id}\nrefused: {utc_now()}\nreason: {reason}\n\n"
        "This archive was NOT installed or published. To install it after fixing the cause, run\n"
        f"  trait-lora download {trait} --job-id {job_id}\n"
        "which downloads the job again and installs it if it verifies (no new job is paid for).\n"
    )
    atomic_write_bytes(folder / "reason.txt", text.encode("utf-8"))
    return folder
