"""Workers import the Together SDK and our task modules once, before they fork task processes.

Each check runs a fresh interpreter configured the way docker-compose.yaml (Celery) and
docs/operations.md (LocalExecutor) configure Airflow, and asks Airflow's own code to do what the worker
does at start: Celery's loader imports the config's ``imports`` before the pool forks; the scheduler
sets its multiprocessing start method, and the LocalExecutor's worker processes fork from that server.
A task process forked from either finds the modules already there (bench_live_deployment.py shows
the CPU this saves).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.airflow import REPO

PRELOAD = "trait_lora.provider.worker_preload"
# What each task try used to import for itself (py-spy of a Celery worker, docs/decisions.md).
INHERITED = (
    "together.resources.fine_tuning",
    "together.resources.files",
    "trait_lora.provider.hooks.together",
    "trait_lora.core.jobs.ledger",
    "airflow.sdk.execution_time.task_runner",
    "airflow.dag_processing.dagbag",
)
NEVER = ("torch", "transformers", "peft", "kubernetes")


def run_probe(code: str, tmp_path: Path, **env: str) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**base, "AIRFLOW_HOME": str(tmp_path), "PYTHONPATH": str(REPO), **env},
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_preload_brings_the_sdk_and_the_task_runtime_and_nothing_heavy(tmp_path):
    found = run_probe(
        "import json, sys; import trait_lora.provider.worker_preload as w; "
        f"print(json.dumps({{'missing': w.MISSING, 'have': [m for m in {INHERITED!r} if m in sys.modules], "
        f"'heavy': [m for m in sys.modules if m.split('.')[0] in {NEVER!r}]}}))",
        tmp_path,
    )
    assert found == {"missing": [], "have": list(INHERITED), "heavy": []}


def test_a_celery_worker_imports_the_preload_before_its_pool_forks(tmp_path):
    found = run_probe(
        "import json, sys\n"
        "from airflow.providers.celery.executors.celery_executor_utils import app\n"
        "from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG\n"
        f"before = {PRELOAD!r} in sys.modules\n"
        "app.loader.init_worker()  # what `airflow celery worker` runs in its main process\n"
        "print(json.dumps({'before': before, 'after': [m for m in "
        f"{INHERITED!r} if m in sys.modules], "
        "'defaults_kept': all(app.conf[k] == v for k, v in DEFAULT_CELERY_CONFIG.items() "
        "if k != 'imports')}))",
        tmp_path,
        AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS="trait_lora.provider.celery_config.CELERY_CONFIG",
    )
    assert found == {"before": False, "after": list(INHERITED), "defaults_kept": True}


LOCAL_PROBE = (
    "import json, multiprocessing as mp\n"
    "from airflow.utils.process_utils import set_component_mp_start_method\n"
    "from tests.support.modules import loaded\n"
    "set_component_mp_start_method('scheduler')  # what `airflow scheduler` does first\n"
    "with mp.Pool(1) as pool:  # a worker process, as the LocalExecutor starts them\n"
    f"    has = pool.apply(loaded, ({INHERITED!r},))\n"
    "print(json.dumps({'method': mp.get_start_method(), 'worker_has': has}))"
)


def test_local_executor_workers_fork_from_a_server_that_imported_the_preload(tmp_path):
    tuned = run_probe(
        LOCAL_PROBE,
        tmp_path,
        AIRFLOW__SCHEDULER__MP_START_METHOD="forkserver",
        AIRFLOW__SCHEDULER__MP_FORKSERVER_PRELOAD=PRELOAD,
    )
    assert tuned == {"method": "forkserver", "worker_has": list(INHERITED)}
    # The same forkserver without the preload setting: each worker would import them per task.
    untuned = run_probe(LOCAL_PROBE, tmp_path, AIRFLOW__SCHEDULER__MP_START_METHOD="forkserver")
    assert untuned == {"method": "forkserver", "worker_has": []}
