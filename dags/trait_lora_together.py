"""# trait_lora_together: one LoRA adapter per trait on Together AI

Trigger it with the traits to train (empty = every shard), or let the weekly schedule retrain what
changed. Per trait: `upload` (the shard is validated here first, then by Together) -> `launch` (the
job is created once per shard + settings, or an existing one adopted; never paid twice) -> `wait`
(deferred while Together trains, with Together's events in its log and a link to the job) ->
`download` (verified before it replaces the previous adapter). At most `[trait_lora] max_jobs_in_flight`
jobs run at once; the *Budget* fields refuse launches Together estimates above them.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from airflow.sdk import DAG, task_group

from trait_lora import settings
from trait_lora.provider import tasks
from trait_lora.provider.deployment import dag_args, params_handed_over_once
from trait_lora.provider.operators import (
    TogetherDownloadOperator,
    TogetherFineTuneSensor,
    TogetherLaunchOperator,
    TogetherUploadOperator,
)

PROJECT_DIR = Path(__file__).resolve().parent.parent


with DAG(
    dag_id="trait_lora_together",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    **dag_args(PROJECT_DIR, "together", retries=2),  # [trait_lora] schedule, shards/output dirs, retry delay
    tags=["trait-lora", "together"],
    description="One LoRA adapter per trait shard on Together AI; publishes the trait -> adapter mapping",
    doc_md=__doc__ + tasks.RUN_DOC,
) as dag, params_handed_over_once(dag):  # the DAG's params, not a copy per task

    @task_group(group_id="trait")
    def per_trait(trait_plan):
        # Poll interval, stagger and the cap are [trait_lora] settings read by each task when it runs.
        upload = TogetherUploadOperator(task_id="upload", trait_plan=trait_plan)
        # launch ends once the job exists. Jobs in flight are bounded by max_jobs_in_flight, counted in
        # the ledger under its lock before each create (at the cap launch defers on a timer); the
        # together_api pool only paces the submissions themselves.
        launch = TogetherLaunchOperator(
            task_id="launch",
            upload_result=upload.output,
            pool=settings.get_str("together_pool"),
        )
        # The sensor: deferred (no worker slot) while Together trains, Together's events in its log.
        wait = TogetherFineTuneSensor(task_id="wait", launch_result=launch.output)
        return TogetherDownloadOperator(task_id="download", wait_result=wait.output).output

    plans = tasks.discover_task("together")
    results = per_trait.expand(trait_plan=plans)
    tasks.publish_and_check(plans, results, "together")
