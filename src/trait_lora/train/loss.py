"""The next-token loss without the batch's full logits.

A causal LM's own loss computes logits for every position and upcasts them to fp32: with Llama-3.1's
128,256-token vocabulary a micro-batch of 4 x 4,096 tokens is ~8.4 GB in fp32 alone, more than the
LoRA step needs for everything else. Here the decoder runs once, the hidden states of the labelled
positions are picked (assistant tokens only, by default), and the LM head + cross-entropy run over
them in chunks of ``CHUNK_TOKENS``. Each chunk is checkpointed, so its logits are dropped after the
forward and recomputed in the backward: at any moment one chunk's logits exist, never the batch's.
The sum is the same as the model's own loss up to float rounding (``tests/train/test_loss.py``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from trait_lora.train.data import IGNORE_INDEX

CHUNK_TOKENS = 1024  # 1,024 x 128,256 fp32 logits = 0.5 GB per chunk


def _chunk_sum(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    softcap: float | None,
) -> torch.Tensor:
    logits = F.linear(hidden, weight, bias).float()
    if softcap:  # Gemma-2 style final logit soft-capping, as its own forward applies it
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, targets, reduction="sum")


def _causal_lm(model: Any) -> Any:
    """The transformers model under a peft wrapper (the LoRA layers are inside it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def label_loss_sum(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    *,
    chunk_tokens: int = CHUNK_TOKENS,
) -> tuple[torch.Tensor, int]:
    """(sum of the next-token cross-entropy over the labelled positions, their number).

    The caller divides by the labelled tokens of the whole effective batch, which is what keeps the
    maths independent of how the batch is cut into micro-batches.
    """
    causal = _causal_lm(model)
    head = causal.get_output_embeddings()
    hidden = causal.get_decoder()(
        input_ids=input_ids, attention_mask=attention_mask, use_cache=False
    ).last_hidden_state
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    picked, targets = hidden[:, :-1][mask], targets[mask]
    count = int(targets.numel())
    if count == 0:
        return hidden.sum() * 0.0, 0
    softcap = getattr(causal.config, "final_logit_softcapping", None)
    recompute = torch.is_grad_enabled() and picked.requires_grad
    total: torch.Tensor | None = None
    for start in range(0, count, chunk_tokens):
        args = (
            picked[start : start + chunk_tokens],
            head.weight,
            head.bias,
            targets[start : start + chunk_tokens],
            softcap,
        )
        part = checkpoint(_chunk_sum, *args, use_reentrant=False) if recompute else _chunk_sum(*args)
        total = part if total is None else total + part
    assert total is not None
    return total, count
