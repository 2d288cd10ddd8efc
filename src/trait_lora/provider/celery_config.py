"""Celery settings for trait-lora workers: Airflow's defaults, plus our task modules imported once per
worker (``trait_lora.provider.worker_preload``) instead of once per task try.

Use it with ``[celery] celery_config_options = trait_lora.provider.celery_config.CELERY_CONFIG``
(docker-compose.yaml does). A deployment with a Celery config of its own adds
``"trait_lora.provider.worker_preload"`` to that config's ``imports`` instead.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG

PRELOAD_MODULE = "trait_lora.provider.worker_preload"

CELERY_CONFIG: dict[str, Any] = {
    **DEFAULT_CELERY_CONFIG,
    # Celery imports these in the worker's main process before it forks its pool, so every pool
    # process, and every task process forked from one, inherits them.
    "imports": (*DEFAULT_CELERY_CONFIG.get("imports", ()), PRELOAD_MODULE),
}
