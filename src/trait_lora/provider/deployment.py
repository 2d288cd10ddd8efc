"""What the training DAG files read from the deployment settings when they are parsed.

Only what the scheduler needs before any task runs is read here: the schedule, the form's default
``shards_dir`` / ``output_dir`` (a run then carries them in its conf), and the retry delay; the pools
and ``local_concurrency`` are read by the DAG files themselves. Everything else (poll interval, the cap
on jobs in flight, stagger, the pod settings) is read by the task when it runs.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from trait_lora import settings
from trait_lora.provider.params import build_params


def dag_args(
    project_dir: Path, form: str, *, retries: int, retry_delay: timedelta | None = None
) -> dict[str, Any]:
    """``schedule``, ``params`` and ``default_args`` for ``@dag``; ``retry_delay`` None reads
    ``[trait_lora] retry_delay_seconds``."""
    delay = retry_delay or timedelta(seconds=settings.get_float("retry_delay_seconds"))
    return {
        "schedule": settings.schedule(),
        "params": build_params(project_dir, form),
        "default_args": {"retries": retries, "retry_delay": delay},
    }
