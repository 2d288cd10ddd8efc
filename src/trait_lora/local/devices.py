"""Which device the local trainer uses, and which GPU each trait's trainer gets on a multi-GPU machine.

Read without importing torch: the DAG file asks how many GPUs there are when it is parsed (the default
of ``local_concurrency``) and the worker decides the device before it starts the trainer, and neither
may pay torch's import (~2 s, and a CUDA context in a long-lived worker). The kernel driver lists its
GPUs under ``/proc/driver/nvidia/gpus`` (the NVIDIA container runtime mounts it in containers too);
``CUDA_VISIBLE_DEVICES``, when set, is what CUDA itself would expose, so it wins.

With several GPUs each trait's trainer gets exactly one (``CUDA_VISIBLE_DEVICES=<gpu>``), claimed with
an exclusive ``flock`` on a per-GPU file: two traits never share a card however Airflow schedules
them, and a lock dies with its process, so a killed task never leaves a GPU claimed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from enum import StrEnum
from pathlib import Path

DRIVER_GPUS = Path("/proc/driver/nvidia/gpus")
LOCK_DIR = "trait-lora-gpus"


class Device(StrEnum):
    """``[trait_lora] local_device``."""

    AUTO = "auto"
    CUDA = "cuda"
    CPU = "cpu"


def visible_gpus(driver_dir: Path = DRIVER_GPUS) -> list[str]:
    """The GPUs CUDA would show this process, as the ids ``CUDA_VISIBLE_DEVICES`` takes."""
    chosen = os.environ.get("CUDA_VISIBLE_DEVICES")
    if chosen is not None:
        ids = [part.strip() for part in chosen.split(",") if part.strip()]
        # CUDA stops at the first invalid id; "-1" is the usual way to hide every GPU
        taken: list[str] = []
        for gpu in ids:
            if gpu.startswith("-"):
                break
            taken.append(gpu)
        return taken
    try:
        count = sum(1 for entry in driver_dir.iterdir() if entry.is_dir())
    except OSError:
        return []
    return [str(i) for i in range(count)]


def resolve_device(setting: str, gpus: list[str]) -> Device:
    """``auto`` is CUDA when a GPU is visible, else the CPU; ``cuda`` and ``cpu`` are taken as said
    (``cuda`` on a machine without one fails in the trainer, naming the setting)."""
    device = Device(setting)
    if device is Device.AUTO:
        return Device.CUDA if gpus else Device.CPU
    return device


def default_concurrency(setting: int, gpus: list[str]) -> int:
    """``local_concurrency``: as set, else (0) one trait per GPU, and one at a time on a CPU."""
    return setting if setting > 0 else max(1, len(gpus))


@contextlib.contextmanager
def gpu_claim(
    gpus: list[str],
    *,
    first: int = 0,
    lock_dir: Path | None = None,
    poll_seconds: float = 2.0,
    log: Callable[[str], None] = print,
) -> Iterator[str]:
    """Hold one GPU of ``gpus`` exclusively (blocking until one is free); yields its id.

    ``first`` (e.g. the task's map index) spreads the first tries, so traits do not all queue on GPU 0.
    """
    if not gpus:
        raise ValueError("no GPU to claim")
    folder = lock_dir or Path(tempfile.gettempdir()) / LOCK_DIR
    folder.mkdir(parents=True, exist_ok=True)
    order = [gpus[(first + i) % len(gpus)] for i in range(len(gpus))]
    waited = False
    while True:
        for gpu in order:
            handle = open(folder / f"gpu-{gpu}.lock", "a+")  # noqa: SIM115 - held for the block
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            try:
                yield gpu
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
            return
        if not waited:
            log(f"every GPU ({', '.join(gpus)}) is training another trait; waiting for one")
            waited = True
        time.sleep(poll_seconds)
