"""The ``together`` connection type's form, defined once for the hook and the provider info.

Airflow reads the form from two places (the hook's ``get_ui_field_behaviour`` and the provider's
``connection-types`` entry, in different key spellings); both are derived from the values here so
they cannot drift. No Airflow or SDK import: ``get_provider_info`` must stay cheap.
"""

from __future__ import annotations

from typing import Any

CONN_TYPE = "together"
DEFAULT_CONN_ID = "together_default"
HOOK_NAME = "Together AI"
DEFAULT_BASE_URL = "https://api.together.ai"
DEFAULT_MAX_RETRIES = 8
DEFAULT_TIMEOUT = 60.0

HIDDEN_FIELDS = ["schema", "port", "login", "extra"]
RELABELING = {"host": "API base URL", "password": "API key"}
PLACEHOLDERS = {"host": DEFAULT_BASE_URL, "password": "Together API key (tgp_...)"}
CONN_FIELDS: dict[str, Any] = {
    "max_retries": {
        "label": "SDK retries for idempotent calls",
        "schema": {"type": ["integer", "null"], "default": DEFAULT_MAX_RETRIES, "minimum": 0},
        "description": "Retries on 429/5xx/timeouts (never used for job creation).",
    },
    "timeout": {
        "label": "Request timeout (seconds)",
        "schema": {"type": ["number", "null"], "default": DEFAULT_TIMEOUT, "exclusiveMinimum": 0},
        "description": "Per-request timeout of the Together SDK.",
    },
}


def hook_field_behaviour() -> dict[str, Any]:
    """The form as ``BaseHook.get_ui_field_behaviour`` spells it."""
    return {
        "hidden_fields": list(HIDDEN_FIELDS),
        "relabeling": dict(RELABELING),
        "placeholders": dict(PLACEHOLDERS),
    }


def provider_connection_type(hook_class: str) -> dict[str, Any]:
    """The form as a provider's ``connection-types`` entry spells it."""
    return {
        "hook-class-name": hook_class,
        "connection-type": CONN_TYPE,
        "hook-name": HOOK_NAME,
        "conn-fields": CONN_FIELDS,
        "ui-field-behaviour": {
            "hidden-fields": list(HIDDEN_FIELDS),
            "relabeling": dict(RELABELING),
            "placeholders": dict(PLACEHOLDERS),
        },
    }
