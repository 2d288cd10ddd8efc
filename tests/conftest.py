"""Session-wide test setup: a private AIRFLOW_HOME before anything imports Airflow."""

from __future__ import annotations

import gc
import json
import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

_worker = os.environ.get("PYTEST_XDIST_WORKER")  # pytest -n: each worker its own metadata DB
_home = tempfile.mkdtemp(prefix=f"trait-lora-airflow-{_worker or 'main'}-")
if _worker:  # the controller's AIRFLOW_HOME is inherited: never share its SQLite file
    os.environ["AIRFLOW_HOME"] = _home
os.environ.setdefault("AIRFLOW_HOME", _home)
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO / "dags"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# pytest -n N: each worker gets its share of the cores for torch (in-process and in the trainer
# subprocesses it starts). Unset, every worker's torch spins one OpenMP thread per core and they thrash:
# the SmolLM2 test took 175 s beside another worker against 30 s alone.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
if _workers > 1:
    _share = str(max(1, (os.cpu_count() or 1) // _workers))
    os.environ.setdefault("OMP_NUM_THREADS", _share)
    os.environ.setdefault("MKL_NUM_THREADS", _share)
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tests train in-process, then fork
# [trait_lora] settings (trait_lora.settings): poll fast, retry fast, no stagger, in tests.
os.environ.setdefault("AIRFLOW__TRAIT_LORA__POLL_SECONDS", "0.05")
os.environ.setdefault("AIRFLOW__TRAIT_LORA__RETRY_DELAY_SECONDS", "0.5")
os.environ.setdefault("AIRFLOW__TRAIT_LORA__STAGGER_SECONDS", "0")
# The test deployment's allowed locations: its temp dirs (every test's tmp_path) and the repository.
os.environ.setdefault("AIRFLOW__TRAIT_LORA__STORAGE_ROOTS", json.dumps([tempfile.gettempdir(), str(REPO)]))
os.environ.pop("TOGETHER_API_KEY", None)
os.environ.pop("TOGETHER_BASE_URL", None)

pytest_plugins = [
    "tests.fake_together.fixtures",
    "tests.fake_hub.fixtures",
    "tests.fake_kubernetes.fixtures",
    "tests.support.airflow",
    "tests.support.s3",
]

# Files that take longest, longest first (per-file worker seconds of a `make test`, stop 31): handed to
# the xdist workers first, so that no long file starts near the end and keeps one worker busy after the
# other has finished. Only with `--no-loadscope-reorder` (make test passes it): by default xdist 3.8
# reorders files by test count, which ignored this list and left one worker idle for the last 66 s.
# Re-measure when a file grows: a file missing here runs in collection order after these.
LONG_FIRST = (
    "tests/provider/test_real_service.py",  # 72 s
    "tests/dags/test_local_dag.py",  # 71 s
    "tests/train/test_smollm2.py",  # 41 s
    "tests/dags/test_kubernetes_e2e.py",  # 40 s alone (cold process), ~33 s in a warm worker
    "tests/dags/test_together_on_s3.py",  # 37 s
    "tests/provider/test_launch_idempotency.py",  # 32 s
    "tests/dags/test_together_dag.py",  # 31 s
    "tests/provider/test_hostile_downloads.py",  # 24 s
    "tests/provider/test_together_eval.py",  # 19 s
    "tests/dags/test_kubernetes_dag.py",  # 17 s
    "tests/plugin/test_dashboard.py",  # 16 s
    "tests/provider/test_recover_download.py",  # 14 s
    "tests/core/test_adapter.py",  # 13 s
    "tests/provider/test_worker_preload.py",  # 10 s
    "tests/train/test_trainer_cli.py",  # 10 s
    "tests/provider/test_budget.py",  # 8 s
    "tests/provider/test_liberal_answers.py",  # 8 s
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FIRST)}

    def order(item):
        path = Path(str(item.fspath)).relative_to(REPO).as_posix()
        return rank.get(path, len(rank))

    items.sort(key=order)  # stable: the rest keep their order


@pytest.hookimpl(tryfirst=True)
def pytest_unconfigure(config):
    """Freeze the heap before pytest's last garbage collections and the interpreter's shutdown.

    A worker that imported Airflow, torch and transformers spent ~3 s after its last test collecting
    and freeing objects nobody would use again (and the controller waits for every worker to exit);
    frozen objects are skipped by both. What is lost: a finalizer that would fail in a reference
    cycle still alive at this point is not reported as an unraisable exception."""
    gc.freeze()
