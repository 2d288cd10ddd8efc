"""The ``hypernetwork_intake`` task: find the mapping a run is about, stack its adapters, fail by name.

A run starts from an Asset event (a training DAG's ``publish_mapping`` names the file it wrote, in the
event's extra and as the Asset's ``file://`` URI) or by hand with the ``mapping_path`` param. The rules
live in ``trait_lora.core.handoff.intake``; this module only turns Airflow's context into a path and a core
error into a failed task whose message names the bad adapter.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlparse

from airflow.sdk.exceptions import AirflowFailException

log = logging.getLogger(__name__)

NO_MAPPING = (
    "no mapping to read: this run has no Asset event naming a hypernetwork_data.json and no mapping_path "
    "param; trigger it with mapping_path, or let a training DAG's publish_mapping trigger it"
)


def _where(text: str) -> str:
    """A mapping location: a folder path (``file://`` URLs unwrapped) or an object-storage URL."""
    if text.startswith("file://"):
        return unquote(urlparse(text).path)
    return text


def event_mapping_path(event: Any) -> str | None:
    """The mapping an event names: its extra's ``mapping_path``, else its Asset's URI (``file://``
    or ``s3://``)."""
    extra = getattr(event, "extra", None) or {}
    if isinstance(extra, Mapping) and isinstance(extra.get("mapping_path"), str) and extra["mapping_path"]:
        return _where(extra["mapping_path"])
    uri = getattr(getattr(event, "asset", None), "uri", "") or ""
    parsed = urlparse(uri)
    if parsed.scheme == "file" and parsed.path:
        return unquote(parsed.path)
    if parsed.scheme == "s3":
        return uri
    return None


def _events(triggering: Mapping[Any, Iterable[Any]] | None) -> list[Any]:
    """Every event once: Airflow lists an event under its Asset and again under each alias it came by."""
    seen: dict[tuple[Any, ...], Any] = {}
    for events in (triggering or {}).values():
        for event in events:
            asset = getattr(event, "asset", None)
            key = (
                getattr(asset, "uri", None),
                getattr(event, "timestamp", None),
                getattr(event, "source_dag_id", None),
                getattr(event, "source_run_id", None),
                getattr(event, "source_map_index", None),
            )
            seen.setdefault(key, event)
    return list(seen.values())


def pick_mapping(
    params: Mapping[str, Any] | None, triggering: Mapping[Any, Iterable[Any]] | None
) -> tuple[str, Any | None]:
    """The mapping to read, and the event that named it (None for a manual ``mapping_path``).

    An explicit param wins; otherwise the newest event that names a file. Events batched since the
    last run that name other files are logged, not silently dropped: their intake is a manual run.
    """
    manual = (params or {}).get("mapping_path")
    if manual:
        return _where(str(manual)), None
    named = [(e, p) for e in _events(triggering) if (p := event_mapping_path(e)) is not None]
    if not named:
        raise AirflowFailException(NO_MAPPING)

    def when(item: tuple[Any, str]) -> float:
        stamp = getattr(item[0], "timestamp", None)
        return stamp.timestamp() if isinstance(stamp, datetime) else float("-inf")

    event, path = max(named, key=when)
    others = sorted({str(p) for _, p in named} - {str(path)})
    if others:
        log.warning(
            "this run was triggered for %d other mapping file(s) too; only the newest (%s) is read. "
            "Trigger with mapping_path for: %s",
            len(others),
            path,
            ", ".join(others),
        )
    return path, event


def run_intake(
    params: Mapping[str, Any] | None,
    triggering: Mapping[Any, Iterable[Any]] | None,
    *,
    dag: Any = None,
) -> dict[str, Any]:
    """Verify and stack the adapters of the mapping this run is about; returns a small JSON summary.

    The mapping, wherever it was named (the form or an Asset event, which any DAG can emit), must lie
    inside ``[trait_lora] storage_roots``, symlinks resolved: the intake writes beside it."""
    from trait_lora.core.errors import IntakeError
    from trait_lora.core.handoff.intake_objects import build_intake_at
    from trait_lora.core.storage.location import LocationError
    from trait_lora.core.storage.store import StoreError
    from trait_lora.provider.storage import confine_conf, run_roots
    from trait_lora.provider.tracking import steps

    path, event = pick_mapping(params, triggering)
    source = "param mapping_path" if event is None else f"Asset event of run {event.source_run_id}"
    try:
        confine_conf(str(path), run_roots(dag), what=f"mapping_path ({source})")
    except LocationError as exc:
        raise AirflowFailException(str(exc)) from None
    try:
        result = build_intake_at(path)
    except (IntakeError, StoreError) as exc:
        raise AirflowFailException(
            f"intake of {path} ({source}) failed, nothing was written:\n{exc}"
        ) from None
    announced = (getattr(event, "extra", None) or {}).get("mapping_sha256") if event is not None else None
    if announced and announced != result["mapping_sha256"]:
        log.info(
            "the mapping changed since the event (sha256 %s announced, %s read): the newer content was "
            "stacked; its own event will start another run",
            announced[:12],
            result["mapping_sha256"][:12],
        )
    log.info(
        "intake: %d adapter(s) [%s] from %s (%s) -> %s (%d tensors, %.1f MB, mapping sha256 %s)",
        len(result["traits"]),
        ", ".join(result["traits"]),
        path,
        source,
        result["dataset_dir"],
        result["num_tensors"],
        result["num_bytes"] / 1e6,
        result["mapping_sha256"][:12],
    )
    from airflow.sdk import get_current_context

    steps.track_intake(get_current_context(), str(path), result)
    return {**result, "source": source}
