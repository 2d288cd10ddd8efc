"""trait_lora_together: one LoRA adapter per trait shard on Together AI.

discover -> per trait [upload -> launch -> wait (deferred) -> download] -> publish_mapping -> check.
Wiring only: the logic lives in trait_lora.provider (operators, pipeline).
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import Asset, dag, task, task_group

from trait_lora.provider import pipeline
from trait_lora.provider.operators.together import (
    TogetherDownloadOperator,
    TogetherFineTuneSensor,
    TogetherLaunchOperator,
    TogetherUploadOperator,
)
from trait_lora.provider.params import build_params, default_dirs

PROJECT_DIR = Path(__file__).resolve().parent.parent
OUTPUT_DIR = default_dirs(PROJECT_DIR)[1]
HYPERNETWORK_DATA = Asset(
    name=pipeline.HYPERNETWORK_ASSET_NAME, uri=f"file://{OUTPUT_DIR}/hypernetwork_data.json"
)
POOL = os.environ.get("TRAIT_LORA_TOGETHER_POOL", "together_api")
POLL_SECONDS = float(os.environ.get("TRAIT_LORA_POLL_SECONDS", "30"))
RETRY_DELAY_SECONDS = float(os.environ.get("TRAIT_LORA_RETRY_DELAY_SECONDS", "30"))
STAGGER_SECONDS = float(os.environ.get("TRAIT_LORA_STAGGER_SECONDS", "2"))
# Unpausing a cron DAG starts the latest missed run at once (catchup=False still runs the most recent
# slot): TRAIT_LORA_SCHEDULE=none (or empty) makes the DAG manual-only, so unpausing starts nothing.
_SCHEDULE = os.environ.get("TRAIT_LORA_SCHEDULE", "0 3 * * 1").strip()
SCHEDULE = None if _SCHEDULE.lower() in ("", "none", "null") else _SCHEDULE


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
    @task
    def discover(params=None, run_id=None):
        return pipeline.discover(params, run_id, "together")

    @task_group(group_id="trait")
    def per_trait(trait_plan):
        upload = TogetherUploadOperator(task_id="upload", trait_plan=trait_plan)
        # launch and wait share the together_api pool (created with --include-deferred): a deferred
        # wait keeps its slot while Together trains. Absolute weights let a finished launch's wait
        # take the freed slot before the next launch can, so slots bound jobs in flight.
        launch = TogetherLaunchOperator(
            task_id="launch",
            upload_result=upload.output,
            pool=POOL,
            priority_weight=1,
            weight_rule="absolute",
            stagger_seconds=STAGGER_SECONDS,
        )
        wait = TogetherFineTuneSensor(
            task_id="wait",
            launch_result=launch.output,
            pool=POOL,
            priority_weight=10,
            weight_rule="absolute",
            poll_interval=POLL_SECONDS,
        )
        return TogetherDownloadOperator(task_id="download", wait_result=wait.output).output

    @task(trigger_rule="all_done", outlets=[HYPERNETWORK_DATA])
    def publish_mapping(results, params=None, run_id=None, outlet_events=None):
        return pipeline.publish(params, results, run_id, "together", outlet_events, HYPERNETWORK_DATA)

    @task
    def check(published):
        pipeline.check(published)

    results = per_trait.expand(trait_plan=discover())
    check(publish_mapping(results))


trait_lora_together()
