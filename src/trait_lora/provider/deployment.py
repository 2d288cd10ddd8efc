"""What the training DAG files read from the deployment settings when they are parsed.

Only what the scheduler needs before any task runs is read here: the schedule, the form's default
``shards_dir`` / ``output_dir`` (a run then carries them in its conf), and the retry delay; the pools
and ``local_concurrency`` are read by the DAG files themselves. Everything else (poll interval, the cap
on jobs in flight, stagger, the pod settings) is read by the task when it runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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


def local_train_args() -> dict[str, Any]:
    """The local ``train`` task's bounds: how many traits train at once (``[trait_lora]
    local_concurrency``, 0 = one per visible GPU) and how long one may take (``local_timeout_minutes``:
    a hung trainer must not hold the machine; the retry resumes from its checkpoint). Counting GPUs
    reads the driver's folder, not torch: this runs at every parse."""
    from trait_lora.local.devices import default_concurrency, visible_gpus

    return {
        "max_active_tis_per_dagrun": default_concurrency(
            settings.get_int("local_concurrency"), visible_gpus()
        ),
        "execution_timeout": timedelta(minutes=settings.get_float("local_timeout_minutes")),
    }


def local_group_args() -> dict[str, Any]:
    """The local ``train_group`` task's bounds: one group per GPU (or ``local_concurrency``) at once, as
    ``train`` trains one trait per GPU; its time limit is ``local_timeout_minutes`` per trait of the
    group, enforced on the trainer process (the size of a group is the run's, not known at parse)."""
    return {"max_active_tis_per_dagrun": local_train_args()["max_active_tis_per_dagrun"]}


@contextmanager
def params_handed_over_once(dag: Any) -> Iterator[None]:
    """Build the tasks inside this block so that they do not each carry a copy of the DAG's params.

    Airflow deep-copies the DAG's params into every operator once per ``__init__`` level of its class
    (24 copies of 18 params in trait_lora_together, ~40% of building the DAG), and the serialized DAG
    then stores a copy per task. A running task gets nothing from them: its ``params`` are the DAG's
    merged with the task's own and the run's conf (``process_params``), the DAG's first. So the DAG's
    params are set aside while its tasks are built and put back untouched: the form, the validation of
    a run's conf and every task's ``params`` are unchanged, and a task's own ``params=`` still counts.
    ``object.__setattr__`` as Airflow's own converter does: the DAG's validator already ran on them.
    The DAG is passed in (``with DAG(...) as dag, params_handed_over_once(dag):``): Airflow has no
    public way to ask for the DAG being built.
    """
    from airflow.sdk import DAG, ParamsDict

    if not isinstance(dag, DAG):
        raise TypeError(
            "params_handed_over_once(dag) takes the DAG being built: "
            f"with DAG(...) as dag, params_handed_over_once(dag): ... (got {type(dag).__name__})"
        )
    params = dag.params
    object.__setattr__(dag, "params", ParamsDict())
    try:
        yield
    finally:
        object.__setattr__(dag, "params", params)
