"""The trigger form: DAG params with the seed's defaults and the ranges the core enforces.

Bad conf is refused when the run is created (Airflow validates params against these schemas), so an
unknown trait, a name with ``/`` or ``..``, or a learning rate of 3 never starts a run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from airflow.sdk import Param

from trait_lora.core.config import (
    CONFIG_FIELDS,
    KNOWN_MODULES,
    LOCAL_MODEL,
    SCHEDULERS,
    TOGETHER_MODEL,
    TrainingConfig,
)
from trait_lora.core.shards import TRAIT_PATTERN, discover_shards

SHARDS_ENV, OUTPUT_ENV = "TRAIT_LORA_SHARDS_DIR", "TRAIT_LORA_OUTPUT_DIR"
SCHEDULE_ENV, DEFAULT_SCHEDULE = "TRAIT_LORA_SCHEDULE", "0 3 * * 1"


def schedule_from_env() -> str | None:
    """The DAGs' schedule: ``TRAIT_LORA_SCHEDULE`` (a cron string), weekly by default.

    ``none`` (or empty) means manual runs only. It matters at unpause: with ``catchup=False`` a cron DAG
    still starts its most recent missed slot at once, so unpausing a weekly DAG to trigger it by hand
    would first start a scheduled run of every shard.
    """
    value = os.environ.get(SCHEDULE_ENV, DEFAULT_SCHEDULE).strip()
    return None if value.lower() in ("", "none", "null") else value


def default_dirs(project_dir: Path) -> tuple[Path, Path]:
    """As in the CLI: the env vars, else the project's ``include/sample_shards`` and ``outputs/``."""
    shards = Path(os.environ.get(SHARDS_ENV) or project_dir / "include" / "sample_shards")
    output = Path(os.environ.get(OUTPUT_ENV) or project_dir / "outputs")
    return shards.resolve(), output.resolve()


def available_traits(shards_dir: Path) -> list[str]:
    """The form's options: a directory listing (cheap enough for every DAG parse)."""
    try:
        return sorted(discover_shards(shards_dir).shards)
    except FileNotFoundError:
        return []


def build_params(project_dir: Path, backend: str) -> dict[str, Param]:
    shards_dir, output_dir = default_dirs(project_dir)
    traits = available_traits(shards_dir)
    defaults = TrainingConfig()
    item: dict[str, Any] = {"type": "string", "pattern": TRAIT_PATTERN}
    if traits:
        item["enum"] = traits
    params: dict[str, Param] = {
        "traits": Param(
            [],
            type="array",
            items=item,
            uniqueItems=True,
            examples=traits,
            title="Traits",
            description="Traits to train; empty = every shard found in shards_dir.",
        ),
        "force_retrain": Param(
            False, type="boolean", title="Force retrain", description="Retrain even unchanged shards."
        ),
        "dry_run": Param(
            False, type="boolean", title="Dry run", description="Plan only: no upload, no job, no training."
        ),
        "shards_dir": Param(str(shards_dir), type="string", minLength=1, title="Shards directory"),
        "output_dir": Param(str(output_dir), type="string", minLength=1, title="Output directory"),
        "base_model": Param(
            TOGETHER_MODEL if backend == "together" else LOCAL_MODEL,
            type="string",
            minLength=1,
            title="Base model",
            description="Together model name, or a local model id / path for the local backend.",
        ),
        "lora_r": Param(defaults.lora_r, type="integer", minimum=1, maximum=1024, title="LoRA rank"),
        "lora_alpha": Param(defaults.lora_alpha, type="integer", minimum=1, maximum=4096, title="LoRA alpha"),
        "lora_dropout": Param(
            defaults.lora_dropout, type="number", minimum=0, exclusiveMaximum=1, title="LoRA dropout"
        ),
        "target_modules": Param(
            list(defaults.target_modules),
            type="array",
            items={"type": "string", "enum": list(KNOWN_MODULES)},
            minItems=1,
            uniqueItems=True,
            examples=list(KNOWN_MODULES),
            title="Target modules",
        ),
        "n_epochs": Param(defaults.n_epochs, type="integer", minimum=1, maximum=100, title="Epochs"),
        "batch_size": Param(defaults.batch_size, type="integer", minimum=1, maximum=4096, title="Batch size"),
        "learning_rate": Param(
            defaults.learning_rate,
            type="number",
            exclusiveMinimum=0,
            exclusiveMaximum=1,
            title="Learning rate",
        ),
        "lr_scheduler_type": Param(defaults.lr_scheduler_type, type="string", enum=list(SCHEDULERS)),
        "warmup_ratio": Param(defaults.warmup_ratio, type="number", minimum=0, exclusiveMaximum=1),
    }
    if backend == "together":
        params["max_job_price_usd"] = Param(
            None,
            type=["null", "number"],
            minimum=0,
            title="Per-job budget (USD)",
            description="Refuse to launch a job Together estimates above this. Empty = no limit.",
        )
        params["max_run_price_usd"] = Param(
            None,
            type=["null", "number"],
            minimum=0,
            title="Per-run budget (USD)",
            description="Refuse launches once this run's estimated total would pass this. Empty = no limit.",
        )
    return params


def config_values(params: dict[str, Any], backend: str) -> dict[str, Any]:
    """The training-config fields from a run's params (the model goes to the backend's field)."""
    values = {name: value for name, value in params.items() if name in CONFIG_FIELDS}
    values["backend"] = backend
    if params.get("base_model"):
        values["together_model" if backend == "together" else "local_model"] = params["base_model"]
    return values
