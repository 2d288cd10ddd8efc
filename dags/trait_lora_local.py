"""trait_lora_local: one LoRA adapter per trait shard, trained on this machine (transformers + peft).

discover -> train (mapped, one trainer subprocess per trait) -> publish_mapping -> check.
The embedded default used by `make demo` and `trait-lora train --backend local`.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import Asset, dag, task

from trait_lora.provider import pipeline
from trait_lora.provider.params import build_params, default_dirs

PROJECT_DIR = Path(__file__).resolve().parent.parent
OUTPUT_DIR = default_dirs(PROJECT_DIR)[1]
HYPERNETWORK_DATA = Asset(
    name=pipeline.HYPERNETWORK_ASSET_NAME, uri=f"file://{OUTPUT_DIR}/hypernetwork_data.json"
)
# Training saturates the machine: traits train one at a time unless told otherwise.
CONCURRENCY = int(os.environ.get("TRAIT_LORA_LOCAL_CONCURRENCY", "1"))
RETRY_DELAY_SECONDS = float(os.environ.get("TRAIT_LORA_RETRY_DELAY_SECONDS", "30"))


@dag(
    dag_id="trait_lora_local",
    schedule=os.environ.get("TRAIT_LORA_SCHEDULE", "0 3 * * 1"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    params=build_params(PROJECT_DIR, "local"),
    default_args={"retries": 1, "retry_delay": timedelta(seconds=RETRY_DELAY_SECONDS)},
    tags=["trait-lora", "local"],
    doc_md=__doc__,
)
def trait_lora_local():
    @task
    def discover(params=None, run_id=None):
        return pipeline.discover(params, run_id, "local")

    @task(map_index_template="{{ trait_label | default('') }}", max_active_tis_per_dagrun=CONCURRENCY)
    def train(trait_plan, run_id=None, **context):
        return pipeline.train_local(trait_plan, run_id, context)

    @task(trigger_rule="all_done", outlets=[HYPERNETWORK_DATA])
    def publish_mapping(results, params=None, run_id=None, outlet_events=None):
        return pipeline.publish(params, results, run_id, "local", outlet_events, HYPERNETWORK_DATA)

    @task
    def check(published):
        pipeline.check(published)

    check(publish_mapping(train.expand(trait_plan=discover())))


trait_lora_local()
