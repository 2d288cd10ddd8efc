"""Held-out figures for one adapter: did it learn its trait, and does it prefer its own pole?

Losses are means over the labelled (assistant) tokens of the held-out examples, exactly the tokens the
training loss counts, so base and adapter figures compare like with like. The base model's figure is
the same network with the adapter switched off (``disable_adapter``), not a second model in memory.
For a ``_plus``/``_minus`` pair the trainer also scores the opposite pole's held-out examples: an adapter
that learned its trait (not just the shared chat format) lowers its own pole's loss more than the other's.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from trait_lora.core.shards.catalog import opposite_trait
from trait_lora.core.shards.split import split_examples
from trait_lora.core.shards.validation import iter_examples, require_valid
from trait_lora.train.data import DynamicPaddingCollator, Encoded, encode_records
from trait_lora.train.loss import label_loss_sum


def mean_label_loss(
    model: Any, examples: Sequence[Encoded], pad_token_id: int, micro: int, autocast: Any = None
) -> float | None:
    """Mean next-token loss over the labelled tokens of ``examples``; None when there are none.

    Through the trainer's chunked loss, so evaluating an 8B model never holds a batch's logits either.
    """
    if not examples:
        return None
    collator = DynamicPaddingCollator(pad_token_id)  # its own: eval tokens must not count as training speed
    device = next(model.parameters()).device
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast() if autocast else contextlib.nullcontext():
            for start in range(0, len(examples), micro):
                batch = {
                    k: v.to(device)
                    for k, v in collator([e.as_feature() for e in examples[start : start + micro]]).items()
                }
                summed, n = label_loss_sum(
                    model, batch["input_ids"], batch["attention_mask"], batch["labels"]
                )
                total += float(summed)
                count += n
    finally:
        model.train(was_training)
    return total / count if count else None


def base_and_adapter_loss(
    model: Any,
    examples: Sequence[Encoded],
    pad_token_id: int,
    micro: int,
    autocast: Any = None,
    base_losses: dict[Any, float | None] | None = None,
) -> tuple[float | None, float | None]:
    """``base_losses`` remembers the base's figure per example set and micro-batch: a group trains
    many adapters on one base, and a pole's held-out set is also its opposite's yardstick."""
    adapter = mean_label_loss(model, examples, pad_token_id, micro, autocast)
    key = (micro, pad_token_id, tuple((tuple(e.input_ids), tuple(e.labels)) for e in examples))
    if base_losses is not None and key in base_losses:
        return base_losses[key], adapter
    with model.disable_adapter():
        base = mean_label_loss(model, examples, pad_token_id, micro, autocast)
    if base_losses is not None:
        base_losses[key] = base
    return base, adapter


def opposite_held_out(
    shard: Path, tokenizer: Any, fmt: str, fraction: float, *, train_on_inputs: bool, max_length: int
) -> tuple[str | None, list[Encoded]]:
    """The opposite pole's held-out examples (same split rule), or none when that shard is absent/bad."""
    name = opposite_trait(shard.stem)
    other = shard.with_name(f"{name}{shard.suffix}")
    if not other.is_file():
        return None, []
    try:
        report = require_valid(other)
    except Exception:  # the opposite shard is only a yardstick: a bad one loses the figure, not the adapter
        return None, []
    if (report.format or "text") != fmt:
        return None, []
    records = list(iter_examples(other))
    split = split_examples(records, fraction)
    held, _ = encode_records(
        tokenizer,
        [records[i] for i in split.held_out],
        fmt,
        train_on_inputs=train_on_inputs,
        max_length=max_length,
    )
    return name, held


def eval_figures(
    model: Any,
    held_out: Sequence[Encoded],
    *,
    pad_token_id: int,
    micro: int,
    opposite: tuple[str | None, Sequence[Encoded]] = (None, ()),
    autocast: Any = None,
    base_losses: dict[Any, float | None] | None = None,
) -> dict[str, Any] | None:
    """What goes to ``metrics/<trait>.json`` as ``eval`` (None when the shard had no held-out split)."""
    if not held_out:
        return None
    base, adapter = base_and_adapter_loss(model, held_out, pad_token_id, micro, autocast, base_losses)
    figures: dict[str, Any] = {
        "n_held_out": len(held_out),
        "base_loss": base,
        "adapter_loss": adapter,
        "improvement": base - adapter if base is not None and adapter is not None else None,
    }
    name, other = opposite
    if name and other:
        o_base, o_adapter = base_and_adapter_loss(model, other, pad_token_id, micro, autocast, base_losses)
        figures.update(opposite_trait=name, n_opposite_held_out=len(other))
        figures.update(opposite_base_loss=o_base, opposite_adapter_loss=o_adapter)
        if None not in (o_base, o_adapter) and figures["improvement"] is not None:
            # How much more the adapter helped its own pole than the opposite one (> 0: prefers its own).
            margin = figures["improvement"] - (o_base - o_adapter)
            figures.update(own_pole_margin=margin, prefers_own_pole=margin > 0)
    return figures


def dumps(figures: dict[str, Any] | None) -> str:
    return json.dumps(figures, sort_keys=True)
