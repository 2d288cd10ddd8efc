"""The tracking calls the decorated tasks make: one line each in ``pipeline``, never a failure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def track_trait(context: Any, plan: Mapping[str, Any], result: Mapping[str, Any], backend: str) -> None:
    """A trained trait's OpenLineage datasets (shard in, adapter out) and its MLflow child run."""
    from trait_lora.provider.tracking import lineage, mlflow_runs

    lineage.report_trait(context, plan, result, backend)
    mlflow_runs.log_trait(context, plan, result, backend)


def track_mapping(
    output_dir: str,
    mapping_path: str,
    mapping: Mapping[str, Any],
    digest: str,
    summary: Mapping[str, Any],
    backend: str,
) -> None:
    """The mapping's OpenLineage datasets (adapters in, the file out); the MLflow parent run closes
    with the run's counts."""
    from airflow.sdk import get_current_context

    from trait_lora.provider.tracking import lineage, mlflow_runs

    try:
        context = get_current_context()
    except RuntimeError:  # called outside a task (a unit test of publish): nothing to report to
        return
    lineage.report_mapping(context, output_dir, mapping_path, mapping, digest)
    dag_id = getattr(context.get("dag"), "dag_id", None)
    mlflow_runs.end_dag_run(dag_id, str(context["run_id"]), backend, summary, digest, mapping_path)


def track_intake(context: Any, mapping_path: str, result: Mapping[str, Any]) -> None:
    """hypernetwork_intake: the mapping in, the stacked dataset out."""
    from trait_lora.provider.tracking import lineage

    facet = {"mapping_sha256": result.get("mapping_sha256"), "traits": list(result.get("traits") or [])}
    lineage.report(context, inputs=[mapping_path], outputs=[str(result["dataset_dir"])], facet=facet)
