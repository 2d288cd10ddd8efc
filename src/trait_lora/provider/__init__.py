"""Airflow integration layer: imported by workers, the triggerer and the DAG processor.

Kept free of heavy imports at module level: DAG files import operators from here, and parsing a DAG
file must not import the Together SDK, torch or the Kubernetes client.
"""

from __future__ import annotations

from typing import Any

import trait_lora


def get_provider_info() -> dict[str, Any]:
    """Provider metadata read by Airflow through the ``apache_airflow_provider`` entry point.

    Registering the ``together`` connection type here (not in a plugin) is what makes it appear in
    the connection form with labelled fields in every Airflow component.
    """
    return {
        "package-name": "trait-lora",
        "name": "trait-lora (Together AI LoRA training)",
        "description": "Train one LoRA adapter per trait shard on Together AI or local GPUs.",
        "versions": [trait_lora.__version__],
        "connection-types": [
            {
                "hook-class-name": "trait_lora.provider.hooks.together.TogetherHook",
                "connection-type": "together",
                "hook-name": "Together AI",
                "conn-fields": {
                    "max_retries": {
                        "label": "SDK retries for idempotent calls",
                        "schema": {"type": ["integer", "null"], "default": 8, "minimum": 0},
                        "description": "Retries on 429/5xx/timeouts (never used for job creation).",
                    },
                    "timeout": {
                        "label": "Request timeout (seconds)",
                        "schema": {"type": ["number", "null"], "default": 60},
                    },
                },
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "login", "extra"],
                    "relabeling": {"host": "API base URL", "password": "API key"},
                    "placeholders": {
                        "host": "https://api.together.ai",
                        "password": "Together API key (tgp_...)",
                    },
                },
            }
        ],
        "extra-links": ["trait_lora.provider.links.TogetherJobLink"],
        "triggers": [
            {
                "integration-name": "Together AI",
                "python-modules": ["trait_lora.provider.triggers.together"],
            }
        ],
    }
