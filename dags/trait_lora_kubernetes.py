"""# trait_lora_kubernetes: one LoRA adapter per trait, one GPU pod each

Trigger it with the traits to train (empty = every shard). Per trait: `pod_spec` -> `train_pod` (the
provider's deferrable KubernetesPodOperator, built when the task runs, on the GPU node pool; at most
`[trait_lora] k8s_max_pods` at once; its log streams into the task log while it trains) -> `install`
(reads the `result.json` the trainer left beside its adapter, on the PVC or in the bucket, and
verifies the adapter before it replaces the previous one). `trait-lora k8s-pod TRAIT` prints the pod
this DAG would create.
With *Traits per process* N > 1, `plan_groups` splits the traits to train into groups of at most N and
`group.train_pod` trains each group in one pod (the base model loaded once); a trait its group trained
skips its own pod and goes straight to `install`; one its group could not train gets its own pod.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import DAG, task, task_group

from trait_lora import settings
from trait_lora.provider import grouped, pod_tasks, tasks
from trait_lora.provider.deployment import dag_args, params_handed_over_once
from trait_lora.provider.kubernetes import GROUP_ANNOTATION, operator_arguments
from trait_lora.provider.training_pod import TrainingPod

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
    pod_bounds = {
        "pool": settings.get_str("gpu_pool"),
        "max_active_tis_per_dagrun": settings.get_int("k8s_max_pods"),
        "retry_delay": timedelta(seconds=settings.get_float("k8s_retry_delay_seconds")),
    }

    @task(task_id="plan_groups", retries=0)
    def plan_groups(plans, params=None):
        return grouped.plan_groups(plans, params)

    @task_group(group_id="group")
    def per_group(group):
        @task(multiple_outputs=True, map_index_template="{{ trait_label | default('') }}")
        def pod_spec(group, **context):
            return pod_tasks.group_pod_spec(group, context)

        spec = pod_spec(group)
        TrainingPod(
            task_id="train_pod",
            **operator_arguments(spec),
            map_index_template="{{ task.annotations.get('" + GROUP_ANNOTATION + "', '') }}",
            **pod_bounds,
        )

    @task_group(group_id="trait")
    def per_trait(trait_plan):
        # after the groups' pods, whatever became of them: a trait no group trained gets its own pod
        @task(
            multiple_outputs=True,
            map_index_template="{{ trait_label | default('') }}",
            trigger_rule="all_done",
        )
        def pod_spec(trait_plan, **context):
            return pod_tasks.pod_spec(trait_plan, context)

        spec = pod_spec(trait_plan)
        groups >> spec.operator
        pod = TrainingPod(task_id="train_pod", **operator_arguments(spec), **pod_bounds)

        # after its own pod, or straight after pod_spec when its group's pod trained it (skipped)
        @task(map_index_template="{{ trait_label | default('') }}", trigger_rule="none_failed")
        def install(trait_plan, run_id=None, **context):
            return pod_tasks.install_pod_result(trait_plan, run_id, context)

        installed = install(trait_plan)
        pod >> installed
        return installed

    plans = tasks.discover_task("local")
    groups = per_group.expand(group=plan_groups(plans))
    results = per_trait.expand(trait_plan=plans)
    tasks.publish_and_check(plans, results, "local")
