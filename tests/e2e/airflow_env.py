"""The Airflow configuration of a live deployment: the environment its Airflow processes run with.

Apart from ``deployment`` because it is configuration, not process control: what to read to see how
the e2e's Airflow is set up, and the home of ``WORKER_TUNING*``, the shipped worker settings that
``tests/deploy/test_compose.py`` holds docker-compose to. Imports only ``procs`` and ``services``:
``AirflowSetup`` says what it reads of a deployment, so it does not import ``deployment`` back.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any, Protocol

from tests.e2e.procs import REPO, VENV_BIN, free_port
from tests.e2e.services import FakeProcess, Postgres, Redis

# Worker settings of the shipped deployment (docker-compose.yaml, docs/operations.md section 4), so the
# e2e and the benches measure what users run; tests/deploy/test_compose.py holds compose to them. Why each
# one: docs/decisions.md "Worker tuning".
WORKER_TUNING = {
    # A task process that closes its sockets before it can be reaped leaves Airflow's supervisor asleep
    # in select() for min_heartbeat_interval (default 5 s) holding the worker slot: 1 s bounds that.
    "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
}
WORKER_TUNING_CELERY = {
    # The Together SDK and our task modules imported once per worker, not once per task try.
    "AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS": "trait_lora.provider.celery_config.CELERY_CONFIG",
}
WORKER_TUNING_LOCAL = {
    # The same for LocalExecutor: its workers fork from a server that imported them.
    "AIRFLOW__SCHEDULER__MP_START_METHOD": "forkserver",
    "AIRFLOW__SCHEDULER__MP_FORKSERVER_PRELOAD": "trait_lora.provider.worker_preload",
}


class AirflowSetup(Protocol):
    """What the environment is made of: the parts of a deployment (``LiveDeployment`` is one)."""

    home: Path
    api_url: str
    postgres: Postgres | None
    redis: Redis | None
    fake: FakeProcess | None
    celery_workers: tuple[str, ...]
    worker_concurrency: int
    worker_tuning: bool
    parallelism: int
    poll_seconds: float
    shards_dir: Any  # a folder or an s3:// URL
    output_dir: Any
    extra_env: dict[str, str]


def airflow_env(dep: AirflowSetup) -> dict[str, str]:
    """The environment of every Airflow process of ``dep``: its config, as ``AIRFLOW__*`` variables."""
    assert dep.postgres is not None and dep.fake is not None
    from cryptography.fernet import Fernet

    ours = ("AIRFLOW", "TRAIT_LORA_", "TOGETHER_")  # nothing of the caller's config leaks in
    base = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    env = {
        **base,
        "PATH": f"{VENV_BIN}{os.pathsep}{base.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
        "AIRFLOW_HOME": str(dep.home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor" if dep.celery_workers else "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": str(dep.parallelism),
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "1024",
        # Paused at creation: only the DAG under test is unpaused (other DAG files in dags/ stay idle).
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{dep.api_url}/execution/",
        "AIRFLOW__CORE__AUTH_MANAGER": (
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
        ),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
        "AIRFLOW__API__BASE_URL": dep.api_url,
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": dep.postgres.url,
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
        "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
        "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "10",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        # The scheduler (LocalExecutor) and the triggerer serve task logs on fixed ports by default
        # (8793, 8794): free ports let two deployments (or a developer's Airflow) coexist.
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW_CONN_TOGETHER_DEFAULT": json.dumps(
            {"conn_type": "together", "host": dep.fake.base_url, "password": dep.fake.api_key}
        ),
        "AIRFLOW__TRAIT_LORA__SHARDS_DIR": str(dep.shards_dir),
        "AIRFLOW__TRAIT_LORA__OUTPUT_DIR": str(dep.output_dir),
        "AIRFLOW__TRAIT_LORA__SCHEDULE": "none",
        "AIRFLOW__TRAIT_LORA__POLL_SECONDS": str(dep.poll_seconds),
        "AIRFLOW__TRAIT_LORA__STAGGER_SECONDS": "0",
        "AIRFLOW__TRAIT_LORA__RETRY_DELAY_SECONDS": "2",
    }
    if dep.redis is not None:
        env.update(
            {
                "AIRFLOW__CELERY__BROKER_URL": dep.redis.url,
                "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + dep.postgres.url.replace("+psycopg2", ""),
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(dep.worker_concurrency),
            }
        )
    if dep.worker_tuning:
        env.update(WORKER_TUNING)
        env.update(WORKER_TUNING_CELERY if dep.celery_workers else WORKER_TUNING_LOCAL)
    env.update(dep.extra_env)
    return env
