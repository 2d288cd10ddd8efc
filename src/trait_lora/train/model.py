"""The base model and its tokenizer, loaded offline; the padding id a tokenizer may not declare.

Apart from the training loop because both the trainer and the evaluation load the same way, and a
model that cannot be found must fail before any data is encoded, with how to provide it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from trait_lora.train import ModelLoadError, TrainInputError, require_model_dir
from trait_lora.train.precision import Runtime

PAD_FALLBACK = "<|finetune_right_pad_id|>"  # Llama-3.1 ships this token but sets no pad_token


def load_base_model(model_ref: str, runtime: Runtime, *, quantization: str | None = None) -> tuple[Any, Any]:
    """Tokenizer and model from a local directory or the local Hugging Face cache, never the network.

    Training must be reproducible against a pinned copy, and the machines that run it often have no
    internet: a miss is a ``ModelLoadError`` telling the user how to provide the model, not a hang.
    The weights come in the run's precision, straight onto its device; with ``quantization="4bit"``
    every linear layer of the blocks is stored in NF4 (double-quantized) and computes in that
    precision, while the LM head and embeddings stay as they are (bitsandbytes' QLoRA recipe).
    """
    require_model_dir(model_ref)
    path = Path(model_ref).expanduser()
    ref = str(path) if path.is_dir() else model_ref
    kwargs: dict[str, Any] = {"local_files_only": True, "dtype": runtime.dtype}
    if runtime.cuda:
        kwargs.update(attn_implementation="sdpa", device_map={"": torch.cuda.current_device()})
    if quantization == "4bit":
        kwargs["quantization_config"] = four_bit_config(runtime.dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(ref, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"cannot load base model {model_ref!r} offline ({type(exc).__name__}: {_first_line(exc)}). "
            "Pass a local model directory as local_model, or pre-download it on a machine with internet "
            f"(`hf download {model_ref}`) into this machine's Hugging Face cache; the trainer never "
            "downloads."
        ) from None
    if quantization:
        for module in model.modules():
            # bitsandbytes' CPU inference path (CPUs with AVX512-BF16) repacks the weights in place the
            # first time a layer runs in eval mode, and refuses layers whose input size is not a multiple
            # of its block; the held-out evaluation runs in eval mode, so keep the training kernels.
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
    return tokenizer, model


def four_bit_config(compute_dtype: torch.dtype) -> Any:
    """QLoRA's storage: NF4 with double quantization, computing in the run's precision."""
    try:
        import bitsandbytes  # noqa: F401  (transformers only says "install it" deep in from_pretrained)
    except ImportError:
        raise TrainInputError(
            'quantization "4bit" needs the bitsandbytes package: pip install bitsandbytes==0.50.2 '
            "(or set quantization to null)"
        ) from None
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


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
