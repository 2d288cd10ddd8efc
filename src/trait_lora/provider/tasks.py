"""The task declarations every training DAG shares: discover first, publish_mapping and check last.

Call these inside a ``@dag`` function; the logic they run lives in ``trait_lora.provider.pipeline``.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import task

from trait_lora.provider import pipeline

# The part of every training DAG's doc_md that is the same for all three: what a run leaves behind.
RUN_DOC = """
**Outputs** (under the run's *Output directory*): `lora_checkpoints/<trait>/` (the verified adapter),
`hypernetwork_data.json` (trait -> adapter mapping; an event on the Asset alias
`trait_lora_hypernetwork_data` names that file whenever its content changed), `runs/<run>/summary.txt`
and `loss_curves.png` (this run), `metrics/<trait>.json`, and the ledgers `lora_job_ids.json` /
`file_hashes.json` that make unchanged traits skip and running jobs resume.

**Reading a run**: each mapped task is labelled with its trait. A red `check` means some traits failed
(the others are still published); `publish_mapping`'s log has the summary table with each failure's
reason.
"""


def discover_task(backend: str) -> Any:
    """Validate and plan the selected traits; returns what the per-trait tasks map over."""

    @task(task_id="discover", show_return_value_in_logs=False)  # the plan is logged readably instead
    def discover(params=None, run_id=None, dag_run=None, dag=None):
        return pipeline.discover(params, run_id, backend, dag_run, dag=dag)

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
