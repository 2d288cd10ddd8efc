"""OpenLineage: which shard made which adapter, and which adapters made which mapping.

Marquez, DataHub or Astro show this graph only if every step names its datasets the same way, so the
names follow the OpenLineage naming spec: a local file is namespace ``file`` with its absolute path, an
object is namespace ``s3://bucket`` with its key, a Together resource is the API's origin
(``https://api.together.xyz``) with ``files/<id>`` or ``fine-tunes/<id>``.

Two ways in, the two Airflow supports: the operators (the Together steps, the training pod) answer the
listener's ``get_openlineage_facets_on_complete``; the decorated tasks (local training, the pod's
install, publish_mapping, intake) report their datasets to Airflow's hook lineage collector and their
run facet through :func:`trait_run_facets`, which ``[openlineage] custom_run_facets`` names.

Optional at run time: without the provider, or with OpenLineage unconfigured, every function here is a
no-op and nothing is imported.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FACET_NAME = "traitLora"
RUN_FACETS_FUNCTION = "trait_lora.provider.tracking.lineage.trait_run_facets"
_SCHEMA_URL = "https://github.com/trait-lora/trait-lora/blob/main/docs/lineage.md#traitlora-run-facet"

# Facets a decorated task recorded, by task instance, until the listener (same process) collects them.
_PENDING: dict[tuple[str, str, str, int], dict[str, Any]] = {}


def enabled() -> bool:
    """Whether the OpenLineage provider is installed and configured (it disables itself without a
    transport, and then nothing should be collected)."""
    try:
        from airflow.providers.openlineage import conf
    except ImportError:
        return False
    try:
        return not conf.is_disabled()
    except Exception:  # a broken [openlineage] section must not fail training
        return False


def dataset_id(location: str | Path) -> tuple[str, str]:
    """(namespace, name) of a file, folder or object, per the OpenLineage naming spec."""
    from trait_lora.core.storage.location import parse_location

    where = parse_location(str(location))
    if where.is_local:
        assert where.path is not None
        return "file", str(where.path.resolve())
    return f"s3://{where.bucket}", where.prefix.strip("/") or "/"


def dataset_uri(location: str | Path) -> str:
    """The same dataset as an Airflow Asset URI (what the hook lineage collector takes)."""
    namespace, name = dataset_id(location)
    return f"file://{name}" if namespace == "file" else f"{namespace}/{name}"


def together_id(base_url: str, kind: str, ident: str) -> tuple[str, str]:
    """(namespace, name) of a Together file or fine-tuning job: the API origin, then ``kind/id``."""
    from urllib.parse import urlsplit

    parts = urlsplit(base_url)
    return f"{parts.scheme}://{parts.netloc}", f"{kind}/{ident}"


def run_facet(fields: Mapping[str, Any]) -> Any:
    """Our run facet (trait, job key, job id, price, adapter sha256, eval figures), empty values left out."""
    values = {k: v for k, v in fields.items() if v is not None and v != {}}
    return _facet_class()(**{k: values.get(k) for k in _FACET_FIELDS})


_FACET_FIELDS = (
    "trait",
    "action",
    "backend",
    "job_key",
    "job_id",
    "file_id",
    "status",
    "estimated_price_usd",
    "total_price_usd",
    "shard_sha256",
    "adapter_sha256",
    "adapter_uri",
    "final_loss",
    "eval",
    "mapping_sha256",
    "traits",
    "failed",
)


@functools.cache
def _facet_class() -> type:
    import attrs
    from openlineage.client.facet_v2 import RunFacet

    @attrs.define
    class TraitLoraRunFacet(RunFacet):
        """What a reader of the lineage graph needs about one trait's step (or the mapping)."""

        trait: str | None = None
        action: str | None = None
        backend: str | None = None
        job_key: str | None = None
        job_id: str | None = None
        file_id: str | None = None
        status: str | None = None
        estimated_price_usd: float | None = None
        total_price_usd: float | None = None
        shard_sha256: str | None = None
        adapter_sha256: str | None = None
        adapter_uri: str | None = None
        final_loss: float | None = None
        eval: dict[str, Any] | None = None
        mapping_sha256: str | None = None
        traits: list[str] | None = None
        failed: list[str] | None = None

        @staticmethod
        def _get_schema() -> str:
            return _SCHEMA_URL

    return TraitLoraRunFacet


def operator_lineage(
    inputs: Iterable[tuple[str, str]], outputs: Iterable[tuple[str, str]], facet: Mapping[str, Any]
) -> Any:
    """What an operator's ``get_openlineage_facets_on_complete`` returns; None without the provider."""
    try:
        from airflow.providers.openlineage.extractors import OperatorLineage
        from openlineage.client.event_v2 import Dataset
    except ImportError:
        return None
    return OperatorLineage(
        inputs=[Dataset(namespace=ns, name=name) for ns, name in inputs],
        outputs=[Dataset(namespace=ns, name=name) for ns, name in outputs],
        run_facets={FACET_NAME: run_facet(facet)},
    )


def report(
    context: Mapping[str, Any],
    *,
    inputs: Iterable[str | Path] = (),
    outputs: Iterable[str | Path] = (),
    facet: Mapping[str, Any] | None = None,
) -> None:
    """A decorated task's lineage: its datasets to the hook lineage collector, its facet for
    :func:`trait_run_facets`. Never raises: lineage must not fail a trait that trained."""
    if not enabled():
        return
    try:
        from airflow.sdk.lineage import get_hook_lineage_collector

        collector = get_hook_lineage_collector()
        for location in inputs:
            collector.add_input_asset(context=_REPORTER, uri=dataset_uri(location))
        for location in outputs:
            collector.add_output_asset(context=_REPORTER, uri=dataset_uri(location))
        if facet is not None:
            _PENDING[_ti_key(context["ti"])] = dict(facet)
    except Exception as exc:
        log.warning("OpenLineage: could not record this task's datasets (%s); the task goes on", exc)


def fresh_task() -> None:
    """An empty hook lineage collector for the task about to run.

    In a deployment each task runs in its own process and starts empty anyway. In one process
    (``dag.test``, ``trait-lora train``) the collector would carry every earlier task's datasets into
    the next task's events (publish_mapping would list every shard as its input). Called by the
    plugin's listener (``TaskLineageScope``) before OpenLineage builds the task's START event.
    """
    if not enabled():
        return
    try:
        from airflow.sdk.lineage import get_hook_lineage_collector

        get_hook_lineage_collector.cache_clear()
    except (ImportError, AttributeError):
        pass


def trait_run_facets(task_instance: Any, ti_state: Any) -> dict[str, Any]:
    """``[openlineage] custom_run_facets`` entry: the facet a decorated task reported, on its
    complete or fail event (the running event has none yet)."""
    fields = _PENDING.get(_ti_key(task_instance))
    if fields is None:
        return {}
    return {FACET_NAME: run_facet(fields)}


class _Reporter:
    """The lineage context of what our own code (not a hook) read and wrote."""

    def __repr__(self) -> str:
        return "trait-lora"


_REPORTER = _Reporter()


def _ti_key(ti: Any) -> tuple[str, str, str, int]:
    map_index = getattr(ti, "map_index", -1)
    return (str(ti.dag_id), str(ti.task_id), str(ti.run_id), -1 if map_index is None else int(map_index))


def trait_facet(plan: Mapping[str, Any], result: Mapping[str, Any], backend: str) -> dict[str, Any]:
    """The run facet of a trait's training or install step (local, pod or Together download)."""
    return {
        "trait": plan["trait"],
        "action": result.get("action"),
        "backend": backend,
        "job_key": plan.get("job_key"),
        "job_id": result.get("job_id"),
        "total_price_usd": result.get("total_price"),
        "shard_sha256": plan.get("shard_sha256"),
        "adapter_sha256": result.get("adapter_sha256"),
        "adapter_uri": result.get("adapter_path"),
        "final_loss": result.get("final_loss"),
        "eval": result.get("eval"),
    }


def report_trait(
    context: Mapping[str, Any], plan: Mapping[str, Any], result: Mapping[str, Any], backend: str
) -> None:
    """Local training (or the pod's install): the shard in, the installed adapter out."""
    from trait_lora.core.shards.remote import shard_source

    outputs = [str(result["adapter_path"])] if result.get("adapter_path") else []
    report(context, inputs=[shard_source(plan)], outputs=outputs, facet=trait_facet(plan, result, backend))


def report_mapping(
    context: Mapping[str, Any], output_dir: str, mapping_path: str, mapping: Mapping[str, Any], digest: str
) -> None:
    """publish_mapping: every published adapter in, ``hypernetwork_data.json`` out."""
    entries = mapping.get("traits") or {}
    rows = entries.values() if isinstance(entries, Mapping) else entries
    adapters = [
        str(row.get("adapter_url") or f"{str(output_dir).rstrip('/')}/{row['adapter_path']}")
        for row in rows
        if isinstance(row, Mapping) and row.get("adapter_path")
    ]
    facet = {
        "mapping_sha256": digest,
        "traits": sorted(str(r.get("trait")) for r in rows if isinstance(r, Mapping)),
        "failed": sorted(mapping.get("failed") or {}),
    }
    report(context, inputs=adapters, outputs=[mapping_path], facet=facet)
