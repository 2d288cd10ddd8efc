"""The GPU pod per trait: settings, argv and the ``KubernetesPodOperator`` arguments.

Settings come from the environment at parse time (documented defaults below); the image and the
namespace are templates that read Airflow Variables first, so they can change without a redeploy.
The trainer's arguments are a list built from validated trait names and paths, never a shell string,
so nothing from a run's conf can reach a shell in the pod.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

from airflow.sdk import BaseOperator

from trait_lora.core.config import from_mapping
from trait_lora.core.shards import check_trait_name

DEFAULTS: dict[str, str] = {
    "TRAIT_LORA_TRAINER_IMAGE": "ghcr.io/trait-lora/trainer:0.1.0",
    "TRAIT_LORA_K8S_NAMESPACE": "airflow",
    "TRAIT_LORA_K8S_PVC": "trait-lora-data",
    "TRAIT_LORA_K8S_MOUNT_PATH": "/data",
    "TRAIT_LORA_K8S_NODE_SELECTOR": '{"nvidia.com/gpu.present": "true"}',
    "TRAIT_LORA_K8S_TOLERATIONS": '[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]',
    "TRAIT_LORA_K8S_GPUS": "1",
    "TRAIT_LORA_K8S_CPU": "8",
    "TRAIT_LORA_K8S_MEMORY": "64Gi",
    "TRAIT_LORA_K8S_HF_SECRET": "hf-token",
    "TRAIT_LORA_K8S_HF_SECRET_KEY": "token",
    "TRAIT_LORA_K8S_GPU_FLAG": "1",
    "TRAIT_LORA_K8S_MICRO_BATCH": "4",
    # Where the KPO's xcom sidecar reads the result; only tests running the argv locally change it.
    "TRAIT_LORA_K8S_XCOM_FILE": "/airflow/xcom/return.json",
}


def setting(name: str) -> str:
    return os.environ.get(name) or DEFAULTS[name]


def variable_template(variable: str, env: str) -> str:
    """A template reading the Airflow Variable at run time, falling back to the env/default value."""
    fallback = json.dumps(setting(env))
    return "{{ var.value.get('" + variable + "', " + fallback + ") }}"


def under_mount(path: str) -> str:
    """Shards and outputs must live on the PVC, mounted at the same path in workers and pods."""
    mount = PurePosixPath(setting("TRAIT_LORA_K8S_MOUNT_PATH"))
    resolved = PurePosixPath(path)
    if ".." in resolved.parts or not resolved.is_relative_to(mount):
        raise ValueError(
            f"{path} is not under the pod's data mount {mount}: put shards_dir and output_dir on the "
            "PVC (TRAIT_LORA_K8S_PVC) mounted at TRAIT_LORA_K8S_MOUNT_PATH in the Airflow workers too"
        )
    return str(resolved)


def pod_spec(plan: dict[str, Any]) -> dict[str, Any]:
    """Per-trait pod values: argv list, labels, pod name, and where the adapter will appear."""
    trait = check_trait_name(plan["trait"])
    config = from_mapping({**plan["config"], "backend": "local"})
    out = f"{under_mount(plan['output_dir'])}/.staging-train/{trait}-{plan['job_key'][:16]}"
    arguments = [
        "--shard",
        under_mount(plan["shard_path"]),
        "--out",
        out,
        "--config-json",
        json.dumps(config.to_dict(), sort_keys=True),
        "--xcom-file",
        setting("TRAIT_LORA_K8S_XCOM_FILE"),
    ]
    if setting("TRAIT_LORA_K8S_GPU_FLAG") not in ("0", "false", "False"):
        arguments.append("--gpu")
        arguments += ["--micro-batch", str(int(setting("TRAIT_LORA_K8S_MICRO_BATCH")))]
    return {
        "arguments": arguments,
        "labels": {"app": "trait-lora", "trait": trait.replace("_", "-")},
        "name": f"trait-lora-{trait.replace('_', '-')}"[:63],
        "adapter_dir": out,
    }


def pod_operator_kwargs() -> dict[str, Any]:
    """Everything but the per-trait values and the templated image/namespace, as pod-operator kwargs.

    Called in the worker (it imports the Kubernetes client), never while a DAG file is parsed.
    """
    from airflow.providers.cncf.kubernetes.secret import Secret
    from kubernetes.client import models as k8s

    gpus = setting("TRAIT_LORA_K8S_GPUS")
    resources = k8s.V1ResourceRequirements(
        limits={"nvidia.com/gpu": gpus, "memory": setting("TRAIT_LORA_K8S_MEMORY")},
        requests={
            "nvidia.com/gpu": gpus,
            "cpu": setting("TRAIT_LORA_K8S_CPU"),
            "memory": setting("TRAIT_LORA_K8S_MEMORY"),
        },
    )
    tolerations = [k8s.V1Toleration(**t) for t in json.loads(setting("TRAIT_LORA_K8S_TOLERATIONS"))]
    mount = setting("TRAIT_LORA_K8S_MOUNT_PATH")
    return {
        "cmds": ["python", "-m", "trait_lora.train"],
        "container_resources": resources,
        "node_selector": json.loads(setting("TRAIT_LORA_K8S_NODE_SELECTOR")),
        "tolerations": tolerations,
        "volumes": [
            k8s.V1Volume(
                name="trait-lora-data",
                persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
                    claim_name=setting("TRAIT_LORA_K8S_PVC")
                ),
            )
        ],
        "volume_mounts": [k8s.V1VolumeMount(name="trait-lora-data", mount_path=mount)],
        "secrets": [
            Secret(
                "env",
                "HF_TOKEN",
                setting("TRAIT_LORA_K8S_HF_SECRET"),
                setting("TRAIT_LORA_K8S_HF_SECRET_KEY"),
            )
        ],
        "env_vars": [k8s.V1EnvVar(name="HF_HUB_DISABLE_TELEMETRY", value="1")],
        "deferrable": True,
        "do_xcom_push": True,
        "get_logs": True,
        "on_finish_action": "delete_pod",
        "startup_timeout_seconds": 1800,
    }


class TrainingPodOperator(BaseOperator):
    """A ``KubernetesPodOperator`` built when the task runs, not when the DAG file is parsed.

    Importing the Kubernetes provider costs the DAG processor about a second per parse; this operator
    keeps the pod's per-trait values as plain templated fields and builds the real operator in the
    worker. Deferral works unchanged: the pod operator defers with ``method_name="trigger_reentry"``,
    and the task resumes through this class's ``trigger_reentry``, which rebuilds it from the event.
    """

    template_fields: Sequence[str] = ("image", "namespace", "name", "arguments", "labels")
    ui_color = "#d6f5e3"

    def __init__(
        self,
        *,
        name: str | Any,
        arguments: list[str] | Any,
        labels: dict[str, str] | Any,
        image: str | None = None,
        namespace: str | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("map_index_template", "{{ trait_label | default('') }}")
        super().__init__(**kwargs)
        self.name = name
        self.arguments = arguments
        self.labels = labels
        self.image = image or variable_template("trait_lora_trainer_image", "TRAIT_LORA_TRAINER_IMAGE")
        self.namespace = namespace or variable_template(
            "trait_lora_k8s_namespace", "TRAIT_LORA_K8S_NAMESPACE"
        )
        self._pod_op: Any = None

    def pod_operator(self) -> Any:
        from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

        if self._pod_op is None:
            self._pod_op = KubernetesPodOperator(
                task_id=self.task_id,
                name=self.name,
                arguments=list(self.arguments),
                labels=dict(self.labels),
                image=self.image,
                namespace=self.namespace,
                **pod_operator_kwargs(),
            )
        return self._pod_op

    def build_pod_request_obj(self, context: Any = None, *, dry_run: bool = False) -> Any:
        return self.pod_operator().build_pod_request_obj(context, dry_run=dry_run)

    def execute(self, context: Any) -> Any:
        context["trait_label"] = str(dict(self.labels).get("trait", "")).replace("-", "_")
        return self.pod_operator().execute(context)

    def trigger_reentry(self, context: Any, event: dict[str, Any]) -> Any:
        context["trait_label"] = str(dict(self.labels).get("trait", "")).replace("-", "_")
        return self.pod_operator().trigger_reentry(context, event)

    def on_kill(self) -> None:
        if self._pod_op is not None:
            self._pod_op.on_kill()
