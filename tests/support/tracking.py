"""What a lineage reader (Marquez, DataHub) and an MLflow user see after a run: read back from the
OpenLineage provider's file transport and from an MLflow tracking store, the way those tools read them."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

Dataset = tuple[str, str]  # (namespace, name)


def tracking_env(work: Path) -> dict[str, str]:
    """OpenLineage to a file and MLflow to a sqlite store, as a deployment turns them on."""
    transport = {"type": "file", "log_file_path": str(work / "lineage.jsonl"), "append": True}
    return {
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(transport),
        "AIRFLOW__OPENLINEAGE__CUSTOM_RUN_FACETS": "trait_lora.provider.tracking.lineage.trait_run_facets",
        "AIRFLOW__TRAIT_LORA__MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
    }


def lineage_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def completed(events: Iterable[dict[str, Any]], task: str) -> list[dict[str, Any]]:
    """COMPLETE events of one task (``dag.task`` job names end with ``.<task>``)."""
    return [e for e in events if e["eventType"] == "COMPLETE" and e["job"]["name"].endswith(f".{task}")]


def ids(datasets: Iterable[dict[str, Any]]) -> list[Dataset]:
    return [(d["namespace"], d["name"]) for d in datasets]


def edges(events: Iterable[dict[str, Any]]) -> dict[Dataset, set[Dataset]]:
    """The lineage graph a reader draws: every input of a completed task points at its outputs."""
    graph: dict[Dataset, set[Dataset]] = defaultdict(set)
    for event in events:
        if event["eventType"] != "COMPLETE":
            continue
        for source in ids(event.get("inputs") or []):
            graph[source].update(ids(event.get("outputs") or []))
    return graph


def reaches(graph: dict[Dataset, set[Dataset]], start: Dataset, goal: Dataset) -> bool:
    seen, todo = {start}, [start]
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        for nxt in graph.get(node, ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return False


def facet(event: dict[str, Any]) -> dict[str, Any]:
    return event["run"]["facets"].get("traitLora") or {}


def mlflow_runs(uri: str, experiment: str) -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r} at {uri}"
    return client.search_runs([found.experiment_id], max_results=1000)


def loss_history(uri: str, run_id: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    history = MlflowClient(tracking_uri=uri).get_metric_history(run_id, "train_loss")
    return sorted((m.step, m.value) for m in history)
