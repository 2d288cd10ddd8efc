"""The base model and its tokenizer, loaded offline; the padding id a tokenizer may not declare.

Apart from the training loop because both the trainer and the evaluation load the same way, and a
model that cannot be found must fail before any data is encoded, with how to provide it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trait_lora.train import ModelLoadError, require_model_dir

PAD_FALLBACK = "<|finetune_right_pad_id|>"  # Llama-3.1 ships this token but sets no pad_token


def load_base_model(model_ref: str, *, gpu: bool) -> tuple[Any, Any]:
    """Tokenizer and model from a local directory or the local Hugging Face cache, never the network.

    Training must be reproducible against a pinned copy, and the machines that run it often have no
    internet: a miss is a ``ModelLoadError`` telling the user how to provide the model, not a hang.
    """
    require_model_dir(model_ref)
    path = Path(model_ref).expanduser()
    ref = str(path) if path.is_dir() else model_ref
    kwargs: dict[str, Any] = {"local_files_only": True}
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref, **kwargs)
        if gpu:
            kwargs.update(dtype=torch.bfloat16, attn_implementation="sdpa")
        else:
            kwargs.update(dtype=torch.float32)
        model = AutoModelForCausalLM.from_pretrained(ref, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"cannot load base model {model_ref!r} offline ({type(exc).__name__}: {_first_line(exc)}). "
            "Pass a local model directory as local_model, or pre-download it on a machine with internet "
            f"(`hf download {model_ref}`) into this machine's Hugging Face cache; the trainer never "
            "downloads."
        ) from None
    return tokenizer, model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def pad_token_id(tokenizer: Any) -> int:
    if isinstance(tokenizer.pad_token_id, int):
        return tokenizer.pad_token_id
    fallback = tokenizer.convert_tokens_to_ids(PAD_FALLBACK)
    if isinstance(fallback, int) and fallback != tokenizer.unk_token_id:
        return fallback
    # Any id works: padding is masked out of attention and labels.
    return tokenizer.eos_token_id if isinstance(tokenizer.eos_token_id, int) else 0
