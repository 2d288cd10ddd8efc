"""Writing pods: create (decode, schema, defaults, validation, AlreadyExists), patch (JSON, merge and
strategic merge patches; only the fields a pod lets change), delete (grace period, preconditions,
propagation policy) and the eviction subresource.
"""

from __future__ import annotations

import copy
import json
import random
from typing import Any

from tests.fake_kubernetes.api_objects import decode_body, invalid, public, schema_pass
from tests.fake_kubernetes.cluster import Cluster
from tests.fake_kubernetes.defaults import default_pod, stamp_metadata
from tests.fake_kubernetes.rules import FieldError, not_supported
from tests.fake_kubernetes.store import Store
from tests.fake_kubernetes.validation import DecodeError, check_quantities, metadata_errors, pod_errors
from tests.fake_kubernetes.wire import ApiError, Reply, Request, bad_request, json_reply, not_found

REJECTED = "the server rejected our request due to an error in our request: "
_MUTABLE = (
    "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,"
    "`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),"
    "`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)"
)


def create_pod(store: Store, namespace: str, request: Request, rng: random.Random) -> Reply:
    pod = decode_body(request, "Pod", namespace)
    errors, headers = schema_pass(pod, request)
    try:
        check_quantities(pod)
    except DecodeError as exc:
        raise bad_request(str(exc)) from exc
    stamp_metadata(pod, namespace, rng)
    default_pod(pod)
    errors += pod_errors(pod)
    name = pod["metadata"].get("name", "")
    if errors:
        raise invalid("Pod", name, errors)
    if store.get("pods", namespace, name) is not None:
        raise ApiError(409, "AlreadyExists", f'pods "{name}" already exists', {"name": name, "kind": "pods"})
    account = pod["spec"]["serviceAccountName"]
    if account != "default" and store.get("serviceaccounts", namespace, account) is None:
        raise ApiError(
            403,
            "Forbidden",
            f'pods "{name}" is forbidden: error looking up service account {namespace}/{account}: '
            f'serviceaccount "{account}" not found',
            {"name": name, "kind": "pods"},
        )
    if request.arg("dryRun") == "All":
        return json_reply(public(pod), 201, headers)
    store.put("pods", pod, created=True)
    store.stats.pods_created += 1
    store.created_pods.append(copy.deepcopy(pod))
    return json_reply(public(pod), 201, headers)


# --------------------------------------------------------------------------------------------------
# Patch
# --------------------------------------------------------------------------------------------------


def _merge(target: Any, patch: Any, strategic: bool) -> Any:
    """RFC 7386 merge patch; ``strategic`` also merges lists of named objects by ``name``."""
    if isinstance(patch, dict):
        if patch.get("$patch") == "replace":
            return {k: v for k, v in patch.items() if k != "$patch"}
        result = dict(target) if isinstance(target, dict) else {}
        for key, value in patch.items():
            if value is None:
                result.pop(key, None)
            else:
                result[key] = _merge(result.get(key), value, strategic)
        return result
    if strategic and isinstance(patch, list) and isinstance(target, list):
        named = all(isinstance(x, dict) and "name" in x for x in patch + target)
        if named and target:
            merged = [copy.deepcopy(x) for x in target]
            for item in patch:
                index = next((i for i, x in enumerate(merged) if x["name"] == item["name"]), None)
                if item.get("$patch") == "delete":
                    if index is not None:
                        merged.pop(index)
                elif index is None:
                    merged.append(item)
                else:
                    merged[index] = _merge(merged[index], item, strategic)
            return merged
    return copy.deepcopy(patch)


def _pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


def _json_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    for op in ops:
        kind, parts = op.get("op"), _pointer(op.get("path", ""))
        parent: Any = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent.setdefault(part, {})
        last = parts[-1] if parts else ""
        try:
            if kind in ("add", "replace"):
                if isinstance(parent, list):
                    index = len(parent) if last == "-" else int(last)
                    if kind == "add":
                        parent.insert(index, op["value"])
                    else:
                        parent[index] = op["value"]
                else:
                    if kind == "replace" and last not in parent:
                        raise KeyError(last)
                    parent[last] = op["value"]
            elif kind == "remove":
                if isinstance(parent, list):
                    parent.pop(int(last))
                else:
                    del parent[last]
            elif kind == "test":
                current = parent[int(last)] if isinstance(parent, list) else parent.get(last)
                if current != op.get("value"):
                    raise ApiError(
                        422,
                        "Invalid",
                        REJECTED + f"testing value {op.get('path')} failed",
                    )
            else:
                raise bad_request(f"Unexpected kind: {kind}")
        except (KeyError, IndexError, ValueError) as exc:
            raise ApiError(422, "Invalid", REJECTED + str(exc)) from exc
    return doc


def patch_pod(store: Store, pod: dict[str, Any], request: Request) -> Reply:
    content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip()
    try:
        patch = json.loads(request.body or b"null")
    except ValueError as exc:
        raise bad_request(f"error decoding patch: {exc}") from exc
    if content_type == "application/json-patch+json":
        if not isinstance(patch, list):
            raise bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
        updated = _json_patch(pod, patch)
    elif content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
        if not isinstance(patch, dict):
            raise bad_request("error decoding patch: expected a JSON object")
        updated = _merge(pod, patch, strategic=content_type.startswith("application/strategic"))
    else:
        raise ApiError(
            415,
            "UnsupportedMediaType",
            "the body of the request was in an unknown format - accepted media types include: "
            "application/json-patch+json, application/merge-patch+json, "
            f"application/strategic-merge-patch+json (got {content_type!r})",
        )
    meta, new_meta = pod["metadata"], updated.get("metadata") or {}
    name = meta["name"]
    wanted_version = (patch.get("metadata") or {}).get("resourceVersion") if isinstance(patch, dict) else None
    if wanted_version and wanted_version != meta["resourceVersion"]:
        raise ApiError(
            409,
            "Conflict",
            f'Operation cannot be fulfilled on pods "{name}": the object has been modified; '
            "please apply your changes to the latest version and try again",
            {"name": name, "kind": "pods"},
        )
    if new_meta.get("name") != name or new_meta.get("namespace") != meta["namespace"]:
        raise bad_request(
            f"the name of the object ({new_meta.get('name')}) does not match the name on the URL ({name})"
        )
    for key in (
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "resourceVersion",
        "generation",
    ):
        if key in meta:
            new_meta[key] = meta[key]
        else:
            new_meta.pop(key, None)
    updated["status"] = pod["status"]  # the status subresource is separate
    errors = metadata_errors(new_meta) + _spec_change_errors(pod["spec"], updated.get("spec") or {})
    if errors:
        raise invalid("Pod", name, errors)
    if request.arg("dryRun") == "All":
        return json_reply(public(updated))
    pod.clear()
    pod.update(updated)
    store.put("pods", pod, created=False)
    return json_reply(public(pod))


def _spec_change_errors(old: dict[str, Any], new: dict[str, Any]) -> list[FieldError]:
    def comparable(spec: dict[str, Any]) -> dict[str, Any]:
        spec = copy.deepcopy(spec)
        for key in ("activeDeadlineSeconds", "terminationGracePeriodSeconds"):
            spec.pop(key, None)
        for group in ("containers", "initContainers"):
            for container in spec.get(group) or []:
                container.pop("image", None)
        spec.pop("tolerations", None)
        return spec

    errors = []
    if comparable(old) != comparable(new):
        errors.append(FieldError("Forbidden", "spec", None, _MUTABLE))
    old_tolerations = old.get("tolerations") or []
    new_tolerations = new.get("tolerations") or []
    if new_tolerations[: len(old_tolerations)] != old_tolerations:
        errors.append(
            FieldError(
                "Forbidden",
                "spec.tolerations",
                None,
                "existing toleration can not be modified except its tolerationSeconds",
            )
        )
    return errors


# --------------------------------------------------------------------------------------------------
# Delete and evict
# --------------------------------------------------------------------------------------------------


def delete_pod(store: Store, cluster: Cluster, pod: dict[str, Any], request: Request) -> Reply:
    options: dict[str, Any] = {}
    if request.body:
        try:
            options = json.loads(request.body) or {}
        except ValueError as exc:
            raise bad_request(f"couldn't decode DeleteOptions: {exc}") from exc
    grace = request.arg("gracePeriodSeconds")
    grace_seconds = int(grace) if grace not in (None, "") else options.get("gracePeriodSeconds")
    policy = request.arg("propagationPolicy") or options.get("propagationPolicy")
    if policy is not None and policy not in ("Foreground", "Background", "Orphan"):
        error = not_supported("propagationPolicy", policy, ["Foreground", "Background", "Orphan"])
        raise invalid("DeleteOptions", "", [error])
    preconditions = options.get("preconditions") or {}
    meta = pod["metadata"]
    for key, label in (("uid", "UID"), ("resourceVersion", "ResourceVersion")):
        if preconditions.get(key) and preconditions[key] != meta[key]:
            raise ApiError(
                409,
                "Conflict",
                f"Precondition failed: {label} in precondition: {preconditions[key]}, "
                f"{label} in object meta: {meta[key]}",
                {"name": meta["name"], "kind": "pods"},
            )
    if grace_seconds is not None and grace_seconds < 0:
        grace_seconds = 1
    if request.arg("dryRun") == "All" or options.get("dryRun") == ["All"]:
        return json_reply(public(pod))
    return json_reply(public(cluster.delete_pod(pod, grace_seconds)))


def evict_pod(store: Store, cluster: Cluster, namespace: str, name: str, request: Request) -> Reply:
    pod = store.get("pods", namespace, name)
    if pod is None:
        raise not_found("pods", name)
    try:
        eviction = json.loads(request.body or b"{}")
    except ValueError as exc:
        raise bad_request(f"couldn't decode Eviction: {exc}") from exc
    options = eviction.get("deleteOptions") or {}
    if pod["spec"].get("nodeName") and pod["status"].get("phase") not in ("Succeeded", "Failed"):
        condition = {
            "type": "DisruptionTarget",
            "status": "True",
            "reason": "EvictionByEvictionAPI",
            "message": "Eviction API: evicting",
        }
        run = cluster.kubelet.runs.get(pod["metadata"]["uid"])
        if run is not None:
            run.disruption = condition  # the kubelet keeps the condition in the statuses it writes
        conditions = [c for c in pod["status"].get("conditions") or [] if c["type"] != "DisruptionTarget"]
        pod["status"]["conditions"] = [{**condition, "lastProbeTime": None}, *conditions]
        store.put("pods", pod, created=False)
    cluster.delete_pod(pod, options.get("gracePeriodSeconds"))
    return json_reply(
        {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}, 201
    )


def read_pod(store: Store, namespace: str, name: str) -> dict[str, Any]:
    pod = store.get("pods", namespace, name)
    if pod is None:
        raise not_found("pods", name)
    return pod
