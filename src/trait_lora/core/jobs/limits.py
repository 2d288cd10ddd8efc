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


def limit_problems(
    cfg: TrainingConfig, limits: Mapping[str, Any], *, n_evals: int = 0
) -> tuple[list[str], list[str]]:
    """``(problems, unchecked)``: each parameter of ``cfg`` outside ``limits`` (a model limits answer),
    with its range; and each limit we would check that the answer did not give.

    Together's spec requires only nine fields of this answer (not ``lora_training``, the sequence
    lengths or the checkpoint count), so a missing limit is reported as unchecked, never guessed and
    never a refusal: Together's server still refuses a value out of its range, with its own message.
    """
    model = limits.get("model_name") or cfg.together_model
    problems: list[str] = []
    unchecked: list[str] = []

    def outside(field: str, value: float, low: float | None, high: float | None) -> None:
        if (low is not None and value < low) or (high is not None and value > high):
            lo = "-inf" if low is None else f"{low:g}"
            hi = "inf" if high is None else f"{high:g}"
            problems.append(
                f"{field}={value:g} is outside [{lo}, {hi}], the range Together allows for {model}"
            )

    def bound(*path: str) -> float | None:
        value = _num(limits, *path)
        if value is None:
            unchecked.append(".".join(path))
        return value

    lora = ("lora_training",)
    if not isinstance(limits.get("lora_training"), Mapping):
        unchecked.append("lora_training")
    else:
        outside(
            "batch_size",
            cfg.batch_size,
            bound(*lora, "min_batch_size"),
            bound(*lora, "max_batch_size"),
        )
        outside("lora_r", cfg.lora_r, 1, bound(*lora, "max_rank"))
        modules = limits["lora_training"].get("target_modules")
        if isinstance(modules, list) and modules:
            unknown = [m for m in cfg.target_modules if m not in modules]
            if unknown:
                problems.append(
                    f"target_modules {unknown} are not trainable on {model} (allowed: {', '.join(modules)})"
                )
        else:
            unchecked.append("lora_training.target_modules")
    outside("n_epochs", cfg.n_epochs, 1, bound("max_num_epochs"))
    outside(
        "learning_rate",
        cfg.learning_rate,
        bound("min_learning_rate"),
        bound("max_learning_rate"),
    )
    if n_evals:
        outside("n_evals", n_evals, 0, bound("max_num_evals"))
    outside(
        "max_seq_length",
        cfg.max_seq_length,
        bound("min_max_seq_length"),
        bound("max_seq_length_sft"),
    )
    return problems, unchecked


def require_within_limits(
    cfg: TrainingConfig, limits: Mapping[str, Any], *, trait: str, n_evals: int = 0
) -> list[str]:
    """Raise ConfigError listing every out-of-limit parameter (nothing was sent to Together yet);
    return the limits the answer did not give, for the caller to log."""
    problems, unchecked = limit_problems(cfg, limits, n_evals=n_evals)
    if problems:
        raise ConfigError(
            f"{trait}: the training parameters exceed the model's limits, so no job was created: "
            + "; ".join(problems)
            + ". Change the run's parameters (or pick another base_model) and trigger again"
        )
    return unchecked
