"""The task declarations every training DAG shares: discover first, publish_mapping and check last.

Call these inside a ``@dag`` function; the logic they run lives in ``trait_lora.provider.pipeline``.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import task

from trait_lora.provider import pipeline


def discover_task(backend: str) -> Any:
    """Validate and plan the selected traits; returns what the per-trait tasks map over."""

    @task(task_id="discover", show_return_value_in_logs=False)  # the plan is logged readably instead
    def discover(params=None, run_id=None):
        return pipeline.discover(params, run_id, backend)

    return discover()


def publish_and_check(plans: Any, results: Any, backend: str) -> Any:
    """``publish_mapping`` (runs even when traits failed; an event on the ``trait_lora_hypernetwork_data``
    alias when the mapping changed) then the ``check`` leaf.

    ``check`` also hangs off ``discover`` (``plans``): when discover fails, publish skips with a reason
    and ``check`` becomes upstream_failed, so the run is failed with discover its only red task.
    """

    from airflow.sdk import AssetAlias

    alias = AssetAlias(pipeline.HYPERNETWORK_ALIAS)

    # No retries: both only read what earlier tasks wrote; a retry would fail the same way, three times.
    @task(
        task_id="publish_mapping",
        trigger_rule="all_done",
        outlets=[alias],
        retries=0,
        show_return_value_in_logs=False,
    )
    def publish_mapping(results, params=None, run_id=None, outlet_events=None):
        return pipeline.publish(params, results, run_id, backend, outlet_events, alias)

    @task(task_id="check", retries=0)
    def check(published):
        pipeline.check(published)

    checked = check(publish_mapping(results))
    plans >> checked
    return checked
