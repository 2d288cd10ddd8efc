"""Structural verification of a PEFT adapter directory, without torch: config, safetensors header,
LoRA tensor names, ranks, shapes and pairs."""

from __future__ import annotations

import json
import math
import os
import re
import struct
from pathlib import Path
from typing import Any

from trait_lora.core.adapter.spec import (
    _LORA_RE,
    ADAPTER_FILES,
    CONFIG_FILE,
    DTYPE_SIZES,
    FLOAT_DTYPES,
    MAX_CONFIG_BYTES,
    MAX_HEADER_BYTES,
    PICKLE_SUFFIXES,
    WEIGHTS_FILE,
    AdapterInfo,
    AdapterSpec,
    TensorInfo,
)
from trait_lora.core.errors import AdapterError
from trait_lora.core.hashing import sha256_file

# Verification


def verify_adapter_dir(directory: Path, spec: AdapterSpec) -> AdapterInfo:
    """Check that ``directory`` holds a PEFT LoRA adapter matching ``spec``; raise AdapterError if not."""
    directory = Path(directory)
    if not directory.is_dir():
        raise AdapterError(f"{directory}: no adapter directory here; install or re-download the adapter")
    for name in ADAPTER_FILES:
        require_regular_file(directory, name)
    config_path = directory / CONFIG_FILE
    weights_path = directory / WEIGHTS_FILE
    config = _check_config(config_path, spec)
    tensors = read_safetensors_header(weights_path)
    modules, num_layers = _check_lora_tensors(weights_path, tensors, spec)
    base = config.get("base_model_name_or_path")
    return AdapterInfo(
        r=spec.r,
        alpha=spec.alpha,
        target_modules=modules,
        num_layers=num_layers,
        num_tensors=len(tensors),
        num_parameters=sum(t.numel for t in tensors.values()),
        sha256=sha256_file(weights_path),
        base_model=base if isinstance(base, str) else None,
    )


def require_regular_file(directory: Path, name: str) -> None:
    path = directory / name
    if path.is_symlink():
        raise AdapterError(f"{path} is a symlink; put the real file in the adapter directory")
    if path.is_file():
        return
    if path.exists():
        raise AdapterError(f"{path} is not a regular file; the adapter needs a real {name}")
    hint = ""
    if name == WEIGHTS_FILE:
        pickles = sorted(p.name for p in directory.iterdir() if p.name.lower().endswith(PICKLE_SUFFIXES))
        if pickles:
            hint = (
                f" (found pickled weights {', '.join(pickles)}, which are never loaded: "
                "save the adapter with safe_serialization=True)"
            )
    raise AdapterError(f"{directory} has no {name}{hint}; a PEFT adapter needs {' and '.join(ADAPTER_FILES)}")


def _check_config(path: Path, spec: AdapterSpec) -> dict[str, Any]:
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise AdapterError(f"{path} is {size} bytes, far too big for an adapter config; it is not one")
    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{path} is not valid JSON ({exc}); re-download or re-train the adapter") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{path} must hold a JSON object (a PEFT adapter config)")
    peft_type = config.get("peft_type")
    if not isinstance(peft_type, str) or peft_type.upper() != "LORA":
        raise AdapterError(f"{path}: peft_type is {peft_type!r}, expected 'LORA'; this is not a LoRA adapter")

    def mismatch(field: str, got: Any, want: Any, setting: str) -> AdapterError:
        return AdapterError(
            f"{path}: {field} is {got!r} but the training config has {setting}={want!r}; "
            "this adapter was trained with other settings: retrain it or fix the training config"
        )

    r = config.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r != spec.r:
        raise mismatch("r", r, spec.r, "lora_r")
    alpha = config.get("lora_alpha")
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or alpha != spec.alpha:
        raise mismatch("lora_alpha", alpha, spec.alpha, "lora_alpha")
    raw = config.get("target_modules")
    if isinstance(raw, str):
        modules = [m.strip() for m in raw.split(",") if m.strip()]
    elif isinstance(raw, list) and all(isinstance(m, str) for m in raw):
        modules = list(raw)
    else:
        raise AdapterError(f"{path}: target_modules is {raw!r}, expected a list of module names")
    if set(modules) != set(spec.target_modules):
        raise mismatch("target_modules", sorted(modules), sorted(spec.target_modules), "target_modules")
    for field in ("rank_pattern", "alpha_pattern"):
        if config.get(field):
            raise AdapterError(
                f"{path}: {field} {config[field]!r} gives some modules another rank/alpha than "
                f"r={spec.r}/lora_alpha={spec.alpha}; retrain without per-module overrides"
            )
    return config


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Parse and check a safetensors header without loading tensors (torch is not a core dependency).

    Layout: 8-byte little-endian header length N, N bytes of JSON, then the data section. Every tensor
    must have a known dtype and ``data_offsets`` that tile the data section exactly, so a truncated or
    padded download is caught here rather than at load time on a GPU box.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size < 8:
            raise AdapterError(f"{path} is {size} bytes, too short for safetensors; re-download it")
        (header_len,) = struct.unpack("<Q", fh.read(8))
        if header_len < 2 or header_len > MAX_HEADER_BYTES or 8 + header_len > size:
            raise AdapterError(
                f"{path}: safetensors header length {header_len} is impossible for a file of {size} "
                "bytes; the file is truncated or corrupt: re-download it"
            )
        raw = fh.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError) as exc:
        raise AdapterError(f"{path}: safetensors header is not valid JSON ({exc}); re-download it") from None
    if not isinstance(header, dict):
        raise AdapterError(f"{path}: safetensors header must be a JSON object; re-download it")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise AdapterError(f"{path}: safetensors __metadata__ must map strings to strings")
    data_len = size - 8 - header_len
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        tensors[name] = _tensor_entry(path, name, entry, data_len)
    if not tensors:
        raise AdapterError(f"{path} holds no tensors; re-download or re-train the adapter")
    cursor = 0
    for name, info in sorted(tensors.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if info.begin != cursor:
            raise AdapterError(
                f"{path}: tensor {name} data_offsets start at {info.begin}, expected {cursor} "
                "(tensor data overlaps or has gaps); the file is corrupt: re-download it"
            )
        cursor = info.end
    if cursor != data_len:
        raise AdapterError(
            f"{path} is {size} bytes but its header accounts for {8 + header_len + cursor} "
            "(trailing bytes after the tensor data); the file is corrupt: re-download it"
        )
    return tensors


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _tensor_entry(path: Path, name: str, entry: Any, data_len: int) -> TensorInfo:
    where = f"{path}: tensor {name}"
    if not isinstance(entry, dict):
        raise AdapterError(f"{where}: header entry is not an object; the file is corrupt: re-download it")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        raise AdapterError(
            f"{where}: unknown dtype {dtype!r} (known: {', '.join(DTYPE_SIZES)}); re-save the adapter"
        )
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise AdapterError(f"{where}: shape {shape!r} is not a list of sizes; the file is corrupt")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
        raise AdapterError(f"{where}: data_offsets {offsets!r} is not [begin, end]; the file is corrupt")
    begin, end = offsets
    if begin > end:
        raise AdapterError(f"{where}: data_offsets [{begin}, {end}] run backwards; the file is corrupt")
    if end > data_len:
        raise AdapterError(
            f"{where}: data_offsets [{begin}, {end}] run past the end of the file (data section is "
            f"{data_len} bytes); the file is truncated or corrupt: re-download it"
        )
    want = math.prod(shape) * DTYPE_SIZES[dtype]
    if end - begin != want:
        raise AdapterError(
            f"{where}: data_offsets [{begin}, {end}] hold {end - begin} bytes but shape {shape} of "
            f"{dtype} needs {want}; the file is corrupt: re-download it"
        )
    return TensorInfo(dtype=dtype, shape=tuple(shape), begin=begin, end=end)


def _layer_key(prefix: str) -> str:
    """``base_model.model.model.layers.7.self_attn`` -> ``base_model.model.model.layers.7``.

    Attention and MLP modules of one block sit under different parents, so layers are compared by
    the path up to the last numeric component, not by the full prefix.
    """
    parts = prefix.split(".")
    for i in range(len(parts) - 1, -1, -1):
        if parts[i].isdigit():
            return ".".join(parts[: i + 1])
    return prefix


def _check_lora_tensors(
    path: Path, tensors: dict[str, TensorInfo], spec: AdapterSpec
) -> tuple[tuple[str, ...], int]:
    """Every tensor a LoRA A/B weight of a spec module with rank r, complete pairs, same layers."""
    wanted = set(spec.target_modules)
    pairs: dict[tuple[str, str], dict[str, str]] = {}
    for name, info in tensors.items():
        match = _LORA_RE.fullmatch(name)
        if not match:
            raise AdapterError(
                f"{path}: tensor {name} is not a LoRA weight (expected <prefix>.<module>.lora_A.weight "
                "or .lora_B.weight); retrain saving only the LoRA weights (no modules_to_save, bias or DoRA)"
            )
        module, kind = match["module"], match["kind"]
        if module not in wanted:
            raise AdapterError(
                f"{path}: tensor {name} adapts module {module}, which is not in target_modules "
                f"{sorted(wanted)}; this adapter was trained for other modules: retrain it"
            )
        if info.dtype not in FLOAT_DTYPES:
            raise AdapterError(
                f"{path}: tensor {name} has dtype {info.dtype}, expected one of {sorted(FLOAT_DTYPES)}"
            )
        r = spec.r
        if kind == "A":
            ok = len(info.shape) == 2 and info.shape[0] == r and info.shape[1] > 0
            want = f"[{r}, in_features]"
        else:
            ok = len(info.shape) == 2 and info.shape[1] == r and info.shape[0] > 0
            want = f"[out_features, {r}]"
        if not ok:
            raise AdapterError(
                f"{path}: tensor {name} has shape {list(info.shape)}, expected {want} for r={r}; "
                "the adapter was trained with another rank: retrain it or fix lora_r"
            )
        slot = pairs.setdefault((match["prefix"], module), {})
        if kind in slot:
            raise AdapterError(
                f"{path}: tensors {slot[kind]} and {name} are both lora_{kind} of "
                f"{match['prefix']}.{module}; the file holds more than one adapter: re-save one only"
            )
        slot[kind] = name
    layers: dict[str, set[str]] = {}
    for (prefix, module), slot in sorted(pairs.items()):
        for kind, other in (("A", "B"), ("B", "A")):
            if kind in slot and other not in slot:
                raise AdapterError(
                    f"{path}: tensor {slot[kind]} has no matching lora_{other} for {prefix}.{module} "
                    "(incomplete A/B pair); the file is corrupt or partial: re-download it"
                )
        layers.setdefault(module, set()).add(_layer_key(prefix))
    missing = sorted(wanted - set(layers))
    if missing:
        raise AdapterError(
            f"{path}: no LoRA tensors for target module(s) {', '.join(missing)}; the adapter was "
            "trained for other modules: retrain it"
        )
    reference = max(sorted(layers), key=lambda m: len(layers[m]))
    for module in sorted(layers):
        lacking = sorted(layers[reference] - layers[module], key=_natural)
        if lacking:
            shown = ", ".join(lacking[:5]) + (f" and {len(lacking) - 5} more" if len(lacking) > 5 else "")
            raise AdapterError(
                f"{path}: module {module} has LoRA weights in {len(layers[module])} layers but "
                f"{reference} in {len(layers[reference])}; {module} is missing {shown}. "
                "The file is partial or corrupt: re-download or retrain it"
            )
    return tuple(sorted(layers)), len(layers[reference])


def _natural(text: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text)]


# --------------------------------------------------------------------------------------------------
# Archive extraction
