"""What an adapter must be and what a verified one holds; the limits every intake step shares."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from trait_lora.core.config import TrainingConfig

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
CONFIG_FILE, WEIGHTS_FILE = ADAPTER_FILES
# what the local trainer writes beside the adapter: its loss curve and eval figures, then its result
# record (the JSON line it prints), last: a pod's install task takes its presence as "finished"
RESULT_FILE = "result.json"
TRAINED_FILES = (*ADAPTER_FILES, "metrics.json", RESULT_FILE)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
DEFAULT_MAX_BYTES = 2 * 1024**3  # decompressed cap: a zip bomb must not fill the disk
CHECKPOINTS_DIR = "lora_checkpoints"

MAX_MEMBERS = 1000  # a real adapter archive holds a handful; bounds tarfile's member list in memory
MAX_CONFIG_BYTES = 1 << 20
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit
STALE_STAGING_SECONDS = 3600  # a staging dir this old belongs to a crashed install
CORRUPT = "archive is truncated or corrupt: re-download it"

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_GZIP_MAGIC = b"\x1f\x8b"
_TAR_MAGIC = b"ustar"
_ZSTD_FEED = 1024  # compressed bytes per decompress call: zstd expands at most ~32k:1, so <= 32 MiB out
_COPY_CHUNK = 1 << 20

DTYPE_SIZES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})

# <prefix>.<module>.lora_A[.<adapter name>].weight
_LORA_RE = re.compile(
    r"^(?P<prefix>.+)\.(?P<module>[^.]+)\.lora_(?P<kind>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$"
)


@dataclass(frozen=True)
class AdapterSpec:
    """What an adapter must be: the LoRA settings it was trained with, from the training config."""

    r: int
    alpha: int
    target_modules: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        for name in ("r", "alpha"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"AdapterSpec.{name} must be a positive integer, got {value!r}")
        if not self.target_modules or not all(isinstance(m, str) and m for m in self.target_modules):
            raise ValueError(f"AdapterSpec.target_modules must name modules, got {self.target_modules!r}")

    @classmethod
    def from_config(cls, cfg: TrainingConfig) -> AdapterSpec:
        return cls(r=cfg.lora_r, alpha=cfg.lora_alpha, target_modules=tuple(cfg.target_modules))


@dataclass(frozen=True)
class AdapterInfo:
    """What a verified adapter holds; ``sha256`` is of ``adapter_model.safetensors``."""

    r: int
    alpha: int
    target_modules: tuple[str, ...]
    num_layers: int
    num_tensors: int
    num_parameters: int
    sha256: str
    base_model: str | None


@dataclass(frozen=True)
class TensorInfo:
    """One tensor entry of a safetensors header (offsets relative to the data section)."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


# --------------------------------------------------------------------------------------------------
