"""MLflow: each DAG run a parent run, each trained trait a child run, in the team's own tracker.

Why a child per trait: the tracker's compare view then lines traits up by their params and loss curves
the way the team compares any other model. Skipped traits log nothing (nothing trained).

Optional twice: without ``[trait_lora] mlflow_tracking_uri`` nothing is imported; without the client
(``pip install trait-lora[mlflow]``) a warning says so. A tracker that is down, slow or refusing never
fails or slows a trait: every call runs in a daemon thread the task stops waiting for after
``mlflow_timeout_seconds`` (the HTTP client's own timeout and retries are bounded too), and the
warning names the URI with any password removed.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

ROLE_TAG = "trait_lora.role"
METRIC_BATCH = 1000  # MLflow's log_batch limit on metrics per request
PARAM_BATCH = 100


@dataclass(frozen=True)
class Tracker:
    """Where to log (read from the deployment settings when a task runs)."""

    uri: str
    timeout: float
    log_adapters: bool

    @property
    def shown_uri(self) -> str:
        from trait_lora.provider.hooks.redact import url_without_password

        return url_without_password(self.uri)


def tracker() -> Tracker | None:
    from trait_lora import settings

    uri = settings.get_str("mlflow_tracking_uri").strip()
    if not uri:
        return None
    return Tracker(
        uri=uri,
        timeout=settings.get_float("mlflow_timeout_seconds"),
        log_adapters=settings.get_bool("mlflow_log_adapters"),
    )


def experiment_name(dag_id: str | None) -> str:
    return str(dag_id or "trait_lora")


def bounded(target: Tracker, what: str, body: Callable[[], T]) -> T | None:
    """Run ``body`` against the tracker for at most ``target.timeout`` seconds; a warning, never an
    exception, when it is missing, refuses or is too slow."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            _bound_http(target.timeout)
            box["value"] = body()
        except BaseException as exc:
            box["error"] = exc

    worker = threading.Thread(target=run, name="trait-lora-mlflow", daemon=True)
    worker.start()
    worker.join(target.timeout)
    if worker.is_alive():
        log.warning(
            "MLflow at %s did not answer within %.0f s while %s; training goes on without it "
            "(raise [trait_lora] mlflow_timeout_seconds if the tracker is just slow)",
            target.shown_uri,
            target.timeout,
            what,
        )
        return None
    error = box.get("error")
    if isinstance(error, ImportError):
        log.warning(
            "[trait_lora] mlflow_tracking_uri is set but the MLflow client is not installed "
            "(pip install 'trait-lora[mlflow]'); nothing logged while %s",
            what,
        )
        return None
    if error is not None:
        message = str(error).replace(target.uri, target.shown_uri).splitlines()
        log.warning(
            "MLflow at %s refused %s (%s: %s); training goes on without it",
            target.shown_uri,
            what,
            type(error).__name__,
            message[0][:300] if message else "",
        )
        return None
    return box.get("value")


def _bound_http(timeout: float) -> None:
    """The MLflow HTTP client's own timeout and retries (7, with backoff, by default) kept within
    ours, unless the deployment set them; it reads them from its environment variables."""
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT

    if not MLFLOW_HTTP_REQUEST_TIMEOUT.is_set():
        MLFLOW_HTTP_REQUEST_TIMEOUT.set(str(max(1, int(timeout))))
    if not MLFLOW_HTTP_REQUEST_MAX_RETRIES.is_set():
        MLFLOW_HTTP_REQUEST_MAX_RETRIES.set("1")


def _client(target: Tracker) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=target.uri)


def _experiment_id(client: Any, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(client.create_experiment(name))
    except Exception:  # another task created it between the two calls
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


def _find_run(client: Any, experiment_id: str, tags: Mapping[str, str]) -> Any:
    clauses = " and ".join(f"tags.`{k}` = '{_quoted(v)}'" for k, v in tags.items())
    runs = client.search_runs([experiment_id], filter_string=clauses, max_results=1)
    return runs[0] if runs else None


def _quoted(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("'", "\\'")


def start_dag_run(
    dag_id: str | None, run_id: str, backend: str, config: Mapping[str, Any], traits: int
) -> str | None:
    """The parent run of this DAG run (found again on a retry of discover, never created twice)."""
    target = tracker()
    if target is None:
        return None

    def body() -> str:
        client = _client(target)
        experiment = _experiment_id(client, experiment_name(dag_id))
        tags = {ROLE_TAG: "dag_run", "airflow_run_id": run_id}
        found = _find_run(client, experiment, tags)
        if found is not None:
            return str(found.info.run_id)
        run = client.create_run(
            experiment,
            run_name=run_id,
            tags={**tags, "airflow_dag_id": str(dag_id or ""), "backend": backend},
        )
        _log_params(client, run.info.run_id, config)
        client.log_param(run.info.run_id, "traits_planned", traits)
        return str(run.info.run_id)

    parent = bounded(target, f"starting the parent run of {run_id}", body)
    if parent:
        log.info("MLflow: run %s of %s is parent run %s at %s", run_id, dag_id, parent, target.shown_uri)
    return parent


def log_trait(
    context: Mapping[str, Any], plan: Mapping[str, Any], result: Mapping[str, Any], backend: str
) -> None:
    """One trained trait as a child run: tags, every config key as a param, the loss per step, the held-
    out figures, and (``mlflow_log_adapters``) the adapter's files. A retry finds its run again."""
    target = tracker()
    if target is None or result.get("action") not in ("trained", "resumed"):
        return
    dag_id = getattr(context.get("dag"), "dag_id", None) or plan.get("dag_id")
    run_id = str(context.get("run_id") or "")
    trait = str(plan["trait"])
    steps, stored = _stored_metrics(plan, trait)

    def body() -> tuple[str, str]:
        client = _client(target)
        experiment = _experiment_id(client, experiment_name(dag_id))
        parent = _find_run(client, experiment, {ROLE_TAG: "dag_run", "airflow_run_id": run_id})
        key = {ROLE_TAG: "trait", "airflow_run_id": run_id, "trait": trait}
        found = _find_run(client, experiment, key)
        if found is not None and found.info.status == "FINISHED":
            return experiment, str(found.info.run_id)
        tags = {
            **key,
            "backend": backend,
            "job_id": str(result.get("job_id") or ""),
            "adapter_sha256": str(result.get("adapter_sha256") or ""),
            "adapter_uri": str(result.get("adapter_path") or ""),
            "shard_sha256": str(plan.get("shard_sha256") or ""),
            "airflow_dag_id": str(dag_id or ""),
        }
        if parent is not None:
            tags["mlflow.parentRunId"] = str(parent.info.run_id)
        run = found or client.create_run(experiment, run_name=trait, tags=tags)
        child = str(run.info.run_id)
        _log_params(client, child, plan.get("config") or {})
        _log_metrics(client, child, steps, result.get("eval") or stored.get("eval") or {}, result)
        if target.log_adapters and result.get("adapter_path"):
            _log_adapter(client, child, str(result["adapter_path"]))
        client.set_terminated(child, "FINISHED")
        return experiment, child

    logged = bounded(target, f"logging {trait}", body)
    if logged:
        log.info("MLflow: %s logged as run %s at %s", trait, logged[1], target.shown_uri)
        _remember(plan, trait, *logged, target)


def end_dag_run(
    dag_id: str | None, run_id: str, backend: str, summary: Mapping[str, Any], digest: str, mapping_path: str
) -> None:
    """Close the parent run with the run's counts: FAILED when any trait failed, else FINISHED."""
    target = tracker()
    if target is None:
        return

    def body() -> None:
        client = _client(target)
        found = client.get_experiment_by_name(experiment_name(dag_id))
        if found is None:
            return
        parent = _find_run(client, str(found.experiment_id), {ROLE_TAG: "dag_run", "airflow_run_id": run_id})
        if parent is None:
            return
        parent_id = str(parent.info.run_id)
        counts = summary.get("counts") or {}
        for action, count in counts.items():
            client.log_metric(parent_id, f"traits_{action}", float(count))
        client.set_tag(parent_id, "mapping_sha256", digest)
        client.set_tag(parent_id, "mapping_uri", mapping_path)
        client.set_terminated(parent_id, "FAILED" if summary.get("failed") else "FINISHED")

    bounded(target, f"closing the parent run of {run_id}", body)


def _log_params(client: Any, run_id: str, config: Mapping[str, Any]) -> None:
    from mlflow.entities import Param

    params = [Param(str(k), _param_value(v)) for k, v in sorted(config.items())]
    for i in range(0, len(params), PARAM_BATCH):
        client.log_batch(run_id, params=params[i : i + PARAM_BATCH])


def _param_value(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _log_metrics(
    client: Any,
    run_id: str,
    steps: list[dict[str, Any]],
    evaluation: Mapping[str, Any],
    result: Mapping[str, Any],
) -> None:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [
        Metric("train_loss", float(s["loss"]), now, int(s["step"]))
        for s in steps
        if isinstance(s.get("loss"), int | float) and isinstance(s.get("step"), int)
    ]
    for key in ("base_loss", "adapter_loss", "own_pole_margin", "improvement"):
        value = evaluation.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            metrics.append(Metric(f"eval_{key}", float(value), now, 0))
    for key in ("final_loss", "total_price", "duration_s", "tokens_per_second"):
        value = result.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            metrics.append(Metric(key, float(value), now, 0))
    for i in range(0, len(metrics), METRIC_BATCH):
        client.log_batch(run_id, metrics=metrics[i : i + METRIC_BATCH])


def _log_adapter(client: Any, run_id: str, adapter: str) -> None:
    """The adapter's files under ``adapter/``: a local folder as it is, an object-storage one copied
    to a temp folder first."""
    from trait_lora.core.adapter.spec import TRAINED_FILES
    from trait_lora.core.storage.opener import is_url, open_location

    if not is_url(adapter):
        client.log_artifacts(run_id, adapter, artifact_path="adapter")
        return
    store = open_location(adapter, what="adapter")
    with tempfile.TemporaryDirectory(prefix="trait-lora-mlflow-") as tmp:
        for name in TRAINED_FILES:
            blob = store.read(name)
            if blob is not None:
                (Path(tmp) / name).write_bytes(blob.data)
        client.log_artifacts(run_id, tmp, artifact_path="adapter")


def _stored_metrics(plan: Mapping[str, Any], trait: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The trait's loss curve as the install step stored it (``metrics/<trait>.json``)."""
    import json

    from trait_lora.core.handoff.summary import METRICS_DIR
    from trait_lora.core.storage.records import as_store

    try:
        blob = as_store(str(plan["output_dir"])).read(f"{METRICS_DIR}/{trait}.json")
        data = json.loads(blob.data) if blob is not None else {}
    except Exception as exc:
        log.warning("MLflow: could not read the loss curve of %s (%s); logging without it", trait, exc)
        return [], {}
    steps = data.get("steps") if isinstance(data.get("steps"), list) else []
    return [s for s in steps if isinstance(s, dict)], data


def _remember(plan: Mapping[str, Any], trait: str, experiment: str, child: str, target: Tracker) -> None:
    """Add the run to ``metrics/<trait>.json`` so the dashboard links the trait to it (this task is that
    file's only writer)."""
    import json

    from trait_lora.core.handoff.summary import METRICS_DIR
    from trait_lora.core.storage.records import as_store
    from trait_lora.core.storage.store import encode_json

    try:
        store = as_store(str(plan["output_dir"]))
        key = f"{METRICS_DIR}/{trait}.json"
        blob = store.read(key)
        data = json.loads(blob.data) if blob is not None else {}
        data["mlflow"] = {"run_id": child, "url": run_url(target.uri, experiment, child)}
        store.put(key, encode_json(data))
    except Exception as exc:
        log.warning("MLflow: could not note run %s for the dashboard (%s)", child, exc)


def run_url(uri: str, experiment_id: str, run_id: str) -> str | None:
    """A browser link to the run when the tracker is a server; a file or database URI has no page."""
    from trait_lora.provider.hooks.redact import url_without_password

    if not uri.startswith(("http://", "https://")):
        return None
    return f"{url_without_password(uri).rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
