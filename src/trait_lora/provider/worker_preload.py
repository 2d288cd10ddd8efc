"""What a worker imports once, before it forks task processes, so each task does not import it again.

Airflow runs every task try in a process forked from a long-lived worker process (a Celery pool
process, a LocalExecutor worker). Whatever that parent has imported, the child has for free; whatever
it has not, every task try imports afresh and throws away. Our task processes import the Together SDK
(about 500 modules, 0.25 s of CPU with its ``files`` and ``fine_tuning`` resources) and our runtime
modules; at 4-6 task tries per trait that was half the CPU our Celery workers spent (py-spy, 32 traits,
docs/decisions.md). Importing this module in the parent moves that cost to the worker's start.

How it gets into the parent (docs/operations.md §4):

* CeleryExecutor: ``[celery] celery_config_options = trait_lora.provider.celery_config.CELERY_CONFIG``
  (Celery imports the ``imports`` it lists in the worker's main process, before the pool forks).
* LocalExecutor: ``[scheduler] mp_start_method = forkserver`` and ``[scheduler] mp_forkserver_preload
  = trait_lora.provider.worker_preload`` (the executor's workers fork from a server that imported it).

If one of ``OURS`` fails to import, Celery refuses to start the worker (a broken install shows at
once); CPython's forkserver ignores an ImportError in its preload, so a LocalExecutor runs on without
it, each task importing what it needs as before.

Never imported by a DAG file or the DAG processor (parse time stays cheap), and it imports no torch,
transformers, peft or Kubernetes client: local training runs in a subprocess of its own.
"""

from __future__ import annotations

import importlib

# The Together SDK, what the DAG files import (each task process parses its DAG file), what the tasks run.
OURS = (
    "together",
    "trait_lora.core.adapter",
    "trait_lora.core.jobs.budget",
    "trait_lora.core.handoff.intake",
    "trait_lora.core.jobs.job_status",
    "trait_lora.core.jobs.ledger",
    "trait_lora.core.jobs.limits",
    "trait_lora.core.handoff.mapping",
    "trait_lora.core.jobs.plan",
    "trait_lora.core.handoff.runs",
    "trait_lora.core.shards.split",
    "trait_lora.core.handoff.summary",
    "trait_lora.core.shards.validation",
    "trait_lora.provider.deployment",
    "trait_lora.provider.hooks.together",
    "trait_lora.provider.operators",
    "trait_lora.provider.records",
    "trait_lora.provider.tasks",
    "trait_lora.provider.triggers.together",
)

# Internals that a release of the SDK or of Airflow may move, so a missing one is skipped, not an error
# that would stop the worker from starting: the SDK resources the hook uses (the client imports them
# lazily, on first use) and Airflow's side of a task process, the task runner and what it parses the
# DAG file with (about 110 modules a LocalExecutor worker forked from a forkserver would otherwise
# import per task try).
OPTIONAL = (
    "together.lib.resources.files",
    "together.resources.files",
    "together.resources.fine_tuning",
    "together.types",
    "airflow.sdk.execution_time.supervisor",
    "airflow.sdk.execution_time.task_runner",
    "airflow.dag_processing.dagbag",
    "airflow.dag_processing.importers.python_importer",
    "airflow.serialization.serialized_objects",
)


def preload() -> list[str]:
    """Import every module above; returns the optional ones that this install does not have."""
    for name in OURS:
        importlib.import_module(name)  # ours and our pinned SDK: a failure here is a broken install
    missing = []
    for name in OPTIONAL:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


MISSING = preload()
