"""Adapter archives served by ``GET /v1/finetune/download``: good, realistic and hostile ones."""

from __future__ import annotations

import io
import json
import pickle
import random
import tarfile
from functools import lru_cache
from typing import Any

from tests.fake_together.common import (
    DOWNLOAD_KINDS,
)
from tests.support.adapters import adapter_archive, adapter_files, zstd_bytes

# --------------------------------------------------------------------------------------------------
# Archives served by GET /v1/finetune/download (cached: building a 4-8 MB adapter costs ~0.1-0.3 s)
# --------------------------------------------------------------------------------------------------


def _tar(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    """A tar built member by member, so hostile members (links, ``..`` names) can be placed exactly."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _regular(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    return info, data


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    info.mode = 0o777
    return info, None


class _HostilePickle:
    """Unpickling this raises instead of doing harm: a consumer that loads it fails loudly in tests."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (exec, ("raise RuntimeError('hostile pickle from the fake Together server was unpickled')",))


TRAINING_ARGS = {"learning_rate": 0.0002, "per_device_train_batch_size": 32, "num_train_epochs": 1}


def _realistic_archive(prefix: str, r: int, alpha: int, modules: tuple[str, ...]) -> bytes:
    """What a trainer's output folder holds beside the adapter: a README, tokenizer files, a pickled
    ``training_args.bin`` (harmless here, but a pickle) and an intermediate ``checkpoint-N/`` folder with an
    adapter of its own (different weights) and a pickled optimizer state."""
    final = adapter_files(r=r, alpha=alpha, modules=modules, seed=0)
    intermediate = adapter_files(r=r, alpha=alpha, modules=modules, seed=1)
    tokenizer = json.dumps({"version": "1.0", "model": {"type": "BPE"}}).encode()
    entries = [
        _regular(prefix + "README.md", b"---\nlibrary_name: peft\n---\n# LoRA adapter\n"),
        _regular(prefix + "checkpoint-2/adapter_config.json", intermediate["adapter_config.json"]),
        _regular(
            prefix + "checkpoint-2/adapter_model.safetensors", intermediate["adapter_model.safetensors"]
        ),
        _regular(prefix + "checkpoint-2/optimizer.pt", pickle.dumps({"state": {}}, protocol=2)),
        _regular(prefix + "adapter_config.json", final["adapter_config.json"]),
        _regular(prefix + "adapter_model.safetensors", final["adapter_model.safetensors"]),
        _regular(prefix + "tokenizer.json", tokenizer),
        _regular(prefix + "tokenizer_config.json", b'{"model_max_length": 131072}'),
        _regular(prefix + "special_tokens_map.json", b'{"bos_token": "<|begin_of_text|>"}'),
        _regular(prefix + "training_args.bin", pickle.dumps(TRAINING_ARGS, protocol=2)),
    ]
    return zstd_bytes(_tar(entries))


@lru_cache(maxsize=32)
def build_download(
    kind: str,
    r: int = 4,
    alpha: int = 16,
    modules: tuple[str, ...] = ("q_proj", "v_proj"),
    prefix: str = "",
) -> bytes:
    """The body served for one download kind (see ``FakeTogether.set_download``).

    ``good``/``truncated`` are a real adapter of the job's rank, alpha and modules; ``wrong-rank`` has
    tensors of rank ``2r`` under a config that still claims ``r`` (a consumer trusting the config is wrong);
    ``hostile-traversal`` adds ``../`` and absolute member names; ``hostile-symlink`` makes the weights a
    symlink to ``/etc/passwd`` and adds a link-then-write-through-it pair (the tarfile CVE-2025-4517
    pattern); ``hostile-pickle`` ships ``adapter_model.bin`` (a pickle) and no safetensors, which is what
    makes PEFT fall back to ``torch.load``; ``garbage`` is random bytes, not zstd.
    Truncation is done by the server (it cuts the body short), not here.
    """
    if kind in ("good", "truncated"):
        return _realistic_archive(prefix, r, alpha, modules)
    if kind == "minimal":
        return adapter_archive(prefix=prefix, r=r, alpha=alpha, modules=modules)
    if kind == "wrong-rank":
        files = adapter_files(r=2 * r, alpha=alpha, modules=modules, config_r=r)
        return zstd_bytes(_tar([_regular(prefix + name, data) for name, data in files.items()]))
    if kind == "garbage":
        return random.Random(0).randbytes(64 * 1024)
    files = adapter_files(r=r, alpha=alpha, modules=modules)
    config, weights = files["adapter_config.json"], files["adapter_model.safetensors"]
    entries: list[tuple[tarfile.TarInfo, bytes | None]]
    if kind == "hostile-traversal":
        entries = [
            _regular(prefix + "adapter_config.json", config),
            _regular(prefix + "adapter_model.safetensors", weights),
            _regular("../../trait_lora_escaped.txt", b"written outside the extraction directory\n"),
            _regular("/tmp/trait_lora_absolute.txt", b"written to an absolute path\n"),
        ]
    elif kind == "hostile-symlink":
        entries = [
            _regular(prefix + "adapter_config.json", config),
            _link(prefix + "adapter_model.safetensors", "/etc/passwd"),
            _link(prefix + "escape", "/tmp"),
            _regular(prefix + "escape/trait_lora_through_link.txt", b"written through a symlink\n"),
            _link(prefix + "hardlink", "/etc/hostname", tarfile.LNKTYPE),
        ]
    elif kind == "hostile-pickle":
        entries = [
            _regular(prefix + "adapter_config.json", config),
            _regular(prefix + "adapter_model.bin", pickle.dumps(_HostilePickle(), protocol=2)),
        ]
    else:
        raise ValueError(f"unknown download kind {kind!r}; known: {', '.join(DOWNLOAD_KINDS)}")
    return zstd_bytes(_tar(entries))
