"""Hyperparameters checked against the model's fine-tuning limits before anything is paid for.

Together publishes per-model limits (``GET /v1/fine-tunes/models/limits``: batch size range, max LoRA
rank, epochs, learning-rate range). Checking them here, before the cost gate and the create, turns a
400 from Together (or a bare ``ValueError`` from the SDK, which a retry would only repeat) into one
message that names the run parameter and the range the model allows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trait_lora.core.config import TrainingConfig
from trait_lora.core.errors import ConfigError


def _num(limits: Mapping[str, Any], *path: str) -> float | None:
    value: Any = limits
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def limit_problems(cfg: TrainingConfig, limits: Mapping[str, Any]) -> list[str]:
    """Each parameter of ``cfg`` outside ``limits`` (a FinetuneModelLimits body), with its range."""
    model = limits.get("model_name") or cfg.together_model
    problems: list[str] = []

    def outside(field: str, value: float, low: float | None, high: float | None) -> None:
        if (low is not None and value < low) or (high is not None and value > high):
            lo = "-inf" if low is None else f"{low:g}"
            hi = "inf" if high is None else f"{high:g}"
            problems.append(
                f"{field}={value:g} is outside [{lo}, {hi}], the range Together allows for {model}"
            )

    lora = ("lora_training",)
    if limits.get("lora_training") is None:
        problems.append(f"{model} does not support LoRA fine-tuning on Together (no lora_training limits)")
    else:
        outside(
            "batch_size",
            cfg.batch_size,
            _num(limits, *lora, "min_batch_size"),
            _num(limits, *lora, "max_batch_size"),
        )
        outside("lora_r", cfg.lora_r, 1, _num(limits, *lora, "max_rank"))
        modules = limits["lora_training"].get("target_modules")
        if isinstance(modules, list) and modules:
            unknown = [m for m in cfg.target_modules if m not in modules]
            if unknown:
                problems.append(
                    f"target_modules {unknown} are not trainable on {model} (allowed: {', '.join(modules)})"
                )
    outside("n_epochs", cfg.n_epochs, 1, _num(limits, "max_num_epochs"))
    outside(
        "learning_rate",
        cfg.learning_rate,
        _num(limits, "min_learning_rate"),
        _num(limits, "max_learning_rate"),
    )
    return problems


def require_within_limits(cfg: TrainingConfig, limits: Mapping[str, Any], *, trait: str) -> None:
    """Raise ConfigError listing every out-of-limit parameter; nothing was sent to Together yet."""
    problems = limit_problems(cfg, limits)
    if problems:
        raise ConfigError(
            f"{trait}: the training parameters exceed the model's limits, so no job was created: "
            + "; ".join(problems)
            + ". Change the run's parameters (or pick another base_model) and trigger again"
        )
