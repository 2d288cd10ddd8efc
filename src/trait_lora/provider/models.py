"""The base model of a local or Kubernetes run, through Airflow: pinned in ``discover``, fetched on
the worker that trains.

The token and a mirror's endpoint come from the Airflow connection ``[trait_lora] hf_conn_id`` (password,
host), read in the task that needs them and passed to ``trait_lora.models`` as parameters: never in a
plan, XCom, log line or the trainer's argv. The pin (a Hub commit, an S3 digest) is what travels: every
trait of the run loads exactly that version, and it is recorded with each adapter.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from trait_lora import settings

log = logging.getLogger(__name__)
DEFAULT_CACHE = Path("~/.cache/trait-lora/models")


def hub_credentials() -> tuple[str | None, str | None, str]:
    """(token, endpoint, connection id) from ``[trait_lora] hf_conn_id``; no connection = anonymous."""
    from airflow.sdk import BaseHook

    conn_id = settings.get_str("hf_conn_id")
    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception:  # not defined: public models download anonymously; a gated one names conn_id
        return None, None, conn_id
    endpoint = None
    if conn.host:
        endpoint = conn.host if "://" in conn.host else f"{conn.schema or 'https'}://{conn.host}"
        if conn.port and endpoint.count(":") < 2:
            endpoint = f"{endpoint}:{conn.port}"
    return conn.password or None, endpoint, conn_id


def credentials_for(ref: Any) -> tuple[str | None, str | None, str]:
    """``hub_credentials()`` for a Hub model; an S3 model uses its location's own connection, so it
    gets no token (the connection id is only what messages name)."""
    from trait_lora.models import ModelKind

    if ref.kind is ModelKind.HUB:
        return hub_credentials()
    return None, None, settings.get_str("hf_conn_id")


def cache_dir() -> Path:
    """``[trait_lora] model_cache_dir``, else ~/.cache/trait-lora/models."""
    text = settings.get_str("model_cache_dir")
    return Path(text or DEFAULT_CACHE).expanduser()


def pin_base_model(model: str) -> dict[str, Any] | None:
    """The run's base model pinned (``PinnedModel.to_dict``), or None for a local folder: checked here,
    in ``discover``, so a gated repo, a wrong token or a missing revision fails the run before anything
    trains. Raises ``ModelDeliveryError`` naming the connection and the model."""
    from trait_lora.models import ModelKind, parse_model_ref, resolve

    ref = parse_model_ref(model, what="base_model")
    if ref.kind is ModelKind.LOCAL:
        return None
    token, endpoint, conn_id = credentials_for(ref)
    pinned = resolve(ref, token=token, endpoint=endpoint, conn_id=conn_id)
    log.info("base model %s pinned to %s for every trait of this run", model, pinned.label)
    return pinned.to_dict()


def model_folder(pin: dict[str, Any]) -> Path:
    """This worker's local copy of the pinned model, downloaded or copied into the cache once."""
    from trait_lora.models import PinnedModel, materialize

    pinned = PinnedModel.from_dict(pin)
    token, endpoint, conn_id = credentials_for(pinned.ref)
    return materialize(pinned, cache_dir(), token=token, endpoint=endpoint, conn_id=conn_id)
