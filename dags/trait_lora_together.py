"""# trait_lora_together: one LoRA adapter per trait on Together AI

Trigger it with the traits to train (empty = every shard), or let the weekly schedule retrain what
changed. Per trait: `upload` (the shard is validated here first, then by Together) -> `launch` (the
job is created once per shard + settings, or an existing one adopted; never paid twice) -> `wait`
(deferred while Together trains, with Together's events in its log and a link to the job) ->
`download` (verified before it replaces the previous adapter). At most `TRAIT_LORA_MAX_JOBS_IN_FLIGHT`
jobs run at once; the *Budget* fields refuse launches Together estimates above them.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import dag, task_group

from trait_lora.provider import tasks
from trait_lora.provider.operators import (
    TogetherDownloadOperator,
    TogetherFineTuneSensor,
    TogetherLaunchOperator,
    TogetherUploadOperator,
)
from trait_lora.provider.params import build_params, schedule_from_env

PROJECT_DIR = Path(__file__).resolve().parent.parent
POOL = os.environ.get("TRAIT_LORA_TOGETHER_POOL", "together_api")
POLL_SECONDS = float(os.environ.get("TRAIT_LORA_POLL_SECONDS", "30"))
RETRY_DELAY_SECONDS = float(os.environ.get("TRAIT_LORA_RETRY_DELAY_SECONDS", "30"))
STAGGER_SECONDS = float(os.environ.get("TRAIT_LORA_STAGGER_SECONDS", "2"))
MAX_JOBS_IN_FLIGHT = int(os.environ.get("TRAIT_LORA_MAX_JOBS_IN_FLIGHT", "6"))
SCHEDULE = schedule_from_env()  # TRAIT_LORA_SCHEDULE: cron, weekly by default; "none" = manual only


@dag(
    dag_id="trait_lora_together",
    schedule=SCHEDULE,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    params=build_params(PROJECT_DIR, "together"),
    default_args={"retries": 2, "retry_delay": timedelta(seconds=RETRY_DELAY_SECONDS)},
    tags=["trait-lora", "together"],
    description="One LoRA adapter per trait shard on Together AI; publishes the trait -> adapter mapping",
    doc_md=__doc__ + tasks.RUN_DOC,
)
def trait_lora_together():
    @task_group(group_id="trait")
    def per_trait(trait_plan):
        upload = TogetherUploadOperator(task_id="upload", trait_plan=trait_plan, poll_interval=POLL_SECONDS)
        # launch ends once the job exists. Jobs in flight are bounded by MAX_JOBS_IN_FLIGHT, counted in the
        # ledger under its lock before each create (at the cap launch defers on a timer); the together_api
        # pool only paces the submissions themselves.
        launch = TogetherLaunchOperator(
            task_id="launch",
            upload_result=upload.output,
            pool=POOL,
            stagger_seconds=STAGGER_SECONDS,
            max_jobs_in_flight=MAX_JOBS_IN_FLIGHT,
            cap_poll_interval=POLL_SECONDS,
        )
        # The sensor: deferred (no worker slot) while Together trains, Together's events in its log.
        wait = TogetherFineTuneSensor(task_id="wait", launch_result=launch.output, poll_interval=POLL_SECONDS)
        return TogetherDownloadOperator(task_id="download", wait_result=wait.output).output

    plans = tasks.discover_task("together")
    results = per_trait.expand(trait_plan=plans)
    tasks.publish_and_check(plans, results, "together")


trait_lora_together()
