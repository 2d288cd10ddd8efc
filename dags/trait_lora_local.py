"""# trait_lora_local: one LoRA adapter per trait, trained on this machine

Trigger it with the traits to train (empty = every shard). Per trait, `train` runs the trainer
(transformers + peft) in a subprocess, then verifies and installs the adapter; unchanged traits skip.
With *Traits per process* N > 1, `plan_groups` splits the traits to train into groups of at most N and
`train_group` trains each group in one trainer process (the base model loaded once); each trait's
`train` then installs what its group trained (or trains it alone if its group did not).
The embedded default of `make demo` and `trait-lora train --backend local`.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from airflow.sdk import DAG, task

from trait_lora.provider import grouped, pipeline, tasks
from trait_lora.provider.deployment import (
    dag_args,
    local_group_args,
    local_train_args,
    params_handed_over_once,
)

PROJECT_DIR = Path(__file__).resolve().parent.parent


with (
    DAG(
        dag_id="trait_lora_local",
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        **dag_args(PROJECT_DIR, "local", retries=1),  # [trait_lora] schedule, shards/output dirs, retry delay
        tags=["trait-lora", "local"],
        description="Train one LoRA adapter per trait shard on this machine (transformers + peft)",
        doc_md=__doc__ + tasks.RUN_DOC,
    ) as dag,
    params_handed_over_once(dag),
):  # the DAG's params, not a copy per task

    @task(task_id="plan_groups", retries=0)
    def plan_groups(plans, params=None):
        return grouped.plan_groups(plans, params)

    # one group per GPU at once (one at a time on a CPU)
    @task(map_index_template="{{ trait_label | default('') }}", **local_group_args())
    def train_group(group, run_id=None, **context):
        return grouped.train_group(group, run_id, context)

    # one trait per GPU at once (one at a time on a CPU), each bounded by local_timeout_minutes; after
    # its group whatever became of it (all_done): a trait no group trained trains here, alone
    @task(map_index_template="{{ trait_label | default('') }}", trigger_rule="all_done", **local_train_args())
    def train(trait_plan, run_id=None, **context):
        return pipeline.train_local(trait_plan, run_id, context)

    plans = tasks.discover_task("local")
    groups = train_group.expand(group=plan_groups(plans))
    results = train.expand(trait_plan=plans)
    groups >> results
    tasks.publish_and_check(plans, results, "local")
