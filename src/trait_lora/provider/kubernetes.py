"""The GPU pod per trait: its per-trait values (argv, name, labels) and what the settings put around it.

Both halves are plain functions, so the pod operator (``pod_operator.TrainingPodOperator``), the
``trait-lora k8s-pod`` command and the tests build the same pod. Settings (``[trait_lora] k8s_*`` and
``trainer_image``, see ``trait_lora.settings``) are read in the worker when the pod is built.
The trainer's arguments are a list built from validated trait names and paths, never a shell string,
so nothing from a run's conf can reach a shell in the pod. Names and labels are cut to what the API
server accepts (63 characters, DNS-1123) with a hash, so two long traits never share one; the full
trait name travels in an annotation.

This module imports the Kubernetes client only inside ``pod_settings``, so the pod's values can be
built and checked without it; the operator is ``pod_operator.TrainingPodOperator``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import PurePosixPath
from typing import Any

from trait_lora import settings
from trait_lora.core.config import from_mapping
from trait_lora.core.shards.catalog import check_trait_name
from trait_lora.core.storage.location import parse_location
from trait_lora.core.storage.opener import is_url

LABEL_MAX = 63  # label values and pod names (the provider appends "-" + 8 random characters)
NAME_MAX = LABEL_MAX - 9
TRAIT_ANNOTATION = "trait-lora/trait"
GROUP_ANNOTATION = "trait-lora/traits"  # a group pod's traits, comma-separated
MODEL_CACHE_MOUNT = "/models"
DATA_VOLUME = "trait-lora-data"
CACHE_VOLUME = "model-cache"
MICRO_BATCH_FLAG = "--micro-batch"
# The operator's (training_pod.TrainingPod and pod_operator.TrainingPodOperator alike): its colour, its
# label in a mapped group (the trait from the pod's annotation; a group pod names its own), and what no
# task chooses (the trainer writes result.json beside its adapter: no xcom sidecar, no pods/exec).
UI_COLOR = "#d6f5e3"
MAP_INDEX_TEMPLATE = "{{ task.annotations.get('" + TRAIT_ANNOTATION + "', '') }}"
BASE_FIXED = {"do_xcom_push": False}
# What TrainingPodOperator sets itself: a DAG passing one is refused when the file is parsed
OPERATOR_FIXED = ("cmds", "deferrable", "get_logs", "on_finish_action", "log_events_on_failure")
OPERATOR_FIXED += ("log_pod_spec_on_failure", "termination_message_policy", *BASE_FIXED)


def shortened(text: str, limit: int) -> str:
    """``text`` when it fits ``limit``, else its head and a hash of the whole (so two long names that
    share a head still differ), ending in an alphanumeric as label values and DNS names must."""
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return f"{text[: limit - len(digest) - 1].rstrip('-_.')}-{digest}"


def trait_label(trait: str) -> str:
    return shortened(trait.replace("_", "-"), LABEL_MAX)


def pod_name(trait: str) -> str:
    """A DNS-1123 name that stays within 63 characters once the provider adds its random suffix."""
    return shortened(f"trait-lora-{trait.replace('_', '-')}", NAME_MAX)


def variable_template(variable: str, default: str) -> str:
    """The Airflow Variable at render time, else ``default`` (the setting): an empty Variable counts as
    unset, so clearing it brings the setting back without a redeploy."""
    return "{{ var.value.get('" + variable + "', '') or " + json.dumps(default) + " }}"


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


def staging_name(plan: dict[str, Any]) -> str:
    """The pod's folder under ``<output>/.staging-train``: one per trait and job key, chosen here."""
    return f"{check_trait_name(plan['trait'])}-{plan['job_key'][:16]}"


def locations(plan: dict[str, Any]) -> tuple[str, str]:
    """The pod's shard and adapter locations: both on the PVC, or both in the bucket (no PVC).

    On object storage the URLs carry no Airflow connection id (the pod has no Airflow): the pod's
    credentials come from its environment (``pod_settings``)."""
    from trait_lora.local.backend import STAGING_DIR  # the same staging folder as the in-process trainer

    staging = f"{STAGING_DIR}/{staging_name(plan)}"
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
    """Per-trait pod values: argv list, name, labels, the full trait as an annotation, and where the
    trainer writes its adapter and ``result.json`` (the install task reads them there)."""
    trait = check_trait_name(plan["trait"])
    config = from_mapping({**plan["config"], "backend": "local"})
    shard, out = locations(plan)
    arguments = [
        "--shard",
        shard,
        "--out",
        out,
        "--config-json",
        json.dumps(config.to_dict(), sort_keys=True),
        *_how_to_train(plan),
    ]
    return {
        "arguments": arguments,
        "labels": {"app": "trait-lora", "trait": trait_label(trait)},
        "annotations": {TRAIT_ANNOTATION: trait},
        "name": pod_name(trait),
        "adapter_dir": out,
        # where the operator records why a try failed (runs.record_failure), as install does
        "run_record": {"traits": [trait], "output_dir": str(plan["output_dir"])},
    }


def group_pod_spec(plans: list[dict[str, Any]], run_id: str) -> dict[str, Any]:
    """One pod for a group of traits (``traits_per_process``): the trainer's ``--group`` manifest,
    given whole in its argv, trains each trait into the folder (or prefix) its own pod would use, with
    its record beside it, so each trait's ``install`` reads it as it reads its own pod's. Labelled by
    the group (its traits in an annotation). Its ``run_record`` names every trait: why a try failed is
    recorded for each (until its own pod or install says otherwise), so that after an OOMKilled group
    pod both the group's retry and each trait's own pod run with half the micro-batch."""
    traits = [check_trait_name(p["trait"]) for p in plans]
    members = []
    for plan in plans:
        shard, out = locations(plan)
        config = from_mapping({**plan["config"], "backend": "local"}).to_dict()
        members.append({"trait": plan["trait"], "shard": shard, "out": out, "config": config})
    manifest = {"config": members[0]["config"], "run_id": run_id, "members": members}
    name = f"group-{traits[0]}-{len(traits)}"
    return {
        "arguments": ["--group", json.dumps(manifest, sort_keys=True), *_how_to_train(plans[0])],
        "labels": {"app": "trait-lora", "group": trait_label(name)},
        "annotations": {GROUP_ANNOTATION: ",".join(traits)},
        "name": pod_name(name),
        "label": f"{traits[0]} +{len(traits) - 1}",
        "run_record": {"traits": traits, "output_dir": str(plans[0]["output_dir"])},
    }


# What a pod spec (pod_spec, group_pod_spec) hands its pod operator, as the operator's arguments
SPEC_ARGUMENTS = ("name", "arguments", "labels", "annotations", "run_record")


def operator_arguments(spec: Any) -> dict[str, Any]:
    """The pod operator's per-pod arguments from a spec: a dict, or the ``pod_spec`` task's output
    (an XComArg, whose items the operator renders when its task runs)."""
    return {key: spec[key] for key in SPEC_ARGUMENTS}


def _how_to_train(plan: dict[str, Any]) -> list[str]:
    """The argv a trait's pod and a group's pod share: the run's pinned model, checkpoints, GPU, batch."""
    arguments: list[str] = []
    if plan.get("base_model_pin"):  # the pod fetches exactly the run's pin into its cache volume
        arguments += ["--model-pin", json.dumps(plan["base_model_pin"], sort_keys=True)]
        arguments += ["--model-cache", f"{MODEL_CACHE_MOUNT}/hub"]
    if every := settings.get_int("checkpoint_every_steps"):  # a replacement pod resumes, not restarts
        arguments += ["--checkpoint-every", str(every)]
    if settings.get_bool("k8s_gpu_flag"):
        arguments.append("--gpu")
    # always explicit: a retry after an OOMKilled pod halves it (pod_operator.TrainingPodOperator)
    arguments += [MICRO_BATCH_FLAG, str(settings.get_int("k8s_micro_batch"))]
    return arguments


def argument(arguments: Any, flag: str) -> str | None:
    """The value after ``flag`` in the pod's argv, or None."""
    args = [str(a) for a in arguments or []]
    return args[args.index(flag) + 1] if flag in args[:-1] else None


def pod_config_and_out(arguments: Any) -> tuple[dict[str, Any], str]:
    """The training config and (first) adapter location in a pod's argv: one trait's, or a group's."""
    group = argument(arguments, "--group")
    if group:
        manifest = json.loads(group)
        return manifest.get("config") or {}, str((manifest.get("members") or [{}])[0].get("out") or "")
    return json.loads(argument(arguments, "--config-json") or "{}"), str(argument(arguments, "--out") or "")


def traits_in(arguments: Any) -> int:
    """How many traits a pod's argv trains: a group's members, else one."""
    group = argument(arguments, "--group")
    return max(1, len(json.loads(group).get("members") or [])) if group else 1


def is_hub_model(arguments: Any) -> bool:
    """Whether the pod downloads its base model from the Hub (and so needs the token Secret): a repo
    id, not a path inside the image or on a volume, not an ``s3://`` folder."""
    from trait_lora.models import ModelKind, parse_model_ref

    config = pod_config_and_out(arguments)[0]
    model = str(config.get("local_model") or "")
    return bool(model) and parse_model_ref(model).kind is ModelKind.HUB


def tolerations(values: list[dict[str, Any]]) -> list[Any]:
    """``k8s_tolerations`` as written in a pod spec (camelCase) -> the client's ``V1Toleration``."""
    from kubernetes.client import models as k8s

    snake = {"tolerationSeconds": "toleration_seconds"}
    return [k8s.V1Toleration(**{snake.get(k, k): v for k, v in t.items()}) for t in values]


def pod_settings(arguments: Any) -> dict[str, Any]:
    """The pod-operator attributes that come from the settings, for this pod's argv.

    Called in the worker when the pod is built (it imports the Kubernetes client), never while a DAG
    file is parsed. A pod on object storage mounts no PVC; its credentials are references to a Secret
    (``k8s_storage_secret``) or its service account, never values. The Hub token Secret is mounted only
    when the base model comes from the Hub, so a pod on a local or S3 model needs no such Secret.
    """
    from airflow.providers.cncf.kubernetes.secret import Secret
    from kubernetes.client import models as k8s

    object_storage = pod_config_and_out(arguments)[1].startswith("s3://")
    gpus = str(settings.get_int("k8s_gpus"))
    cache_pvc = settings.get_str("k8s_model_cache")
    requests = {
        "nvidia.com/gpu": gpus,
        "cpu": settings.get_str("k8s_cpu"),
        "memory": settings.get_str("k8s_memory"),
    }
    if not cache_pvc:  # the emptyDir lives on the node's disk: schedule where the model fits
        requests["ephemeral-storage"] = settings.get_str("k8s_model_cache_size")
    resources = k8s.V1ResourceRequirements(
        limits={"nvidia.com/gpu": gpus, "memory": settings.get_str("k8s_memory")}, requests=requests
    )
    cache = (
        k8s.V1Volume(
            name=CACHE_VOLUME,
            persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(claim_name=cache_pvc),
        )
        if cache_pvc
        else k8s.V1Volume(
            name=CACHE_VOLUME,
            empty_dir=k8s.V1EmptyDirVolumeSource(size_limit=settings.get_str("k8s_model_cache_size")),
        )
    )
    volumes = [cache]
    mounts = [k8s.V1VolumeMount(name=CACHE_VOLUME, mount_path=MODEL_CACHE_MOUNT)]
    env = {
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HOME": MODEL_CACHE_MOUNT,
        "HF_HUB_CACHE": f"{MODEL_CACHE_MOUNT}/hub",
    }
    secrets: list[Any] = []
    if is_hub_model(arguments):
        from trait_lora.provider.models import hub_credentials

        endpoint = hub_credentials()[1]  # a mirror's address only: the token stays in the worker
        if endpoint:
            env["HF_ENDPOINT"] = endpoint
        secrets.append(
            Secret(
                "env", "HF_TOKEN", settings.get_str("k8s_hf_secret"), settings.get_str("k8s_hf_secret_key")
            )
        )
    if object_storage:
        secret = settings.get_str("k8s_storage_secret")
        if secret:
            secrets += [
                Secret("env", "AWS_ACCESS_KEY_ID", secret, "aws_access_key_id"),
                Secret("env", "AWS_SECRET_ACCESS_KEY", secret, "aws_secret_access_key"),
            ]
        if endpoint := settings.get_str("k8s_s3_endpoint_url"):
            env["AWS_ENDPOINT_URL_S3"] = endpoint
    else:
        claim = k8s.V1PersistentVolumeClaimVolumeSource(claim_name=settings.get_str("k8s_pvc"))
        volumes.insert(0, k8s.V1Volume(name=DATA_VOLUME, persistent_volume_claim=claim))
        mounts.insert(0, k8s.V1VolumeMount(name=DATA_VOLUME, mount_path=settings.get_str("k8s_mount_path")))
    uid = settings.get_int("k8s_run_as_user")
    # a group's pod trains its traits one after the other: the deadline is per trait
    deadline = settings.get_int("k8s_active_deadline_minutes") * 60 * traits_in(arguments)
    return {
        "container_resources": resources,
        "node_selector": settings.get("k8s_node_selector"),
        "tolerations": tolerations(settings.get("k8s_tolerations")),
        "volumes": volumes,
        "volume_mounts": mounts,
        "env_vars": [k8s.V1EnvVar(name=k, value=v) for k, v in env.items()],
        "secrets": secrets,
        "service_account_name": settings.get_str("k8s_service_account") or None,
        "active_deadline_seconds": deadline or None,
        # the image's user; fsGroup makes the volumes writable for it (OnRootMismatch: a large model
        # cache is not re-chowned at every pod start); nothing a "restricted" namespace would refuse
        "security_context": k8s.V1PodSecurityContext(
            run_as_user=uid,
            run_as_group=settings.get_int("k8s_run_as_group"),
            fs_group=settings.get_int("k8s_fs_group"),
            fs_group_change_policy="OnRootMismatch",
            run_as_non_root=uid != 0,
            seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
        ),
        "container_security_context": k8s.V1SecurityContext(
            allow_privilege_escalation=False, capabilities=k8s.V1Capabilities(drop=["ALL"])
        ),
    }


def operator_settings() -> dict[str, Any]:
    """The pod operator's own behaviour from the settings: where the cluster is, how long a pod may
    wait for a node and to start, how often its logs are fetched. Plain values, read wherever the DAG
    file is parsed (a worker re-parses it for each task, so a change applies to the next try)."""
    interval = settings.get_int("k8s_logging_interval_seconds")
    poll = settings.get_float("k8s_poll_seconds")
    return {
        "kubernetes_conn_id": settings.get_str("k8s_conn_id"),
        "schedule_timeout_seconds": settings.get_float("k8s_schedule_timeout_minutes") * 60,
        "startup_timeout_seconds": settings.get_int("k8s_startup_timeout_minutes") * 60,
        "logging_interval": interval or None,
        "poll_interval": poll,
        "startup_check_interval_seconds": poll,
    }


def advice_settings() -> dict[str, Any]:
    """The settings a failure's advice names, with their values (``pod_failure.diagnose``)."""
    return {
        key: settings.get(key)
        for key in ("k8s_memory", "k8s_schedule_timeout_minutes", "k8s_active_deadline_minutes")
    }
