"""Real Airflow for tests: a migrated SQLite metadata DB per session and ``dag.test()`` runs.

``dag.test()`` runs every task in this process and each deferred task's trigger inline, so a whole DAG
run (including the deferrable wait) is exercised against the fake Together server in seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLE_SHARDS = REPO / "include" / "sample_shards"


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """``airflow db migrate`` once per session into the conftest's private AIRFLOW_HOME."""
    home = Path(os.environ["AIRFLOW_HOME"])
    if not (home / ".migrated").exists():
        airflow = Path(sys.executable).with_name("airflow")
        subprocess.run(
            [str(airflow), "db", "migrate"], check=True, capture_output=True, env=os.environ.copy()
        )
        (home / ".migrated").touch()
    return home


@pytest.fixture
def together_conn(fake_together, monkeypatch) -> Any:
    """The ``together_default`` connection pointing at the fake (as a deployment would set it by env)."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_TOGETHER_DEFAULT",
        json.dumps(
            {"conn_type": "together", "host": fake_together.base_url, "password": fake_together.api_key}
        ),
    )
    return fake_together


def copy_shards(dest: Path, traits: list[str]) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for trait in traits:
        shutil.copy(SAMPLE_SHARDS / f"{trait}.jsonl", dest / f"{trait}.jsonl")
    return dest


def get_dag(dag_id: str) -> Any:
    """A freshly parsed DAG: ``dag.test()`` folds a run's conf into the DAG object's params."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags[dag_id]


def run_dag(dag_id: str, conf: dict[str, Any]) -> Any:
    """One DAG run with the conf a UI trigger would send; returns the finished DagRun."""
    from trait_lora.embedded import brisk_dag_test_polls

    with brisk_dag_test_polls():
        return get_dag(dag_id).test(run_conf=conf)


def task_states(dagrun: Any) -> dict[tuple[str, int], str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = (
            session.query(TaskInstance)
            .filter(TaskInstance.dag_id == dagrun.dag_id, TaskInstance.run_id == dagrun.run_id)
            .all()
        )
        return {(ti.task_id, ti.map_index): str(ti.state) for ti in tis}


def train_together_argv(work: Path, shards: str, out: str) -> list[str]:
    """``trait-lora train --backend together --all`` as a user types it, with its own Airflow home
    under ``work`` (shared by the S3 test and bench/bench_s3_dag.py)."""
    import sys

    return [
        str(Path(sys.executable).with_name("trait-lora")),
        "train",
        "--backend",
        "together",
        "--all",
        "--airflow-home",
        str(work / "af"),
        "--dags-folder",
        str(REPO / "dags"),
        "--shards-dir",
        shards,
        "--output-dir",
        out,
    ]
