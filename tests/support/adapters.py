"""Build real PEFT-shaped adapters (safetensors + adapter_config.json) and archives of them.

Used by the core adapter tests and by the fake Together server, so both see the same bytes a real
Llama-3.1-8B r=4 q/v adapter has (128 tensors, 1,703,936 parameters).
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import zstandard
from safetensors.numpy import save as st_save

# (in_features, out_features) per module for Llama-3.1-8B (GQA: v_proj outputs 8 kv heads x 128).
LLAMA_8B_SHAPES = {
    "q_proj": (4096, 4096),
    "k_proj": (4096, 1024),
    "v_proj": (4096, 1024),
    "o_proj": (4096, 4096),
}
LLAMA_8B_LAYERS = 32
BASE_MODEL = "meta-llama/Meta-Llama-3.1-8B-Instruct"


def adapter_tensors(
    r: int = 4,
    modules: tuple[str, ...] = ("q_proj", "v_proj"),
    layers: int = LLAMA_8B_LAYERS,
    shapes: dict[str, tuple[int, int]] | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    shapes = shapes or LLAMA_8B_SHAPES
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for layer in range(layers):
        for module in modules:
            fan_in, fan_out = shapes[module]
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            out[f"{prefix}.lora_A.weight"] = rng.standard_normal((r, fan_in), dtype=np.float32) * 0.01
            out[f"{prefix}.lora_B.weight"] = np.zeros((fan_out, r), dtype=np.float32)
    return out


def adapter_config(
    r: int = 4, alpha: int = 16, modules: tuple[str, ...] = ("q_proj", "v_proj"), base: str = BASE_MODEL
) -> dict:
    return {
        "base_model_name_or_path": base,
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "target_modules": list(modules),
        "bias": "none",
        "inference_mode": True,
    }


def adapter_files(r: int = 4, alpha: int = 16, modules=("q_proj", "v_proj"), **kw) -> dict[str, bytes]:
    """The two files of an adapter, as bytes, keyed by file name."""
    config_r = kw.pop("config_r", r)
    tensors = adapter_tensors(r=r, modules=modules, **kw)
    return {
        "adapter_config.json": json.dumps(adapter_config(config_r, alpha, modules)).encode(),
        "adapter_model.safetensors": st_save(tensors),
    }


def write_adapter_dir(directory: Path, **kw) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in adapter_files(**kw).items():
        (directory / name).write_bytes(data)
    return directory


def tar_bytes(members: dict[str, bytes], *, extra: list[tarfile.TarInfo] | None = None) -> bytes:
    """An uncompressed tar of regular files (plus any hand-made members such as links)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tar.addfile(info)
    return buf.getvalue()


def zstd_bytes(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=3).compress(data)


def adapter_archive(prefix: str = "", **kw) -> bytes:
    """A ``.tar.zst`` like Together's adapter download (members under ``prefix``)."""
    members = {f"{prefix}{name}": data for name, data in adapter_files(**kw).items()}
    return zstd_bytes(tar_bytes(members))
