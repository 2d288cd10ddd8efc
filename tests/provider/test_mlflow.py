"""MLflow tracking: a parent run per DAG run and a child per trained trait in a real tracking store
(sqlite, the same client code as a server), a retry that finds its run again, adapters as artifacts
only when asked, and a tracker that is down or hangs costing a warning and bounded time, never a trait.
The whole DAG path (local and Together) is in tests/dags/test_local_dag.py and
test_together_on_s3.py."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.support import tracking
from trait_lora.core.config import TrainingConfig
from trait_lora.core.handoff.report import trait_rows
from trait_lora.provider.dashboard.pages import traits_page
from trait_lora.provider.tracking import mlflow_runs

DAG = "trait_lora_local"
RUN = "manual__2026-12-06T10:00:00+00:00"


class Ctx(dict):
    pass


def plan_in(out: Path, trait: str = "joy_plus") -> dict:
    (out / "metrics").mkdir(parents=True, exist_ok=True)
    steps = [{"step": i, "loss": 2.0 - i / 10} for i in range(1, 6)]
    (out / "metrics" / f"{trait}.json").write_text(json.dumps({"steps": steps, "eval": None}))
    return {
        "trait": trait,
        "output_dir": str(out),
        "config": TrainingConfig(backend="local").to_dict(),
        "shard_sha256": "5" * 64,
        "job_key": "k" * 64,
    }


def result_for(out: Path, trait: str = "joy_plus", action: str = "trained") -> dict:
    adapter = out / "lora_checkpoints" / trait
    adapter.mkdir(parents=True, exist_ok=True)
    (adapter / "adapter_config.json").write_text('{"r": 4}')
    (adapter / "adapter_model.safetensors").write_bytes(b"not really tensors")
    return {
        "trait": trait,
        "action": action,
        "job_id": None,
        "adapter_path": str(adapter),
        "adapter_sha256": "a" * 64,
        "final_loss": 1.5,
        "eval": {"base_loss": 2.3, "adapter_loss": 1.9, "own_pole_margin": 0.2, "prefers_own_pole": True},
    }


@pytest.fixture
def sqlite_uri(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__MLFLOW_TRACKING_URI", uri)
    return uri


def test_a_run_is_a_parent_and_each_trained_trait_a_child_found_again_on_retry(sqlite_uri, tmp_path):
    out = tmp_path / "out"
    context = {"dag": type("D", (), {"dag_id": DAG})(), "run_id": RUN}
    parent = mlflow_runs.start_dag_run(DAG, RUN, "local", TrainingConfig().to_dict(), 2)
    assert parent and mlflow_runs.start_dag_run(DAG, RUN, "local", {}, 2) == parent  # discover retried
    plan = plan_in(out)
    mlflow_runs.log_trait(context, plan, result_for(out), "local")
    mlflow_runs.log_trait(context, plan, result_for(out), "local")  # the task retried after logging
    skipped = plan_in(out, "joy_minus")
    mlflow_runs.log_trait(context, skipped, result_for(out, "joy_minus", "skipped"), "local")
    mlflow_runs.end_dag_run(DAG, RUN, "local", {"counts": {"trained": 1}, "failed": {}}, "d" * 64, "/m.json")

    runs = tracking.mlflow_runs(sqlite_uri, DAG)
    children = [r for r in runs if r.data.tags.get("trait")]
    assert [r.data.tags["trait"] for r in children] == ["joy_plus"]  # once, and no run for a skip
    child = children[0]
    assert child.data.tags["mlflow.parentRunId"] == parent and child.info.status == "FINISHED"
    assert child.data.params["lora_r"] == "4" and child.data.params["learning_rate"] == "0.0002"
    assert (
        child.data.metrics["eval_own_pole_margin"] == 0.2
        and "eval_prefers_own_pole" not in child.data.metrics
    )
    assert tracking.loss_history(sqlite_uri, child.info.run_id)[-1] == (5, 1.5)
    [top] = [r for r in runs if r.info.run_id == parent]
    assert top.info.status == "FINISHED" and top.data.tags["mapping_sha256"] == "d" * 64
    assert not list((tmp_path / "mlruns").glob("**/adapter_model.safetensors"))  # artifacts are opt-in


def test_adapter_files_become_artifacts_when_asked(sqlite_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__MLFLOW_LOG_ADAPTERS", "true")
    monkeypatch.chdir(tmp_path)  # the sqlite store keeps artifacts under ./mlruns
    out = tmp_path / "out"
    mlflow_runs.log_trait({"run_id": RUN, "dag": None}, plan_in(out), result_for(out), "local")
    [run] = tracking.mlflow_runs(sqlite_uri, "trait_lora")
    from mlflow.tracking import MlflowClient

    names = {a.path for a in MlflowClient(sqlite_uri).list_artifacts(run.info.run_id, "adapter")}
    assert names == {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"}


def _listener(answer: bool) -> tuple[socket.socket, int]:
    """A port that accepts and then never answers (``answer=False``) or closes at once."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            if answer:
                conn.close()
            else:
                held.append(conn)

    threading.Thread(target=serve, daemon=True).start()
    return sock, sock.getsockname()[1]


@pytest.fixture
def airflow_logging() -> None:
    """Airflow replaces the root log handlers when its configuration is first read: read it during
    setup, so that caplog's handlers (added for the test's call) are not among those it replaces."""
    from trait_lora import settings

    settings.get_float("mlflow_timeout_seconds")


@pytest.mark.parametrize("hangs", [False, True], ids=["refuses", "hangs"])
def test_a_tracker_that_is_down_or_hangs_costs_a_warning_and_bounded_time(
    airflow_logging, tmp_path, monkeypatch, caplog, hangs
):
    sock, port = _listener(answer=not hangs)
    uri = f"http://ml-user:s3cret-pass@127.0.0.1:{port}"
    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__MLFLOW_TIMEOUT_SECONDS", "0.5")
    caplog.set_level(logging.WARNING)
    out = tmp_path / "out"
    started = time.monotonic()
    assert mlflow_runs.start_dag_run(DAG, RUN, "local", {}, 1) is None
    mlflow_runs.log_trait({"run_id": RUN, "dag": None}, plan_in(out), result_for(out), "local")
    elapsed = time.monotonic() - started
    sock.close()
    assert elapsed < 2 * 0.5 + 3  # two calls, each bounded by the timeout
    warnings = [r.getMessage() for r in caplog.records if r.name == mlflow_runs.__name__]
    assert len(warnings) == 2 and all(f"127.0.0.1:{port}" in w for w in warnings)
    assert "s3cret-pass" not in caplog.text and "training goes on" in warnings[0]
    # the metrics file the dashboard reads is untouched: no run to link
    assert "mlflow" not in json.loads((out / "metrics" / "joy_plus.json").read_text())


def test_the_traits_tab_links_each_trait_to_its_mlflow_run(tmp_path):
    out = tmp_path / "out"
    plan_in(out)
    data = json.loads((out / "metrics" / "joy_plus.json").read_text())
    url = "https://mlflow.example.org/#/experiments/3/runs/abc123"
    data["mlflow"] = {"run_id": "abc123", "url": url}
    (out / "metrics" / "joy_plus.json").write_text(json.dumps(data))
    plan_in(out, "joy_minus")
    bad = json.loads((out / "metrics" / "joy_minus.json").read_text())
    bad["mlflow"] = {"url": "javascript:alert(1)"}  # only a web link is ever shown
    (out / "metrics" / "joy_minus.json").write_text(json.dumps(bad))
    # the last run's summary is what names the traits (no ledger needed for this view)
    last = [{"trait": t, "action": "trained"} for t in ("joy_minus", "joy_plus")]
    (out / "run_summary.json").write_text(json.dumps({"backend": "local", "traits": last}))
    rows = {r.trait: r for r in trait_rows(str(out))}
    assert rows["joy_plus"].mlflow_url == url and rows["joy_minus"].mlflow_url is None
    view = {
        "output_dir": str(out),
        "totals": {"traits": 2, "counts": {}, "in_flight": 0, "spend_usd": 0},
        "traits": [r.to_json() for r in rows.values()],
        "mapping": None,
    }
    html = traits_page(DAG, view, lambda _job: None)
    assert f'href="{url}"' in html.replace("&amp;", "&") and html.count("MLflow run") == 1
    assert "javascript:" not in html
