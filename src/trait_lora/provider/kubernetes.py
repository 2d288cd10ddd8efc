"""The GPU pod per trait: settings, argv and the ``KubernetesPodOperator`` arguments.

Settings (``[trait_lora] k8s_*`` and ``trainer_image``, see ``trait_lora.settings``) are read in the
worker when the task runs; the image and the namespace read Airflow Variables first, so they can
change without a redeploy.
The trainer's arguments are a list built from validated trait names and paths, never a shell string,
so nothing from a run's conf can reach a shell in the pod.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

from airflow.sdk import BaseOperator

from trait_lora import settings
from trait_lora.core.config import from_mapping
from trait_lora.core.shards.catalog import check_trait_name
from trait_lora.core.storage.location import parse_location
from trait_lora.core.storage.opener import is_url


def variable_template(variable: str) -> str:
    """A template reading the Airflow Variable at run time; empty when unset, so the setting applies
    (``TrainingPodOperator.pod_operator`` reads it in the worker, not at parse)."""
    return "{{ var.value.get('" + variable + "', '') }}"


def under_mount(path: str) -> str:
    """Shards and outputs must live on the PVC, mounted at the same path in workers and pods."""
    mount = PurePosixPath(settings.get_str("k8s_mount_path"))
    resolved = PurePosixPath(path)
    if ".." in resolved.parts or not resolved.is_relative_to(mount):
        raise ValueError(
            f"{path} is not under the pod's data mount {mount}: put shards_dir and output_dir on the "
            "PVC ([trait_lora] k8s_pvc) mounted at [trait_lora] k8s_mount_path in the Airflow workers too"
        )
    return str(resolved)


def _locations(plan: dict[str, Any], trait: str) -> tuple[str, str]:
    """The pod's shard and adapter locations: both on the PVC, or both in the bucket (no PVC).

    On object storage the URLs carry no Airflow connection id (the pod has no Airflow): the pod's
    credentials come from its environment (``pod_operator_kwargs``)."""
    from trait_lora.local.backend import STAGING_DIR  # the same staging folder as the in-process trainer

    staging = f"{STAGING_DIR}/{trait}-{plan['job_key'][:16]}"
    out_remote = is_url(str(plan["output_dir"]))
    shard_remote = bool(plan.get("shard_key"))
    if out_remote != shard_remote:
        raise ValueError(
            "shards_dir and output_dir must both be on object storage (the pod reads and writes the "
            "bucket, no PVC) or both on the PVC; this run mixes them"
        )
    if not out_remote:
        return under_mount(plan["shard_path"]), f"{under_mount(plan['output_dir'])}/{staging}"
    out = parse_location(str(plan["output_dir"])).public_url
    shards = parse_location(str(plan["shard_location"])).public_url
    return f"{shards}/{plan['shard_key']}", f"{out}/{staging}"


def pod_spec(plan: dict[str, Any]) -> dict[str, Any]:
    """Per-trait pod values: argv list, labels, pod name, and where the adapter will appear."""
    trait = check_trait_name(plan["trait"])
    config = from_mapping({**plan["config"], "backend": "local"})
    shard, out = _locations(plan, trait)
    arguments = [
        "--shard",
        shard,
        "--out",
        out,
        "--config-json",
        json.dumps(config.to_dict(), sort_keys=True),
        "--xcom-file",
        settings.get_str("k8s_xcom_file"),
    ]
    if settings.get_bool("k8s_gpu_flag"):
        arguments.append("--gpu")
        arguments += ["--micro-batch", str(settings.get_int("k8s_micro_batch"))]
    return {
        "arguments": arguments,
        "labels": {"app": "trait-lora", "trait": trait.replace("_", "-")},
        "name": f"trait-lora-{trait.replace('_', '-')}"[:63],
        "adapter_dir": out,
    }


def pod_operator_kwargs(object_storage: bool = False) -> dict[str, Any]:
    """Everything but the per-trait values and the templated image/namespace, as pod-operator kwargs.

    Called in the worker (it imports the Kubernetes client), never while a DAG file is parsed.
    ``object_storage``: the pod reads and writes a bucket, so it mounts no PVC; its credentials are
    references to a Secret (``k8s_storage_secret``) or its service account, never values.
    """
    from airflow.providers.cncf.kubernetes.secret import Secret
    from kubernetes.client import models as k8s

    gpus = str(settings.get_int("k8s_gpus"))
    resources = k8s.V1ResourceRequirements(
        limits={"nvidia.com/gpu": gpus, "memory": settings.get_str("k8s_memory")},
        requests={
            "nvidia.com/gpu": gpus,
            "cpu": settings.get_str("k8s_cpu"),
            "memory": settings.get_str("k8s_memory"),
        },
    )
    tolerations = [k8s.V1Toleration(**t) for t in settings.get("k8s_tolerations")]
    mount = settings.get_str("k8s_mount_path")
    secrets = [
        Secret("env", "HF_TOKEN", settings.get_str("k8s_hf_secret"), settings.get_str("k8s_hf_secret_key"))
    ]
    env_vars = [k8s.V1EnvVar(name="HF_HUB_DISABLE_TELEMETRY", value="1")]
    storage: dict[str, Any] = {
        "volumes": [
            k8s.V1Volume(
                name="trait-lora-data",
                persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
                    claim_name=settings.get_str("k8s_pvc")
                ),
            )
        ],
        "volume_mounts": [k8s.V1VolumeMount(name="trait-lora-data", mount_path=mount)],
    }
    if object_storage:
        storage = {}
        secret = settings.get_str("k8s_storage_secret")
        if secret:
            secrets += [
                Secret("env", "AWS_ACCESS_KEY_ID", secret, "aws_access_key_id"),
                Secret("env", "AWS_SECRET_ACCESS_KEY", secret, "aws_secret_access_key"),
            ]
        endpoint = settings.get_str("k8s_s3_endpoint_url")
        if endpoint:
            env_vars.append(k8s.V1EnvVar(name="AWS_ENDPOINT_URL_S3", value=endpoint))
    account = settings.get_str("k8s_service_account")
    if account:
        storage["service_account_name"] = account
    return {
        "cmds": ["python", "-m", "trait_lora.train"],
        "container_resources": resources,
        "node_selector": settings.get("k8s_node_selector"),
        "tolerations": tolerations,
        **storage,
        "secrets": secrets,
        "env_vars": env_vars,
        "deferrable": True,
        "do_xcom_push": True,
        "get_logs": True,
        "on_finish_action": "delete_pod",
        "startup_timeout_seconds": 1800,
    }


def _on_object_storage(arguments: Any) -> bool:
    args = list(arguments)
    return "--out" in args and str(args[args.index("--out") + 1]).startswith("s3://")


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
        self.image = image or variable_template("trait_lora_trainer_image")
        self.namespace = namespace or variable_template("trait_lora_k8s_namespace")
        self._pod_op: Any = None

    def pod_operator(self) -> Any:
        from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

        if self._pod_op is None:
            self._pod_op = KubernetesPodOperator(
                task_id=self.task_id,
                name=self.name,
                arguments=list(self.arguments),
                labels=dict(self.labels),
                image=str(self.image or "").strip() or settings.get_str("trainer_image"),
                namespace=str(self.namespace or "").strip() or settings.get_str("k8s_namespace"),
                **pod_operator_kwargs(object_storage=_on_object_storage(self.arguments)),
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

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """The pod trained on the shard and wrote its adapter to staging (the install task then
        names the installed adapter)."""
        from trait_lora.provider.tracking import lineage

        args = [str(a) for a in self.arguments]

        def value(flag: str) -> list[tuple[str, str]]:
            return [lineage.dataset_id(args[args.index(flag) + 1])] if flag in args[:-1] else []

        trait = str(dict(self.labels).get("trait", "")).replace("-", "_")
        return lineage.operator_lineage(
            value("--shard"), value("--out"), {"trait": trait, "backend": "kubernetes"}
        )

    def on_kill(self) -> None:
        if self._pod_op is not None:
            self._pod_op.on_kill()
