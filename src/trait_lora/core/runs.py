"""Per-run records under ``<output_dir>/runs/<run>/``: plan, failures, summary, loss curves.

A failed Airflow task pushes no XCom, so the fan-in could not say *why* a trait failed; each step
records its failure reason here before re-raising, and ``publish_mapping`` reads it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from trait_lora.core.atomic import atomic_write_json
from trait_lora.core.ledger_io import LOCK_FILE, exclusive_lock, read_json_object, utc_now
from trait_lora.core.shards import check_trait_name

RUNS_DIR = "runs"
FAILURES_FILE = "failures.json"


def run_dir(output_dir: str | Path, run_id: str) -> Path:
    """A filesystem-safe per-run directory (run ids carry ':' and '+')."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", run_id).strip("._") or "run"
    return Path(output_dir) / RUNS_DIR / safe


def update_run_file(output_dir: str | Path, run_id: str, name: str, key: str, value: Any) -> None:
    """Set one key of a per-run JSON object file, safely against concurrent mapped tasks."""
    path = run_dir(output_dir, run_id) / name
    with exclusive_lock(Path(output_dir) / LOCK_FILE):
        data = read_json_object(path, what=name)
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
        atomic_write_json(path, data)


def record_failure(output_dir: str | Path, run_id: str, trait: str, step: str, reason: str) -> None:
    check_trait_name(trait)
    update_run_file(
        output_dir, run_id, FAILURES_FILE, trait, {"step": step, "reason": reason, "at": utc_now()}
    )


def clear_failure(output_dir: str | Path, run_id: str, trait: str) -> None:
    """A retry that succeeded: the trait is no longer failed in this run."""
    update_run_file(output_dir, run_id, FAILURES_FILE, trait, None)


def read_failures(output_dir: str | Path, run_id: str) -> dict[str, dict[str, Any]]:
    return read_json_object(run_dir(output_dir, run_id) / FAILURES_FILE, what=FAILURES_FILE)
