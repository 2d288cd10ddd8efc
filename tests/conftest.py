"""Session-wide test setup: a private AIRFLOW_HOME before anything imports Airflow."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

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
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# [trait_lora] settings (trait_lora.settings): poll fast, retry fast, no stagger, in tests.
os.environ.setdefault("AIRFLOW__TRAIT_LORA__POLL_SECONDS", "0.05")
os.environ.setdefault("AIRFLOW__TRAIT_LORA__RETRY_DELAY_SECONDS", "0.5")
os.environ.setdefault("AIRFLOW__TRAIT_LORA__STAGGER_SECONDS", "0")
os.environ.pop("TOGETHER_API_KEY", None)
os.environ.pop("TOGETHER_BASE_URL", None)

pytest_plugins = ["tests.fake_together.fixtures", "tests.support.airflow"]
