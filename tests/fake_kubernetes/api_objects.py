"""Reading the API: get, list (label and field selectors, ``limit``/``continue``) and watch, for every
resource the fake stores; and the simple writes (Secrets, ConfigMaps, Namespaces).

A watch is the API server's: newline-delimited JSON ``{"type", "object"}`` in chunks. Without a
``resourceVersion`` (or with ``"0"``) it starts with an ``ADDED`` event per existing object; with one,
it replays what happened after it, or sends an ``ERROR`` event with a 410 ``Expired`` Status when
that version is older than the history kept. It ends after ``timeoutSeconds``.
"""

from __future__ import annotations

import base64
import copy
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

from tests.fake_kubernetes.defaults import stamp_metadata
from tests.fake_kubernetes.rules import FieldError
from tests.fake_kubernetes.selectors import SelectorError, labels_match, parse_fields, parse_labels
from tests.fake_kubernetes.store import Store
from tests.fake_kubernetes.validation import (
    DecodeError,
    check_schema,
    drop_unknown,
    metadata_errors,
    secret_errors,
)
from tests.fake_kubernetes.wire import ApiError, Reply, Request, bad_request, json_reply, not_found

KINDS = {
    "pods": "Pod",
    "events": "Event",
    "secrets": "Secret",
    "configmaps": "ConfigMap",
    "namespaces": "Namespace",
    "nodes": "Node",
    "persistentvolumeclaims": "PersistentVolumeClaim",
}


def public(obj: dict[str, Any], *, item: bool = False) -> dict[str, Any]:
    """A copy to send; list items carry no ``kind``/``apiVersion``, as in the API's typed lists."""
    out = copy.deepcopy(obj)
    if item:
        out.pop("kind", None)
        out.pop("apiVersion", None)
    return out


def invalid(kind: str, name: str, errors: list[FieldError]) -> ApiError:
    text = str(errors[0]) if len(errors) == 1 else "[" + ", ".join(str(e) for e in errors) + "]"
    return ApiError(
        422,
        "Invalid",
        f'{kind} "{name}" is invalid: {text}',
        {"name": name, "kind": kind, "causes": [e.cause() for e in errors]},
    )


def get(store: Store, resource: str, namespace: str | None, name: str) -> Reply:
    obj = store.get(resource, namespace, name)
    if obj is None:
        raise not_found(resource, name)
    return json_reply(public(obj))


def _matcher(resource: str, request: Request) -> Callable[[dict[str, Any]], bool]:
    try:
        requirements = parse_labels(request.arg("labelSelector"))
        fields = parse_fields(request.arg("fieldSelector"), resource)
    except SelectorError as exc:
        raise bad_request(str(exc)) from exc
    return lambda obj: labels_match(requirements, obj) and fields(obj)


def list_or_watch(store: Store, resource: str, namespace: str | None, request: Request) -> Reply:
    matches = _matcher(resource, request)
    if request.arg("resourceVersionMatch") and not request.arg("resourceVersion"):
        error = FieldError(
            "Forbidden",
            "resourceVersionMatch",
            None,
            "resourceVersionMatch is forbidden unless resourceVersion is provided",
        )
        raise invalid("ListOptions", "", [error])
    if request.flag("watch"):
        return Reply(
            200,
            headers={"Content-Type": "application/json"},
            stream=_watch(store, resource, namespace, request, matches),
        )
    items = [public(o, item=True) for o in store.list(resource, namespace) if matches(o)]
    metadata: dict[str, Any] = {"resourceVersion": str(store.revision)}
    limit = int(request.arg("limit") or 0)
    offset = int(base64.b64decode(request.arg("continue") or "MA==").decode() or 0)
    if limit > 0:
        if offset + limit < len(items):
            metadata["continue"] = base64.b64encode(str(offset + limit).encode()).decode()
            metadata["remainingItemCount"] = len(items) - offset - limit
        items = items[offset : offset + limit]
    return json_reply(
        {"kind": KINDS[resource] + "List", "apiVersion": "v1", "metadata": metadata, "items": items}
    )


def _watch(
    store: Store,
    resource: str,
    namespace: str | None,
    request: Request,
    matches: Callable[[dict[str, Any]], bool],
) -> Iterator[bytes]:
    timeout = float(request.arg("timeoutSeconds") or 1800)
    deadline = time.monotonic() + timeout
    since = request.arg("resourceVersion")

    def line(kind: str, obj: dict[str, Any]) -> bytes:
        return json.dumps({"type": kind, "object": obj}).encode() + b"\n"

    with store.lock:
        if since in (None, "", "0"):
            last = store.revision
            initial = [line("ADDED", public(o)) for o in store.list(resource, namespace) if matches(o)]
        else:
            last = int(since)
            initial = []
            if last < store.oldest_revision() - 1:
                status = {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Failure",
                    "message": f"too old resource version: {last} ({store.oldest_revision() - 1})",
                    "reason": "Expired",
                    "code": 410,
                }
                initial = [line("ERROR", status)]
                deadline = 0.0
    yield from initial
    while time.monotonic() < deadline:
        with store.lock:
            batch = [e for e in store.history if e.resource_version > last]
            if not batch and not store.closed:
                store.changed.wait(min(0.5, max(deadline - time.monotonic(), 0)))
                batch = [e for e in store.history if e.resource_version > last]
            if batch:
                last = batch[-1].resource_version
            closed = store.closed
        sent = False
        for event in batch:
            if (
                event.resource == resource
                and (namespace is None or event.namespace == namespace)
                and matches(event.obj)
            ):
                sent = True
                yield line(event.type, public(event.obj))
        if closed:
            return
        if not sent:
            yield b""


# --------------------------------------------------------------------------------------------------
# Simple writes
# --------------------------------------------------------------------------------------------------


def decode_body(request: Request, kind: str, namespace: str | None) -> dict[str, Any]:
    """Parse the body as the API server's decoder would, or raise its 400."""
    try:
        obj = json.loads(request.body or b"null")
    except ValueError as exc:
        raise bad_request(f"couldn't get version/kind; json parse error: {exc}") from exc
    if not isinstance(obj, dict):
        raise bad_request(
            f"couldn't get version/kind; json parse error: expected an object, got {type(obj).__name__}"
        )
    obj.setdefault("apiVersion", "v1")
    obj.setdefault("kind", kind)
    if obj["kind"] != kind or obj["apiVersion"] != "v1":
        raise bad_request(
            f"the API version in the data ({obj['apiVersion']}) does not match the expected API version (v1)"
            if obj["apiVersion"] != "v1"
            else f"the kind in the data ({obj['kind']}) does not match the expected kind ({kind})"
        )
    meta = obj.setdefault("metadata", {}) or {}
    obj["metadata"] = meta
    if namespace is not None and meta.get("namespace") not in (None, "", namespace):
        raise bad_request(
            "the namespace of the provided object does not match the namespace sent on the request"
        )
    return obj


def schema_pass(obj: dict[str, Any], request: Request) -> tuple[list[FieldError], dict[str, str]]:
    """Types (400), unknown fields (a ``Warning`` header, or 400 under Strict), then Required etc."""
    try:
        result = check_schema(obj)
    except DecodeError as exc:
        raise bad_request(str(exc)) from exc
    headers: dict[str, str] = {}
    mode = request.arg("fieldValidation") or "Warn"
    if result.unknown:
        if mode == "Strict":
            text = ", ".join(f'unknown field "{u}"' for u in result.unknown)
            raise bad_request(f"strict decoding error: {text}")
        drop_unknown(obj, result.unknown)
        if mode == "Warn":
            headers["Warning"] = ", ".join(f'299 - "unknown field \\"{u}\\""' for u in result.unknown)
    return result.errors, headers


def create_simple(store: Store, resource: str, namespace: str | None, request: Request, rng: Any) -> Reply:
    """Secrets, ConfigMaps and Namespaces: validated, ``stringData`` folded into ``data``."""
    kind = KINDS[resource]
    obj = decode_body(request, kind, namespace)
    errors, headers = schema_pass(obj, request)
    if resource == "secrets":
        errors += secret_errors(obj)
        data = obj.setdefault("data", {}) or {}
        for key, value in (obj.pop("stringData", None) or {}).items():
            data[key] = base64.b64encode(value.encode()).decode()
        obj["data"] = data
        obj.setdefault("type", "Opaque")
    else:
        errors += metadata_errors(
            obj["metadata"], name_check="label" if resource == "namespaces" else "subdomain"
        )
    stamp_metadata(obj, namespace, rng)
    name = obj["metadata"].get("name", "")
    if errors:
        raise invalid(kind, name, errors)
    if store.get(resource, namespace, name) is not None:
        raise ApiError(
            409, "AlreadyExists", f'{resource} "{name}" already exists', {"name": name, "kind": resource}
        )
    if resource == "namespaces":
        obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = name
        obj["spec"], obj["status"] = {"finalizers": ["kubernetes"]}, {"phase": "Active"}
    if request.arg("dryRun") != "All":
        store.put(resource, obj, created=True)
    return json_reply(public(obj), 201, headers)


def delete_simple(store: Store, resource: str, namespace: str | None, name: str) -> Reply:
    obj = store.remove(resource, namespace, name)
    if obj is None:
        raise not_found(resource, name)
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": name, "kind": resource, "uid": obj["metadata"]["uid"]},
    }
    return json_reply(body)
