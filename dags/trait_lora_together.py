"""trait_lora_together: one LoRA adapter per trait shard on Together AI.

discover -> per trait [upload -> launch (deferred until the job ends) -> wait -> download]
         -> publish_mapping -> check.
Wiring only: the logic lives in trait_lora.provider (operators, pipeline).
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import Asset, dag, task_group

from trait_lora.provider import pipeline, tasks
from trait_lora.provider.operators.together import (
    TogetherDownloadOperator,
    TogetherFineTuneSensor,
    TogetherLaunchOperator,
    TogetherUploadOperator,
)
from trait_lora.provider.params import build_params, default_dirs, schedule_from_env

PROJECT_DIR = Path(__file__).resolve().parent.parent
OUTPUT_DIR = default_dirs(PROJECT_DIR)[1]
HYPERNETWORK_DATA = Asset(
    name=pipeline.HYPERNETWORK_ASSET_NAME, uri=f"file://{OUTPUT_DIR}/hypernetwork_data.json"
)
POOL = os.environ.get("TRAIT_LORA_TOGETHER_POOL", "together_api")
POLL_SECONDS = float(os.environ.get("TRAIT_LORA_POLL_SECONDS", "30"))
RETRY_DELAY_SECONDS = float(os.environ.get("TRAIT_LORA_RETRY_DELAY_SECONDS", "30"))
STAGGER_SECONDS = float(os.environ.get("TRAIT_LORA_STAGGER_SECONDS", "2"))
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
    doc_md=__doc__,
)
def trait_lora_together():
    @task_group(group_id="trait")
    def per_trait(trait_plan):
        upload = TogetherUploadOperator(task_id="upload", trait_plan=trait_plan)
        # One together_api slot (pool created with --include-deferred) per Together job in flight: launch
        # takes it before the create and, deferred on the job (no worker slot), keeps it until the job
        # ends. A slot shared by separate launch and wait tasks is free between the two and the scheduler
        # hands it to the next launch (a live deployment ran 8 jobs on 6 slots), so the wait is not pooled.
        launch = TogetherLaunchOperator(
            task_id="launch",
            upload_result=upload.output,
            pool=POOL,
            stagger_seconds=STAGGER_SECONDS,
            wait_for_completion=True,
            poll_interval=POLL_SECONDS,
        )
        # The job has ended by now: wait records the outcome (price, Together's failure reason) at once.
        wait = TogetherFineTuneSensor(task_id="wait", launch_result=launch.output, poll_interval=POLL_SECONDS)
        return TogetherDownloadOperator(task_id="download", wait_result=wait.output).output

    results = per_trait.expand(trait_plan=tasks.discover_task("together"))
    tasks.publish_and_check(results, "together", HYPERNETWORK_DATA)


trait_lora_together()
