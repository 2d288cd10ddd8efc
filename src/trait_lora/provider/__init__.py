"""Airflow integration layer: imported by workers, the triggerer and the DAG processor.

Kept free of heavy imports at module level: DAG files import operators from here, and parsing a DAG
file must not import the Together SDK, torch or the Kubernetes client.
"""

from __future__ import annotations

from typing import Any

import trait_lora
from trait_lora import settings
from trait_lora.provider import storage as _storage  # noqa: F401  (opens s3:// locations for the core)
from trait_lora.provider.connection import provider_connection_type


def get_provider_info() -> dict[str, Any]:
    """Provider metadata read by Airflow through the ``apache_airflow_provider`` entry point.

    Registering the ``together`` connection type here (not in a plugin) is what makes it appear in
    the connection form with labelled fields in every Airflow component; ``config`` is what makes
    ``airflow config list --section trait_lora`` show every deployment setting with its default.
    """
    return {
        "package-name": "trait-lora",
        "name": "trait-lora (Together AI LoRA training)",
        "description": "Train one LoRA adapter per trait shard on Together AI or local GPUs.",
        "versions": [trait_lora.__version__],
        "connection-types": [
            provider_connection_type("trait_lora.provider.hooks.together.TogetherHook"),
        ],
        "config": settings.provider_config(),
        "extra-links": ["trait_lora.provider.links.TogetherJobLink"],
        "triggers": [
            {
                "integration-name": "Together AI",
                "python-modules": ["trait_lora.provider.triggers.together"],
            }
        ],
    }
