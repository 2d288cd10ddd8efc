"""The table of every deployment setting: its type, default, help text, when it is read and its check.

Resolution (which layer wins, legacy names, the CLI without Airflow) is ``trait_lora.settings``; this
module only declares, so the provider's config section, the docs table and the checks share one list.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trait_lora.core.errors import TraitLoraError

SECTION = "trait_lora"
VERSION_ADDED = "0.1.0"


class SettingError(TraitLoraError, ValueError):
    """A deployment setting with a value its parser refuses; the message names where to fix it."""


def _positive(value: float) -> bool:
    return value > 0


def _non_negative(value: float) -> bool:
    return value >= 0


# What the API server accepts (k8s.io/apimachinery): a quantity, a DNS-1123 subdomain (names of
# PVCs, Secrets), and the fields of a toleration in the pod spec's own (camelCase) spelling.
_QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|[KMGTPE]i|[numkMGTPE])?$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
TOLERATION_FIELDS = ("key", "operator", "value", "effect", "tolerationSeconds")


def _quantity(value: str) -> bool:
    return bool(_QUANTITY.match(value))


def _pvc_or_empty(value: str) -> bool:
    return value == "" or (len(value) <= 253 and bool(_SUBDOMAIN.match(value)))


def _tolerations(value: list[Any]) -> bool:
    return all(
        isinstance(t, dict)
        and set(t) <= set(TOLERATION_FIELDS)
        and t.get("operator", "Equal") in ("Equal", "Exists")
        and t.get("effect", "") in ("", "NoSchedule", "PreferNoSchedule", "NoExecute")
        and (t.get("tolerationSeconds") is None or type(t["tolerationSeconds"]) is int)
        for t in value
    )


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


@dataclass(frozen=True)
class Setting:
    """One row of the table. ``kind`` is Airflow's option type; ``json`` values are strings to Airflow."""

    key: str
    kind: str  # string | integer | float | boolean | json
    default: str
    description: str
    allowed: str = "any text"
    check: Callable[[Any], bool] | None = None
    json_type: type | None = None
    example: str | None = None
    empty_is_value: bool = False
    read_at: str = "run"  # run | parse | init: when it takes effect (see READ_AT)

    @property
    def env(self) -> str:
        return f"AIRFLOW__{SECTION.upper()}__{self.key.upper()}"

    @property
    def legacy_env(self) -> str:
        return f"TRAIT_LORA_{self.key.upper()}"

    @property
    def airflow_type(self) -> str:
        return "string" if self.kind == "json" else self.kind

    def parse(self, text: str, source: str) -> Any:
        try:
            value: Any
            if self.kind == "integer":
                value = int(text.strip())
            elif self.kind == "float":
                value = float(text.strip())
            elif self.kind == "boolean":
                value = _parse_bool(text)
            elif self.kind == "json":
                value = json.loads(text)
                if self.json_type is not None and not isinstance(value, self.json_type):
                    raise ValueError(text)
            else:
                value = text.strip()
            if self.check is not None and not self.check(value):
                raise ValueError(text)
        except ValueError:
            shown = text if len(text) <= 80 else text[:77] + "..."
            raise SettingError(
                f"[{SECTION}] {self.key} = {shown!r} (from {source}) is not allowed: it must be "
                f"{self.allowed}. Set it in airflow.cfg [{SECTION}] {self.key}, or with env {self.env}; "
                f"default {self.default!r}"
            ) from None
        return value


def _s(key: str, kind: str, default: str, description: str, **kw: Any) -> Setting:
    return Setting(key=key, kind=kind, default=default, description=description, **kw)


_POSITIVE_INT = {"allowed": "an integer >= 1", "check": _positive}
SETTINGS: tuple[Setting, ...] = (
    _s(
        "shards_dir",
        "string",
        "",
        "Folder of <trait>.jsonl shards: the trigger form's default and the CLI's --shards-dir. "
        "Empty: <project>/include/sample_shards.",
        example="/opt/airflow/include/sample_shards",
        read_at="parse",
    ),
    _s(
        "output_dir",
        "string",
        "",
        "Where adapters, ledgers and hypernetwork_data.json go: the form's default and the CLI's "
        "--output-dir. Must be one filesystem shared by every worker. Empty: <project>/outputs.",
        example="/opt/airflow/outputs",
        read_at="parse",
    ),
    _s(
        "storage_roots",
        "json",
        "[]",
        "Locations a run's conf may name as shards_dir or output_dir (a JSON list of folders or "
        "s3://bucket/prefix URLs); anything outside them, '..' or a symlink leading out is refused when "
        "the run is created. The configured shards_dir and output_dir are always allowed.",
        allowed="a JSON list of strings",
        json_type=list,
        check=lambda v: all(isinstance(t, str) and t.strip() for t in v),
        example='["/opt/airflow/outputs", "s3://aws_default@team-bucket/trait-lora"]',
        read_at="parse",
    ),
    _s(
        "storage_conn_id",
        "string",
        "aws_default",
        "Airflow connection for s3:// locations that name none (s3://conn_id@bucket/... names its own).",
        allowed="a connection id",
        example="trait_lora_s3",
        read_at="parse",  # the form's pattern: a conf may name this connection where a root names none
    ),
    _s(
        "schedule",
        "string",
        "0 3 * * 1",
        "Cron schedule of the training DAGs; 'none' (or empty) = manual runs only. Unpausing a cron DAG "
        "starts its latest missed slot at once (a paid run on Together).",
        example="none",
        empty_is_value=True,
        read_at="parse",
    ),
    _s(
        "together_pool",
        "string",
        "together_api",
        "Airflow pool of the Together launch tasks (paces job submissions; scripts/airflow-init.sh "
        "creates it).",
        allowed="a pool name",
        read_at="parse",
    ),
    _s(
        "together_pool_slots",
        "integer",
        "4",
        "Slots of the Together pool = concurrent job submissions.",
        example="8",
        read_at="init",
        **_POSITIVE_INT,
    ),
    _s(
        "gpu_pool",
        "string",
        "default_pool",
        "Airflow pool of the Kubernetes training pods.",
        allowed="a pool name",
        example="gpu",
        read_at="parse",
    ),
    _s(
        "poll_seconds",
        "float",
        "30",
        "Seconds between polls of a Together file or job (triggerer), and between tries for a slot "
        "under max_jobs_in_flight.",
        allowed="a number > 0",
        check=_positive,
        example="60",
    ),
    _s(
        "file_poll_seconds",
        "float",
        "5",
        "Seconds between polls of an uploaded file Together is still validating (seconds, usually; "
        "never slower than poll_seconds).",
        allowed="a number > 0",
        check=_positive,
        example="10",
    ),
    _s(
        "retry_delay_seconds",
        "float",
        "30",
        "Delay before a failed task of trait_lora_together / trait_lora_local is retried.",
        allowed="a number >= 0",
        check=_non_negative,
        read_at="parse",
    ),
    _s(
        "stagger_seconds",
        "float",
        "2",
        "Random delay (0 to this) before each Together job create, so mapped launches do not arrive at once.",
        allowed="a number >= 0",
        check=_non_negative,
        example="0",
    ),
    _s(
        "max_jobs_in_flight",
        "integer",
        "6",
        "Most Together jobs running at once, counted in the ledger before each create; at the cap a "
        "launch defers on a timer.",
        example="4",
        **_POSITIVE_INT,
    ),
    _s(
        "local_concurrency",
        "integer",
        "0",
        "Traits trained at once by trait_lora_local; 0 = one per visible GPU (each trainer gets its own "
        "GPU), one at a time on a machine without one (training saturates it).",
        allowed="an integer >= 0",
        check=_non_negative,
        read_at="parse",
    ),
    _s(
        "hf_conn_id",
        "string",
        "huggingface_default",
        "Airflow connection to the Hugging Face Hub for a base_model that is a repo id (org/name or "
        "org/name@revision): password = the token (a gated model such as Llama-3.1 needs one whose "
        "account accepted its licence), host = a mirror or proxy endpoint (empty: the Hub). A missing "
        "connection means anonymous downloads.",
        allowed="a connection id",
        example="hf_mirror",
    ),
    _s(
        "model_cache_dir",
        "string",
        "",
        "Folder on each worker where base models from the Hub or s3:// are downloaded once and reused "
        "(Hugging Face's cache layout; several GB per model). Empty: ~/.cache/trait-lora/models.",
        allowed="a folder path, or empty",
        example="/data/trait-lora/models",
    ),
    _s(
        "local_device",
        "string",
        "auto",
        "Where trait_lora_local trains: auto (a CUDA GPU when the machine has one, else the CPU), cuda or "
        "cpu. Precision follows the device: bf16 where the GPU supports it, else fp16; fp32 on the CPU.",
        allowed="auto, cuda or cpu",
        check=lambda v: v in ("auto", "cuda", "cpu"),
    ),
    _s(
        "local_timeout_minutes",
        "float",
        "360",
        "Longest a local train task may run (its execution_timeout); the trainer is stopped with it and "
        "the retry resumes from its last checkpoint. A group's trainer (traits_per_process) gets this "
        "per trait it trains.",
        allowed="a number > 0",
        check=_positive,
        read_at="parse",
    ),
    _s(
        "checkpoint_every_steps",
        "integer",
        "50",
        "The local trainer saves a checkpoint every N optimizer steps in its staging folder, so a retry "
        "(a preempted spot GPU, a timeout) resumes instead of starting over; 0 = never.",
        allowed="an integer >= 0",
        check=_non_negative,
    ),
    _s(
        "together_dashboard_url",
        "string",
        "https://api.together.ai/fine-tuning/{job_id}",
        "Link to a job in Together's console ({job_id} is replaced); overridable because the console "
        "has moved before.",
        allowed="a URL containing {job_id}",
        check=lambda v: "{job_id}" in v,
    ),
    _s(
        "trainer_image",
        "string",
        "ghcr.io/trait-lora/trainer:0.1.0",
        "Trainer image of the Kubernetes pods (the Airflow Variable trait_lora_trainer_image wins).",
    ),
    _s(
        "k8s_namespace",
        "string",
        "airflow",
        "Namespace of the training pods (the Airflow Variable trait_lora_k8s_namespace wins).",
    ),
    _s("k8s_pvc", "string", "trait-lora-data", "PersistentVolumeClaim holding shards and outputs."),
    _s(
        "k8s_mount_path",
        "string",
        "/data",
        "Where the PVC is mounted, in workers and pods alike; shards_dir and output_dir must be under it.",
    ),
    _s(
        "k8s_node_selector",
        "json",
        '{"nvidia.com/gpu.present": "true"}',
        "Node selector of the training pods (a JSON object).",
        allowed="a JSON object",
        json_type=dict,
    ),
    _s(
        "k8s_tolerations",
        "json",
        '[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]',
        "Tolerations of the training pods, as in a pod spec: a JSON list of objects with key, "
        "operator (Equal or Exists), value, effect (NoSchedule, PreferNoSchedule, NoExecute) and "
        "tolerationSeconds.",
        allowed="a JSON list of tolerations with only the fields " + ", ".join(TOLERATION_FIELDS),
        json_type=list,
        check=_tolerations,
    ),
    _s(
        "k8s_gpus",
        "integer",
        "1",
        "GPUs per training pod (nvidia.com/gpu request and limit).",
        allowed="an integer >= 0",
        check=_non_negative,
    ),
    _s(
        "k8s_cpu",
        "string",
        "8",
        "CPU request of a training pod (a Kubernetes quantity).",
        allowed="a Kubernetes quantity such as 8 or 7500m",
        check=_quantity,
    ),
    _s(
        "k8s_memory",
        "string",
        "64Gi",
        "Memory request and limit of a training pod (a Kubernetes quantity).",
        allowed="a Kubernetes quantity such as 64Gi",
        check=_quantity,
    ),
    _s("k8s_hf_secret", "string", "hf-token", "Kubernetes Secret holding the Hugging Face token."),
    _s("k8s_hf_secret_key", "string", "token", "Key of the token in that Secret (mounted as HF_TOKEN)."),
    _s(
        "wandb_project",
        "string",
        "",
        "Weights & Biases project Together logs each fine-tuning job to. Empty: no W&B logging.",
    ),
    _s("wandb_entity", "string", "", "W&B entity (team) of that project. Empty: the key's default entity."),
    _s("wandb_base_url", "string", "", "W&B server URL for a self-hosted W&B. Empty: wandb.ai."),
    _s(
        "wandb_conn_id",
        "string",
        "wandb_default",
        "Airflow connection whose password is the W&B API key (needed when wandb_project is set).",
    ),
    _s(
        "mlflow_tracking_uri",
        "string",
        "",
        "MLflow tracking URI (sqlite:///..., http://host:5000, databricks): each DAG run becomes a "
        "parent MLflow run and each trained trait a child run. Empty: no MLflow logging.",
    ),
    _s(
        "mlflow_log_adapters",
        "boolean",
        "false",
        "Also upload each trained adapter's files to its MLflow run as artifacts.",
        allowed="true or false",
    ),
    _s(
        "mlflow_timeout_seconds",
        "float",
        "10",
        "Longest one MLflow logging step may take; past it, or when the server is down, a warning "
        "names the URI and training goes on.",
        allowed="a number > 0",
        check=_positive,
    ),
    _s(
        "k8s_storage_secret",
        "string",
        "",
        "With s3:// locations (no PVC): Kubernetes Secret whose keys aws_access_key_id and "
        "aws_secret_access_key become the pod's AWS credentials. Empty: the pod's service account.",
    ),
    _s(
        "k8s_service_account",
        "string",
        "",
        "Service account of training pods (e.g. one with an IAM role for the bucket). "
        "Empty: the namespace's default.",
    ),
    _s(
        "k8s_s3_endpoint_url",
        "string",
        "",
        "With s3:// locations: an S3-compatible endpoint for the pod (AWS_ENDPOINT_URL_S3). Empty: AWS.",
    ),
    _s(
        "k8s_gpu_flag",
        "boolean",
        "True",
        "Pass --gpu to the trainer in the pod; false trains on CPU (tests).",
        allowed="true or false (or 1 / 0)",
    ),
    _s(
        "k8s_micro_batch",
        "integer",
        "4",
        "Micro-batch of the trainer in a pod (gradient accumulation makes up the batch size); the "
        "retry of an OOMKilled pod runs with half of it.",
        **_POSITIVE_INT,
    ),
    _s(
        "k8s_conn_id",
        "string",
        "kubernetes_default",
        "Airflow connection (Kubernetes type) to the cluster of the training pods; when "
        "kubernetes_default is not defined, the worker's in-cluster service account or kubeconfig.",
        allowed="a connection id",
    ),
    _s(
        "k8s_max_pods",
        "integer",
        "4",
        "Most training pods of a run at once (max_active_tis_per_dagrun of trait.train_pod); each "
        "holds k8s_gpus GPUs, the other traits wait their turn in Airflow, not as Pending pods.",
        read_at="parse",
        **_POSITIVE_INT,
    ),
    _s(
        "k8s_schedule_timeout_minutes",
        "float",
        "10",
        "How long a training pod may wait for a node (no GPU free, no node matching the selector "
        "or tolerations) before the try fails with the scheduler's message (fractions allowed).",
        allowed="a number > 0",
        check=_positive,
    ),
    _s(
        "k8s_poll_seconds",
        "float",
        "5",
        "How often the triggerer checks a training pod: while it waits for a node and starts (a "
        "missing Secret or image is noticed within this), and while it trains.",
        allowed="a number > 0",
        check=_positive,
    ),
    _s(
        "k8s_retry_delay_seconds",
        "float",
        "120",
        "Delay before a failed training pod of trait_lora_kubernetes is retried (an evicted or "
        "OOM-killed pod, a lost node): time for the node pool to recover or scale up.",
        allowed="a number >= 0",
        check=_non_negative,
        read_at="parse",
    ),
    _s(
        "k8s_startup_timeout_minutes",
        "integer",
        "15",
        "How long a scheduled pod may take to start: mostly pulling the trainer image onto a fresh "
        "node. A missing Secret or an image that cannot be pulled fails at once, not after this.",
        **_POSITIVE_INT,
    ),
    _s(
        "k8s_active_deadline_minutes",
        "integer",
        "720",
        "Longest a training pod may run (activeDeadlineSeconds), per trait it trains (a group's pod, "
        "traits_per_process, trains several): past it Kubernetes stops it (DeadlineExceeded) and frees "
        "the GPU. 0: no limit.",
        allowed="an integer >= 0",
        check=_non_negative,
    ),
    _s(
        "k8s_logging_interval_seconds",
        "integer",
        "120",
        "How often the trainer's log lines reach the task log while the pod runs (each time the "
        "task resumes on a worker for a moment). 0: only once the pod has finished.",
        allowed="an integer >= 0",
        check=_non_negative,
    ),
    _s(
        "k8s_run_as_user",
        "integer",
        "1000",
        "runAsUser of the training pods: the trainer image's user (uid 1000 in Dockerfile.trainer).",
        allowed="an integer >= 0",
        check=_non_negative,
    ),
    _s(
        "k8s_run_as_group",
        "integer",
        "1000",
        "runAsGroup of the training pods.",
        allowed="an integer >= 0",
        check=_non_negative,
    ),
    _s(
        "k8s_fs_group",
        "integer",
        "1000",
        "fsGroup of the training pods: the PVC and the model cache become writable by this group.",
        allowed="an integer >= 0",
        check=_non_negative,
    ),
    _s(
        "k8s_model_cache",
        "string",
        "",
        "Where training pods keep the base model (mounted at /models, HF_HOME): the name of an "
        "existing PersistentVolumeClaim that every pod shares (downloaded once), or empty for an "
        "emptyDir of k8s_model_cache_size per pod (each pod downloads it).",
        allowed="empty, or a PersistentVolumeClaim name (a DNS-1123 subdomain)",
        check=_pvc_or_empty,
        example="trait-lora-models",
    ),
    _s(
        "k8s_model_cache_size",
        "string",
        "40Gi",
        "Size limit of the per-pod emptyDir model cache (when k8s_model_cache is empty): the base "
        "model's download must fit, on the node's disk.",
        allowed="a Kubernetes quantity such as 40Gi",
        check=_quantity,
    ),
)
BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}
READ_AT = {
    "parse": "Read when DAG files are parsed (the scheduler needs it before any task runs)",
    "run": "Read by the task when it runs",
    "init": "Read by scripts/airflow-init.sh (docker compose up airflow-init applies a change)",
}
