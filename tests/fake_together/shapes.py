"""The answers the fake sends in ``answers="spec-minimal"`` mode: the least Together promises.

SDK 3.1.1's types declare more fields required than Together's public OpenAPI spec does (the model
limits: about twenty against nine; the file object: ``processing_status`` against ``Processed``). A
client tested only against the SDK's shape breaks on an answer the service is allowed to send, so in
this mode each JSON answer keeps only

* the fields the spec requires of its schema (``openapi_subset.json``, vendored from
  togethercomputer/openapi), and
* a few fields the spec leaves optional but the SDK documents and our code reads (``DOCUMENTED``,
  each with its reason), and
* unknown fields, as a newer service would add (``UNKNOWN``): a client must ignore them.

``answers="full"`` (the default) sends every field the SDK's types declare.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

SUBSET = Path(__file__).with_name("openapi_subset.json")
MODES = ("full", "spec-minimal")

# Optional in the spec, documented by the SDK, read by our code.
DOCUMENTED: dict[str, tuple[str, ...]] = {
    # SDK FineTuningListResponse.Data.suffix / x_model_output_name: the duplicate-job guard finds a
    # job by the key's tag in its suffix (it reads an entry without either in full, see the hook).
    "FinetuneResponseTruncated": ("suffix", "model_output_name"),
    # SDK FinetuneResponse: the tag again, and total_price (nano-USD), which the run reports.
    "FinetuneResponse": ("suffix", "model_output_name", "total_price"),
    # SDK FileResponse.validation_report: Together's reason for a rejected file (only once it ended).
    "FileResponse": ("validation_report",),
}
UNKNOWN: dict[str, Any] = {"x_added_later": {"nested": [1, "two"]}, "zz_flag": True}

# Handler name -> (schema of the answer, key of the list inside it or None for a single object).
ROUTE_SCHEMAS: dict[str, tuple[str, str | None]] = {
    "_files_preprocess": ("FileResponse", None),
    "_files_retrieve": ("FileResponse", None),
    "_files_list": ("FileResponse", "data"),
    "_limits": ("FineTuneModelLimits", None),
    "_jobs_create": ("FinetuneResponseTruncated", None),
    "_jobs_cancel": ("FinetuneResponseTruncated", None),
    "_jobs_list": ("FinetuneResponseTruncated", "data"),
    "_jobs_retrieve": ("FinetuneResponse", None),
    "_jobs_events": ("FineTuneEvent", "data"),
    "_jobs_checkpoints": ("FineTuneCheckpoint", "data"),
}
FILE_VERDICTS = ("COMPLETED", "FAILED", "INVALID_FORMAT")


@cache
def spec() -> dict[str, Any]:
    return json.loads(SUBSET.read_text())


def required(schema: str) -> tuple[str, ...]:
    return tuple(spec()["components"]["schemas"][schema].get("required", ()))


def minimal(schema: str, obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` cut down to what the spec requires (plus the documented and the unknown fields)."""
    if schema == "FileResponse":  # the spec's shape: a Processed flag, no processing_status
        status = obj.get("processing_status")
        obj = {**obj, "Processed": status in FILE_VERDICTS}
        if status not in FILE_VERDICTS:
            obj.pop("validation_report", None)
    keep = (*required(schema), *DOCUMENTED.get(schema, ()))
    out = {name: obj[name] for name in keep if name in obj}
    return {**out, **UNKNOWN}


def shape(handler: str, status: int, body: Any) -> Any:
    """The answer of ``handler`` in spec-minimal mode (errors and unlisted answers pass unchanged)."""
    route = ROUTE_SCHEMAS.get(handler)
    if route is None or status != 200 or not isinstance(body, dict):
        return body
    schema, list_key = route
    if list_key is None:
        return minimal(schema, body)
    items = body.get(list_key)
    if not isinstance(items, list):
        return body
    return {list_key: [minimal(schema, item) for item in items], **UNKNOWN}
