"""trait_lora_kubernetes: one GPU pod per trait (KubernetesPodOperator), same contract as the others.

discover -> per trait [pod_spec -> train_pod (deferrable KPO, nvidia.com/gpu) -> install] -> publish -> check.
TrainingPodOperator builds the KubernetesPodOperator in the worker, so parsing never imports Kubernetes.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import Asset, dag, task, task_group

from trait_lora.provider import kubernetes, pipeline, tasks
from trait_lora.provider.params import build_params, default_dirs, schedule_from_env

PROJECT_DIR = Path(__file__).resolve().parent.parent
OUTPUT_DIR = default_dirs(PROJECT_DIR)[1]
HYPERNETWORK_DATA = Asset(
    name=pipeline.HYPERNETWORK_ASSET_NAME, uri=f"file://{OUTPUT_DIR}/hypernetwork_data.json"
)
POOL = os.environ.get("TRAIT_LORA_GPU_POOL", "default_pool")


@dag(
    dag_id="trait_lora_kubernetes",
    schedule=schedule_from_env(),  # TRAIT_LORA_SCHEDULE: cron, weekly by default; "none" = manual only
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    params=build_params(PROJECT_DIR, "local"),
    default_args={"retries": 1, "retry_delay": timedelta(minutes=2)},
    tags=["trait-lora", "kubernetes", "gpu"],
    doc_md=__doc__,
)
def trait_lora_kubernetes():
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
            pool=POOL,
        )

        @task(map_index_template="{{ trait_label | default('') }}")
        def install(trait_plan, pod_result, run_id=None, **context):
            return pipeline.install_pod_result(trait_plan, pod_result, run_id, context)

        return install(trait_plan, pod.output)

    plans = tasks.discover_task("local")
    results = per_trait.expand(trait_plan=plans)
    tasks.publish_and_check(plans, results, "local", HYPERNETWORK_DATA)


trait_lora_kubernetes()
