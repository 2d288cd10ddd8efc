"""# trait_lora_kubernetes: one LoRA adapter per trait, one GPU pod each

Trigger it with the traits to train (empty = every shard). Per trait: `pod_spec` -> `train_pod` (the
provider's deferrable KubernetesPodOperator on the GPU node pool; at most `[trait_lora] k8s_max_pods`
at once; its log streams into the task log while it trains) -> `install` (reads the `result.json` the
trainer left beside its adapter, on the PVC or in the bucket, and verifies the adapter before it
replaces the previous one). `trait-lora k8s-pod TRAIT` prints the pod this DAG would create.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

# The provider's operator module (it imports the Kubernetes clients, about a second) is named here so
# the DAG processor imports it once, before it forks each parse ([dag_processor]
# parsing_pre_import_modules, on by default): a parse of this file then costs what the others do.
import airflow.providers.cncf.kubernetes.operators.pod  # noqa: F401
from airflow.sdk import DAG, task, task_group

from trait_lora import settings
from trait_lora.provider import pod_tasks, tasks
from trait_lora.provider.deployment import dag_args, params_handed_over_once
from trait_lora.provider.pod_operator import TrainingPodOperator

PROJECT_DIR = Path(__file__).resolve().parent.parent


with (
    DAG(
        dag_id="trait_lora_kubernetes",
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        # [trait_lora] schedule and shards/output dirs; a pod's retry waits k8s_retry_delay_seconds.
        **dag_args(PROJECT_DIR, "local", retries=1),
        tags=["trait-lora", "kubernetes", "gpu"],
        description="Train one LoRA adapter per trait shard in a GPU pod per trait (KubernetesPodOperator)",
        doc_md=__doc__ + tasks.RUN_DOC,
    ) as dag,
    params_handed_over_once(dag),
):  # the DAG's params, not a copy per task

    @task_group(group_id="trait")
    def per_trait(trait_plan):
        @task(multiple_outputs=True, map_index_template="{{ trait_label | default('') }}")
        def pod_spec(trait_plan, **context):
            return pod_tasks.pod_spec(trait_plan, context)

        spec = pod_spec(trait_plan)
        pod = TrainingPodOperator(
            task_id="train_pod",
            name=spec["name"],
            arguments=spec["arguments"],
            labels=spec["labels"],
            annotations=spec["annotations"],
            run_record=spec["run_record"],
            pool=settings.get_str("gpu_pool"),
            max_active_tis_per_dagrun=settings.get_int("k8s_max_pods"),
            retry_delay=timedelta(seconds=settings.get_float("k8s_retry_delay_seconds")),
        )

        @task(map_index_template="{{ trait_label | default('') }}")
        def install(trait_plan, run_id=None, **context):
            return pod_tasks.install_pod_result(trait_plan, run_id, context)

        installed = install(trait_plan)
        pod >> installed
        return installed

    plans = tasks.discover_task("local")
    results = per_trait.expand(trait_plan=plans)
    tasks.publish_and_check(plans, results, "local")
