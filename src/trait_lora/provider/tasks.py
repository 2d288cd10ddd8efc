"""The task declarations every training DAG shares: discover first, publish_mapping and check last.

Call these inside a ``@dag`` function; the logic they run lives in ``trait_lora.provider.pipeline``.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import task

from trait_lora.provider import pipeline


def discover_task(backend: str) -> Any:
    """Validate and plan the selected traits; returns what the per-trait tasks map over."""

    @task(task_id="discover")
    def discover(params=None, run_id=None):
        return pipeline.discover(params, run_id, backend)

    return discover()


def publish_and_check(results: Any, backend: str, asset: Any) -> Any:
    """``publish_mapping`` (runs even when traits failed, emits ``asset``) then the ``check`` leaf."""

    @task(task_id="publish_mapping", trigger_rule="all_done", outlets=[asset])
    def publish_mapping(results, params=None, run_id=None, outlet_events=None):
        return pipeline.publish(params, results, run_id, backend, outlet_events, asset)

    @task(task_id="check")
    def check(published):
        pipeline.check(published)

    return check(publish_mapping(results))
