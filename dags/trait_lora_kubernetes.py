"""# trait_lora_kubernetes: one LoRA adapter per trait, one GPU pod each

Trigger it with the traits to train (empty = every shard). Per trait: `pod_spec` -> `train_pod` (a
deferrable KubernetesPodOperator on the GPU node pool, writing to the shared volume) -> `install`
(verified before it replaces the previous adapter). The pod is built in the worker, so parsing this
DAG never imports Kubernetes.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import DAG, task, task_group

from trait_lora import settings
from trait_lora.provider import kubernetes, pipeline, tasks
from trait_lora.provider.deployment import dag_args, params_handed_over_once

PROJECT_DIR = Path(__file__).resolve().parent.parent


with DAG(
    dag_id="trait_lora_kubernetes",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    # [trait_lora] schedule and shards/output dirs; a pod retry waits 2 minutes for the node pool.
    **dag_args(PROJECT_DIR, "local", retries=1, retry_delay=timedelta(minutes=2)),
    tags=["trait-lora", "kubernetes", "gpu"],
    description="Train one LoRA adapter per trait shard in a GPU pod per trait (KubernetesPodOperator)",
    doc_md=__doc__ + tasks.RUN_DOC,
) as dag, params_handed_over_once(dag):  # the DAG's params, not a copy per task

    @task_group(group_id="trait")
    def per_trait(trait_plan):
        @task(multiple_outputs=True, map_index_template="{{ trait_label | default('') }}")
        def pod_spec(trait_plan, **context):
            return pipeline.pod_spec(trait_plan, context)

        spec = pod_spec(trait_plan)
        pod = kubernetes.TrainingPodOperator(
            task_id="train_pod",
            name=spec["name"],
            arguments=spec["arguments"],
            labels=spec["labels"],
            pool=settings.get_str("gpu_pool"),
        )

        @task(map_index_template="{{ trait_label | default('') }}")
        def install(trait_plan, pod_result, run_id=None, **context):
            return pipeline.install_pod_result(trait_plan, pod_result, run_id, context)

        return install(trait_plan, pod.output)

    plans = tasks.discover_task("local")
    results = per_trait.expand(trait_plan=plans)
    tasks.publish_and_check(plans, results, "local")
