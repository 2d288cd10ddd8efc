"""The canonical training config, shared by the Together and local backends.

Every value the Together SDK would otherwise default differently is explicit here (the SDK defaults
to lr 1e-5, all-linear modules, alpha 2r, batch "max", packing on, cosine schedule), so that a job's
hyperparameters are exactly what the config hash claims.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trait_lora.core.errors import ConfigError
from trait_lora.core.hashing import sha256_json

TOGETHER_MODEL = "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"
LOCAL_MODEL = "meta-llama/Meta-Llama-3.1-8B-Instruct"
BACKENDS = ("together", "local")
KNOWN_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SCHEDULERS = ("linear", "cosine")
QUANTIZATIONS = ("4bit",)  # QLoRA: the frozen base in bitsandbytes NF4, LoRA weights in full precision
DEFAULT_EVAL_FRACTION = 0.1  # the local form's default; Together's is 0 (a held-out part costs a retrain)
MAX_EVAL_FRACTION = 0.5
FLOAT_FIELDS = (
    "lora_dropout",
    "learning_rate",
    "warmup_ratio",
    "eval_fraction",
    "max_grad_norm",
    "weight_decay",
    "min_lr_ratio",
    "scheduler_num_cycles",
)

# Hashed fields: changing any of these changes the adapter, so it changes the job key.
HASHED_FIELDS = (
    "backend",
    "base_model",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "n_epochs",
    "batch_size",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_ratio",
    "packing",
    "train_on_inputs",
    "eval_fraction",
    "quantization",
)
# Hashed only when set: a config without a held-out split (or without quantization) keeps the hash (and
# the adapters) it had before the field existed.
HASHED_WHEN_SET = ("eval_fraction", "quantization")
# ``fine_tuning.create`` arguments that change the trained weights and were once left to Together's
# server (seed, accumulation, sequence length) or to the SDK's client defaults (the rest). Each is now
# sent explicitly, and hashed only when it differs from the default here: adapters trained before
# these fields existed keep their job keys (no paid retrain for an upgrade), while any change retrains.
# The local trainer honours the same settings (and hashes them by the same rule), except the ones in
# LOCAL_IGNORED: its micro-batch x accumulation is a memory setting that always makes ``batch_size``.
TOGETHER_ADVANCED = {
    "random_seed": 42,  # the spec: "If omitted or null, the server applies its default seed (e.g. 42)"
    "gradient_accumulation_steps": 1,
    "max_seq_length": 8192,
    "max_grad_norm": 1.0,
    "weight_decay": 0.0,
    "min_lr_ratio": 0.0,
    "scheduler_num_cycles": 0.5,  # cosine only: sent, and hashed, only with lr_scheduler_type cosine
}
LOCAL_IGNORED = ("gradient_accumulation_steps",)


@dataclass(frozen=True)
class TrainingConfig:
    backend: str = "together"
    together_model: str = TOGETHER_MODEL
    local_model: str = LOCAL_MODEL
    lora_r: int = 4
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    n_epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 2e-4
    lr_scheduler_type: str = "linear"
    warmup_ratio: float = 0.0
    packing: bool = False
    train_on_inputs: bool = False
    # Share of each shard held out to evaluate the adapter (trait_lora.core.shards.split); 0 = train on all.
    eval_fraction: float = 0.0
    # Together's advanced settings (TOGETHER_ADVANCED has why and the defaults).
    random_seed: int = 42
    gradient_accumulation_steps: int = 1
    max_seq_length: int = 8192
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    min_lr_ratio: float = 0.0
    scheduler_num_cycles: float = 0.5
    # Local backend only: None trains on the base in its own precision, "4bit" on an NF4-quantized base.
    quantization: str | None = None

    def __post_init__(self) -> None:
        _check(self)

    @property
    def base_model(self) -> str:
        """The model this backend trains on (Together's reference name or a local id/path)."""
        return self.together_model if self.backend == "together" else self.local_model

    def canonical(self) -> dict[str, Any]:
        """The hashed view: stable key order, normalised types (sorted modules, floats as repr)."""
        out: dict[str, Any] = {}
        for name in HASHED_FIELDS:
            value = getattr(self, name)
            if name in HASHED_WHEN_SET and not value:
                continue
            if name == "target_modules":
                value = sorted(value)
            elif name in FLOAT_FIELDS:
                value = repr(float(value))  # 0 and 0.0 from JSON must hash alike: a new hash = a paid retrain
            out[name] = value
        for name, default in TOGETHER_ADVANCED.items():
            if self.backend == "local" and name in LOCAL_IGNORED:
                continue
            value = getattr(self, name)
            if name == "scheduler_num_cycles" and self.lr_scheduler_type != "cosine":
                continue
            if value == default:
                continue
            out[name] = repr(float(value)) if name in FLOAT_FIELDS else value
        return out

    def config_hash(self) -> str:
        return sha256_json(self.canonical())

    def lora_settings(self) -> dict[str, Any]:
        """What the mapping publishes for stage 3."""
        return {
            "r": self.lora_r,
            "alpha": self.lora_alpha,
            "dropout": self.lora_dropout,
            "target_modules": list(self.target_modules),
        }

    def together_create_kwargs(self) -> dict[str, Any]:
        """Every ``fine_tuning.create`` training argument, explicit (see module docstring)."""
        return {
            "model": self.together_model,
            "lora": True,
            "lora_r": self.lora_r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "lora_trainable_modules": ",".join(self.target_modules),
            "n_epochs": self.n_epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "lr_scheduler_type": self.lr_scheduler_type,
            "warmup_ratio": self.warmup_ratio,
            "packing": self.packing,
            "train_on_inputs": self.train_on_inputs,
            "random_seed": self.random_seed,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "max_seq_length": self.max_seq_length,
            "max_grad_norm": self.max_grad_norm,
            "weight_decay": self.weight_decay,
            "min_lr_ratio": self.min_lr_ratio,
            "scheduler_num_cycles": self.scheduler_num_cycles,
            # Not weight-changing, but never left to a default that an SDK upgrade may move.
            "n_checkpoints": 1,
            "training_method": "sft",
            "train_vision": False,
            "early_stopping_enabled": False,
        }

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["target_modules"] = list(self.target_modules)
        return data

    def replace(self, **changes: Any) -> TrainingConfig:
        return from_mapping({**self.to_dict(), **changes})


CONFIG_FIELDS = {f.name: f for f in dataclasses.fields(TrainingConfig)}


def from_mapping(values: Mapping[str, Any] | None, *, source: str = "config") -> TrainingConfig:
    """Build a config from user input (CLI, DAG params, JSON); unknown or bad fields are named."""
    values = dict(values or {})
    unknown = sorted(set(values) - set(CONFIG_FIELDS))
    if unknown:
        raise ConfigError(
            f"{source}: unknown training field(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(CONFIG_FIELDS))}"
        )
    if "target_modules" in values:
        modules = values["target_modules"]
        if isinstance(modules, str):
            modules = [m.strip() for m in modules.split(",") if m.strip()]
        if not isinstance(modules, list | tuple):
            raise ConfigError(f"{source}: target_modules must be a list like ['q_proj', 'v_proj']")
        values["target_modules"] = tuple(modules)
    try:
        return TrainingConfig(**values)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)) and math.isfinite(value)


def _check(cfg: TrainingConfig) -> None:
    def bad(name: str, want: str) -> ConfigError:
        return ConfigError(f"{name} must be {want}, got {getattr(cfg, name)!r}")

    if cfg.backend not in BACKENDS:
        raise bad("backend", f"one of {', '.join(BACKENDS)}")
    for name in ("together_model", "local_model"):
        if not isinstance(getattr(cfg, name), str) or not getattr(cfg, name).strip():
            raise bad(name, "a non-empty model name or path")
    if not _is_int(cfg.lora_r) or not 1 <= cfg.lora_r <= 1024:
        raise bad("lora_r", "a positive integer (1..1024)")
    if not _is_int(cfg.lora_alpha) or not 1 <= cfg.lora_alpha <= 4096:
        raise bad("lora_alpha", "a positive integer (1..4096)")
    if not _is_number(cfg.lora_dropout) or not 0.0 <= cfg.lora_dropout < 1.0:
        raise bad("lora_dropout", "a number in [0, 1)")
    modules = cfg.target_modules
    if not modules or not all(isinstance(m, str) for m in modules):
        raise bad("target_modules", f"a non-empty list from {', '.join(KNOWN_MODULES)}")
    unknown = [m for m in modules if m not in KNOWN_MODULES]
    if unknown:
        raise bad("target_modules", f"modules from {', '.join(KNOWN_MODULES)} (unknown: {unknown})")
    if len(set(modules)) != len(modules):
        raise bad("target_modules", "a list without repeats")
    if not _is_int(cfg.n_epochs) or not 1 <= cfg.n_epochs <= 100:
        raise bad("n_epochs", "an integer in 1..100")
    if not _is_int(cfg.batch_size) or not 1 <= cfg.batch_size <= 4096:
        raise bad("batch_size", "an integer in 1..4096")
    if not _is_number(cfg.learning_rate) or not 0.0 < cfg.learning_rate < 1.0:
        raise bad("learning_rate", "a number in (0, 1)")
    if cfg.lr_scheduler_type not in SCHEDULERS:
        raise bad("lr_scheduler_type", f"one of {', '.join(SCHEDULERS)}")
    if not _is_number(cfg.warmup_ratio) or not 0.0 <= cfg.warmup_ratio < 1.0:
        raise bad("warmup_ratio", "a number in [0, 1)")
    if not _is_number(cfg.eval_fraction) or not 0.0 <= cfg.eval_fraction <= MAX_EVAL_FRACTION:
        raise bad("eval_fraction", f"a number in [0, {MAX_EVAL_FRACTION}] (0 = no held-out split)")
    for name in ("packing", "train_on_inputs"):
        if not isinstance(getattr(cfg, name), bool):
            raise bad(name, "true or false")
    if not _is_int(cfg.random_seed) or not 0 <= cfg.random_seed < 2**31:
        raise bad("random_seed", "an integer in 0..2147483647")
    if not _is_int(cfg.gradient_accumulation_steps) or not 1 <= cfg.gradient_accumulation_steps <= 1024:
        raise bad("gradient_accumulation_steps", "an integer in 1..1024")
    if not _is_int(cfg.max_seq_length) or not 64 <= cfg.max_seq_length <= 1_048_576:
        raise bad("max_seq_length", "an integer in 64..1048576 (Together checks the model's own range)")
    for name in ("max_grad_norm", "weight_decay"):
        if not _is_number(getattr(cfg, name)) or getattr(cfg, name) < 0:
            raise bad(name, "a number >= 0 (max_grad_norm 0 turns clipping off)")
    if not _is_number(cfg.min_lr_ratio) or not 0.0 <= cfg.min_lr_ratio <= 1.0:
        raise bad("min_lr_ratio", "a number in [0, 1]")
    if not _is_number(cfg.scheduler_num_cycles) or cfg.scheduler_num_cycles <= 0:
        raise bad("scheduler_num_cycles", "a number > 0")
    if cfg.quantization is not None and cfg.quantization not in QUANTIZATIONS:
        raise bad("quantization", 'null (train on the base as it is) or "4bit" (QLoRA, local backend only)')
    if cfg.backend == "together" and cfg.quantization is not None:
        raise ConfigError(
            "quantization applies to the local backend only (Together trains its own way); "
            "set quantization to null for backend together"
        )
    if cfg.backend == "local" and cfg.packing:
        raise ConfigError(
            "packing is not supported by the local backend: it trains each example on its own, padded "
            "per micro-batch; set packing to false for backend local"
        )
