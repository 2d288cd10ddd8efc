"""What the API server adds to a pod before validating and storing it (defaulting and admission).

A client that reads its pod back sees these fields, as on a real cluster: ``restartPolicy: Always``
when none was given (a pod that should run once must say ``Never``), requests copied from limits,
the two ``NoExecute`` tolerations of the DefaultTolerationSeconds admission plugin, a QoS class.
"""

from __future__ import annotations

import random
import string
import uuid
from datetime import UTC, datetime
from typing import Any

from tests.fake_kubernetes.rules import parse_quantity

_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # apimachinery's rand.String: no vowels, no 0/1/3


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def stamp_metadata(obj: dict[str, Any], namespace: str | None, rng: random.Random) -> None:
    """Server-set metadata: uid, creationTimestamp, a name from ``generateName``."""
    meta = obj.setdefault("metadata", {})
    if not meta.get("name") and meta.get("generateName"):
        meta["name"] = meta["generateName"] + "".join(rng.choice(_SUFFIX_ALPHABET) for _ in range(5))
    if namespace is not None:
        meta["namespace"] = namespace
    meta["uid"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    meta["creationTimestamp"] = now_rfc3339()
    for key in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
        meta.pop(key, None)


def default_pod(pod: dict[str, Any]) -> None:
    """``SetDefaults_Pod`` / ``SetDefaults_PodSpec`` / ``SetDefaults_Container`` and admission."""
    pod.setdefault("apiVersion", "v1")
    pod.setdefault("kind", "Pod")
    pod["metadata"]["generation"] = 1
    spec = pod.setdefault("spec", {})
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    spec.setdefault("priority", 0)
    account = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
    spec["serviceAccountName"] = spec["serviceAccount"] = account
    for group in ("initContainers", "containers"):
        for container in spec.get(group) or []:
            _default_container(container)
    for volume in spec.get("volumes") or []:
        if "secret" in volume and volume["secret"] is not None:
            volume["secret"].setdefault("defaultMode", 420)
    tolerations = spec.setdefault("tolerations", [])
    keys = {t.get("key") for t in tolerations if t.get("effect") in ("NoExecute", None, "")}
    for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"):
        if key not in keys:
            tolerations.append(
                {"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
            )
    pod["status"] = {"phase": "Pending", "qosClass": qos_class(spec)}


def _default_container(container: dict[str, Any]) -> None:
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")
    image = container.get("image") or ""
    if "imagePullPolicy" not in container:
        tag = image.rsplit("/", 1)[-1]
        untagged = ":" not in tag and "@" not in image
        container["imagePullPolicy"] = "Always" if untagged or tag.endswith(":latest") else "IfNotPresent"
    resources = container.setdefault("resources", {})
    limits = resources.get("limits") or {}
    if limits:
        requests = resources.setdefault("requests", {})
        for name, value in limits.items():
            requests.setdefault(name, value)
    for port in container.get("ports") or []:
        port.setdefault("protocol", "TCP")


def qos_class(spec: dict[str, Any]) -> str:
    """Guaranteed: cpu and memory limits equal to requests in every container; BestEffort: none at all."""
    containers = (spec.get("containers") or []) + (spec.get("initContainers") or [])
    any_set = False
    guaranteed = True
    for container in containers:
        resources = container.get("resources") or {}
        limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
        for name in ("cpu", "memory"):
            if name in limits or name in requests:
                any_set = True
            if name not in limits or parse_quantity(limits[name]) != parse_quantity(
                requests.get(name, limits[name])
            ):
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


def pod_requests(spec: dict[str, Any]) -> dict[str, Any]:
    """What the scheduler counts: the sum over containers, at least the largest init container."""
    total: dict[str, Any] = {}
    for container in spec.get("containers") or []:
        for name, value in ((container.get("resources") or {}).get("requests") or {}).items():
            total[name] = total.get(name, 0) + parse_quantity(value)
    for container in spec.get("initContainers") or []:
        for name, value in ((container.get("resources") or {}).get("requests") or {}).items():
            total[name] = max(total.get(name, 0), parse_quantity(value))
    return total


def random_hex(rng: random.Random, length: int = 64) -> str:
    return "".join(rng.choice(string.hexdigits[:16]) for _ in range(length))
