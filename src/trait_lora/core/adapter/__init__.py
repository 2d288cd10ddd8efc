"""Adapter intake: verify a trained LoRA adapter and install it atomically under the output dir.

An adapter arrives from an untrusted place (a Together download, a local trainer's output), so it is
never trusted by name: archives are read member by member (never ``extractall``; Python's tar filters
have had bypasses), only the two PEFT files are kept and written to paths built here, the decompressed
size is capped while reading, and the safetensors file is checked structurally without torch, so a
wrong-rank, wrong-module or truncated adapter is refused before it can replace a good one.

Install is stage-verify-swap: the new adapter is built in a hidden staging dir beside its final place
and renamed in only after it verified; the old one is parked as ``.previous-<trait>-<random>`` for the
instant between the two renames, and a crash in that instant is repaired on the next call.
"""

from trait_lora.core.adapter.archive import extract_adapter_archive
from trait_lora.core.adapter.install import (
    adapter_dir,
    install_adapter,
    installed_fingerprint,
    verify_installed,
)
from trait_lora.core.adapter.spec import (
    ADAPTER_FILES,
    CHECKPOINTS_DIR,
    DEFAULT_MAX_BYTES,
    AdapterInfo,
    AdapterSpec,
    TensorInfo,
)
from trait_lora.core.adapter.verify import read_safetensors_header, verify_adapter_dir

__all__ = [
    "ADAPTER_FILES",
    "CHECKPOINTS_DIR",
    "DEFAULT_MAX_BYTES",
    "AdapterInfo",
    "AdapterSpec",
    "TensorInfo",
    "adapter_dir",
    "extract_adapter_archive",
    "install_adapter",
    "installed_fingerprint",
    "read_safetensors_header",
    "verify_adapter_dir",
    "verify_installed",
]
