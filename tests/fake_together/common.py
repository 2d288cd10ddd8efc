"""What the fake knows of Together: statuses, stages, event types, job shapes, model limits."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

TERMINAL_STATUSES = frozenset({"completed", "cancelled", "error", "user_error"})
OUTCOME_STATUSES = ("error", "user_error", "cancelled", "completed")
DOWNLOAD_KINDS = (
    "good",
    "minimal",
    "truncated",
    "hostile-traversal",
    "hostile-symlink",
    "hostile-pickle",
    "wrong-rank",
    "garbage",
)
FILE_PURPOSES = ("fine-tune", "calibration", "eval", "batch-api")
FILE_TYPES = ("jsonl", "parquet", "csv")
# The happy path, in order; a job never moves backwards along it.
STAGES = ("pending", "queued", "running", "compressing", "uploading", "completed")
# Events Together logs on entering each stage (types from the SDK's FinetuneEventType Literal).
STAGE_EVENTS: dict[str, tuple[tuple[str, str], ...]] = {
    "pending": (("job_pending", "Fine-tuning request created"),),
    "queued": (("job_pending", "Fine-tuning job queued"),),
    "running": (
        ("job_start", "Fine-tuning job started"),
        ("model_downloading", "Downloading base model"),
        ("model_download_complete", "Base model downloaded"),
        ("training_data_downloading", "Downloading training data"),
        ("training_data_download_complete", "Training data downloaded"),
        ("training_start", "Training started"),
    ),
    "compressing": (
        ("training_complete", "Training completed"),
        ("model_compressing", "Compressing output model"),
    ),
    "uploading": (
        ("model_compression_complete", "Output model compressed"),
        ("model_uploading", "Uploading output model"),
    ),
    "completed": (
        ("model_upload_complete", "Output model uploaded"),
        ("job_complete", "Fine-tuning job completed"),
    ),
}
DEFAULT_MODEL = "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"
LLAMA_8B_PARAM_COUNT = 8_030_261_248
NANODOLLARS_PER_DOLLAR = 1_000_000_000
ZSTD_CONTENT_TYPE = "application/zstd"
MAX_BODY = 256 * 1024 * 1024
# Keys of a stored job that never go on the wire.
PRIVATE_JOB_KEYS = frozenset({"request"})
# The "truncated" job shape Together returns from create, list and cancel (the SDK's
# FineTuningListResponse.Data fields); retrieve returns everything, events included.
TRUNCATED_JOB_KEYS = frozenset(
    {
        "id", "created_at", "status", "updated_at", "user_id", "batch_size", "from_checkpoint",
        "from_hf_model", "hf_model_revision", "learning_rate", "lr_scheduler", "max_grad_norm",
        "max_seq_length", "model", "model_output_name", "adapter_output_name", "n_checkpoints", "n_epochs",
        "n_evals", "owner_address", "packing", "progress", "random_seed", "started_at", "suffix",
        "token_count", "total_price", "training_file", "training_method", "training_type",
        "validation_file", "wandb_name", "wandb_entity", "wandb_project_name", "warmup_ratio",
        "weight_decay",
    }
)  # fmt: skip


def _now() -> str:
    """ISO 8601 UTC with a ``Z``, the form Together uses and pydantic parses into ``datetime``."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _is_int(value: object) -> bool:
    """JSON integers only: ``True`` is an ``int`` in Python but a boolean on the wire."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (isinstance(value, int | float)) and not isinstance(value, bool)


def default_model_limits(model_name: str) -> dict[str, Any]:
    """A ``FinetuneModelLimits`` body for a Llama-3.1-8B-class model (every required field present)."""
    return {
        "model_name": model_name,
        "default_gradient_accumulation_steps": 1,
        "lora_training": {
            "default_rank": 64,
            "max_rank": 64,
            "min_batch_size": 8,
            "max_batch_size": 128,
            "max_batch_size_dpo": 64,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        },
        "full_training": {"min_batch_size": 8, "max_batch_size": 96, "max_batch_size_dpo": 48},
        "min_learning_rate": 1e-8,
        "max_learning_rate": 1.0,
        "max_num_checkpoints": 10,
        "max_num_epochs": 20,
        "max_num_evals": 100,
        "max_seq_length_sft": 8192,
        "max_seq_length_dpo": 8192,
        "min_max_seq_length": 512,
        "merge_output_lora": True,
        "supports_full_training": True,
        "supports_reasoning": False,
        "supports_tools": True,
        "supports_vision": False,
    }
