"""Where a run trains and in which number format, decided by the hardware it finds.

bf16 where the GPU has it (Ampere and later), fp16 with loss scaling where it does not (T4, V100: bf16
is refused there, or emulated and slow), fp32 on the CPU (its bf16 matmuls are slower than fp32 here).
The choice changes only rounding, not what the adapter means, so it is not part of the job key; it is
recorded in the adapter's metrics.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from trait_lora.train import TrainInputError

DEVICES = ("auto", "cuda", "cpu")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class Runtime:
    """The device and precision one run uses."""

    device: str  # "cuda" | "cpu"
    precision: str  # "bf16" | "fp16" | "fp32"
    device_name: str

    @property
    def dtype(self) -> torch.dtype:
        """The base weights' dtype and the autocast dtype (LoRA weights stay fp32 in every case)."""
        return DTYPES[self.precision]

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    @property
    def loss_scaling(self) -> bool:
        """fp16 gradients underflow without it; bf16 has fp32's range."""
        return self.precision == "fp16"

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.precision == "fp32":
            yield
        else:
            with torch.autocast(self.device, dtype=self.dtype):
                yield

    def grad_scaler(self) -> Any:
        return torch.amp.GradScaler(self.device, enabled=self.loss_scaling)

    def peak_memory_bytes(self) -> int | None:
        """The CUDA allocator's peak since the run began (None on the CPU: see the RSS instead)."""
        return int(torch.cuda.max_memory_allocated()) if self.cuda else None


def _bf16_native() -> bool:
    # including_emulation=False: a T4 "supports" bf16 by emulation, ~10x slower than fp16 there.
    return torch.cuda.is_bf16_supported(including_emulation=False)


def resolve(device: str = "auto", precision: str = "auto") -> Runtime:
    """The runtime for ``--device`` and ``--precision``; TrainInputError when the hardware cannot."""
    if device not in DEVICES:
        raise TrainInputError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if precision not in PRECISIONS:
        raise TrainInputError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainInputError(
            "--device cuda (or --gpu) was given but torch sees no CUDA device; use --device auto or cpu"
        )
    if device == "cpu":
        if precision not in ("auto", "fp32"):
            raise TrainInputError(f"--precision {precision} needs a CUDA device; the CPU trains in fp32")
        return Runtime("cpu", "fp32", f"{torch.get_num_threads()} threads")
    name = torch.cuda.get_device_name(0)
    if precision == "auto":
        precision = "bf16" if _bf16_native() else "fp16"
    elif precision == "bf16" and not _bf16_native():
        raise TrainInputError(f"{name} has no native bf16; use --precision fp16 (or auto)")
    return Runtime("cuda", precision, name)
