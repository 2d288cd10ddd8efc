"""The fake's etcd: objects by resource, namespace and name, one resourceVersion counter, a watch
history, the Events recorder, and the figures tests assert on (pods created, pods at once).

Everything here runs under one re-entrant lock (``Store.lock``); ``changed`` is notified after every
write so that watches, log followers and the controller wake up.
"""

from __future__ import annotations

import copy
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tests.fake_kubernetes.defaults import now_rfc3339

WATCH_HISTORY = 5000  # events kept for watches that resume from a resourceVersion; older ones get 410


@dataclass
class Stats:
    """What a test asserts about the cluster's load: read after the calls under test have returned."""

    pods_created: int = 0
    pods_running: int = 0  # now: phase Running
    max_pods_running: int = 0
    pods_active: int = 0  # now: bound to a node and not finished (holding the node's resources)
    max_pods_active: int = 0
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)  # (method, route) -> count


@dataclass(frozen=True)
class WatchEvent:
    resource_version: int
    type: str  # ADDED | MODIFIED | DELETED
    resource: str
    namespace: str | None
    obj: dict[str, Any]


class Store:
    """Objects as the API returns them (plain JSON dicts); callers copy before handing them out."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.objects: dict[str, dict[tuple[str | None, str], dict[str, Any]]] = {}
        self.revision = 1
        self.history: list[WatchEvent] = []
        self.stats = Stats()
        self.created_pods: list[dict[str, Any]] = []
        self.born: dict[str, int] = {}  # uid -> revision at creation: the scheduler's queue order
        self._event_serial = 0
        self.closed = False

    # ----------------------------------------------------------------------------------------------
    # Objects
    # ----------------------------------------------------------------------------------------------

    def get(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self.objects.get(resource, {}).get((namespace, name))

    def list(self, resource: str, namespace: str | None = None) -> list[dict[str, Any]]:
        items = self.objects.get(resource, {})
        return [
            obj
            for (ns, _), obj in sorted(items.items(), key=lambda kv: (kv[0][0] or "", kv[0][1]))
            if namespace is None or ns == namespace
        ]

    def put(self, resource: str, obj: dict[str, Any], *, created: bool) -> dict[str, Any]:
        """Store ``obj`` (create or update), bump its resourceVersion, record the watch event."""
        meta = obj["metadata"]
        self.revision += 1
        meta["resourceVersion"] = str(self.revision)
        key = (meta.get("namespace"), meta["name"])
        self.objects.setdefault(resource, {})[key] = obj
        if created:
            self.born[meta["uid"]] = self.revision
        self._record("ADDED" if created else "MODIFIED", resource, obj)
        if resource == "pods":
            self._count_pods()
        return obj

    def remove(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        obj = self.objects.get(resource, {}).pop((namespace, name), None)
        if obj is not None:
            self.revision += 1
            obj["metadata"]["resourceVersion"] = str(self.revision)
            self._record("DELETED", resource, obj)
            if resource == "pods":
                self._count_pods()
        return obj

    def _record(self, kind: str, resource: str, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        self.history.append(
            WatchEvent(self.revision, kind, resource, meta.get("namespace"), copy.deepcopy(obj))
        )
        if len(self.history) > WATCH_HISTORY:
            del self.history[: len(self.history) - WATCH_HISTORY]
        self.changed.notify_all()

    def touch(self) -> None:
        """Wake every waiter (a log line arrived, a process ended) without a stored change."""
        with self.lock:
            self.changed.notify_all()

    def oldest_revision(self) -> int:
        return self.history[0].resource_version if self.history else self.revision

    def _count_pods(self) -> None:
        pods = self.objects.get("pods", {}).values()
        running = sum(1 for p in pods if p["status"].get("phase") == "Running")
        active = sum(
            1
            for p in pods
            if p["spec"].get("nodeName") and p["status"].get("phase") not in ("Succeeded", "Failed")
        )
        stats = self.stats
        stats.pods_running, stats.pods_active = running, active
        stats.max_pods_running = max(stats.max_pods_running, running)
        stats.max_pods_active = max(stats.max_pods_active, active)

    # ----------------------------------------------------------------------------------------------
    # Events (core/v1), deduplicated the way the client-go recorder does: same reason and message ->
    # the existing event's count and lastTimestamp go up.
    # ----------------------------------------------------------------------------------------------

    def event(
        self,
        pod: dict[str, Any],
        reason: str,
        message: str,
        *,
        warning: bool = False,
        component: str = "kubelet",
        field_path: str | None = None,
    ) -> None:
        meta = pod["metadata"]
        namespace = meta["namespace"]
        for existing in self.list("events", namespace):
            involved = existing["involvedObject"]
            if (
                involved.get("uid") == meta["uid"]
                and existing["reason"] == reason
                and existing["message"] == message
            ):
                existing["count"] += 1
                existing["lastTimestamp"] = now_rfc3339()
                self.put("events", existing, created=False)
                return
        self._event_serial += 1
        involved = {
            "kind": "Pod",
            "namespace": namespace,
            "name": meta["name"],
            "uid": meta["uid"],
            "apiVersion": "v1",
            "resourceVersion": meta.get("resourceVersion", ""),
        }
        if field_path:
            involved["fieldPath"] = field_path
        host = pod["spec"].get("nodeName") if component == "kubelet" else None
        stamp = now_rfc3339()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta['name']}.{self._event_serial:016x}",
                "namespace": namespace,
                "uid": f"00000000-0000-4000-8000-{self._event_serial:012x}",
                "creationTimestamp": stamp,
            },
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "source": {"component": component, **({"host": host} if host else {})},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
            "type": "Warning" if warning else "Normal",
            "eventTime": None,
            "reportingComponent": component,
            "reportingInstance": host or "",
        }
        self.put("events", event, created=True)
