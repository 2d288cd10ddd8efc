"""# trait_lora_local: one LoRA adapter per trait, trained on this machine

Trigger it with the traits to train (empty = every shard). Per trait, `train` runs the trainer
(transformers + peft) in a subprocess, then verifies and installs the adapter; unchanged traits skip.
The embedded default of `make demo` and `trait-lora train --backend local`.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from airflow.sdk import DAG, task

from trait_lora.provider import pipeline, tasks
from trait_lora.provider.deployment import dag_args, local_train_args, params_handed_over_once

PROJECT_DIR = Path(__file__).resolve().parent.parent


with DAG(
    dag_id="trait_lora_local",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    **dag_args(PROJECT_DIR, "local", retries=1),  # [trait_lora] schedule, shards/output dirs, retry delay
    tags=["trait-lora", "local"],
    description="Train one LoRA adapter per trait shard on this machine (transformers + peft)",
    doc_md=__doc__ + tasks.RUN_DOC,
) as dag, params_handed_over_once(dag):  # the DAG's params, not a copy per task

    # one trait per GPU at once (one at a time on a CPU), each bounded by local_timeout_minutes
    @task(map_index_template="{{ trait_label | default('') }}", **local_train_args())
    def train(trait_plan, run_id=None, **context):
        return pipeline.train_local(trait_plan, run_id, context)

    plans = tasks.discover_task("local")
    results = train.expand(trait_plan=plans)
    tasks.publish_and_check(plans, results, "local")
