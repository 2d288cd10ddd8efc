"""Where each record lives under the output location, in one place.

Below the packages that write records (jobs, handoff) so that any of them can find another's folder
without importing its writer: the cost gate's per-run budget sits in the run's folder, which the
per-run records own.
"""

from __future__ import annotations

import re
from pathlib import Path

RUNS_DIR = "runs"


def run_key(run_id: str) -> str:
    """The per-run folder as a store key: safe on a disk and in a bucket (run ids carry ':' and '+')."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", run_id).strip("._") or "run"
    return f"{RUNS_DIR}/{safe}"


def run_dir(output_dir: str | Path, run_id: str) -> Path:
    """The per-run directory of a local output folder."""
    return Path(output_dir) / run_key(run_id)
