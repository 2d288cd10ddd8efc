"""The control loop behind the API: the scheduler binds pending pods, the kubelet runs bound ones,
graceful deletion waits for the kubelet, and the faults a test injected fire.

One thread wakes on every change (``Store.changed``) or every ``tick`` seconds; all work happens
under ``Store.lock``. Nothing here answers HTTP: ``server.py`` does, calling ``delete_pod`` and
reading the store.
"""

from __future__ import annotations

import copy
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.fake_kubernetes.defaults import now_rfc3339
from tests.fake_kubernetes.kubelet import ContainerRun, Kubelet, PodRun
from tests.fake_kubernetes.rules import parse_quantity
from tests.fake_kubernetes.runtime import Images
from tests.fake_kubernetes.scheduler import place
from tests.fake_kubernetes.selectors import Requirement, labels_match, parse_labels
from tests.fake_kubernetes.store import Store

FAULT_ACTIONS = ("oom_kill", "evict", "delete")
MIN_GAP = 0.002
EVICTION_MESSAGE = "The node was low on resource: memory. Threshold quantity: 100Mi, available: 51200Ki. "


@dataclass
class Fault:
    """A fault a test armed: fires on the pods its selector matches, once per pod, ``times`` pods."""

    action: str
    selector: list[Requirement]
    namespace: str | None
    on_log: re.Pattern[bytes] | None
    after_seconds: float | None
    remaining: int
    message: str
    fired: list[str] = field(default_factory=list)  # "namespace/name" of each pod it hit


class Cluster:
    def __init__(
        self,
        store: Store,
        images: Images,
        *,
        service: tuple[str, int],
        bugs: list[str],
        backoff: float,
        tick: float,
    ) -> None:
        self.store, self.tick, self.bugs = store, tick, bugs
        self.claims: dict[tuple[str, str], Path] = {}
        self.faults: list[Fault] = []
        self.kubelet = Kubelet(
            store, images, self.claims, service=service, bugs=bugs, on_line=self._on_line, backoff=backoff
        )
        self._last_schedule_message: dict[str, str] = {}
        self._next_disk_check = 0.0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True, name="fake-kubernetes-controller")
        self._thread.start()

    def stop(self) -> None:
        with self.store.lock:
            self.store.closed = True
            self.store.changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self.store.lock:
            self.kubelet.shutdown()

    def _loop(self) -> None:
        """Reconcile after each change, at most every ``MIN_GAP`` s (a chatty container notifies per line)."""
        last = 0.0
        with self.store.lock:
            while not self.store.closed:
                since = time.monotonic() - last
                if since < MIN_GAP:
                    self.store.changed.wait(MIN_GAP - since)
                    continue
                try:
                    self.reconcile()
                except Exception as exc:  # a bug of the fake: visible to the test, never a silent hang
                    self.bugs.append(f"controller: {type(exc).__name__}: {exc}")
                last = time.monotonic()
                self.store.changed.wait(self.tick)

    # ----------------------------------------------------------------------------------------------
    # One pass
    # ----------------------------------------------------------------------------------------------

    def reconcile(self) -> None:
        pods = self.store.list("pods")
        live = {p["metadata"]["uid"] for p in pods}
        for run in list(self.kubelet.runs.values()):
            if run.uid not in live:  # force-deleted: the kubelet kills what is left
                self.kubelet.forget(run)
        nodes = self.store.list("nodes")
        ips = {n["metadata"]["name"]: n["status"]["addresses"][0]["address"] for n in nodes}
        claims = set(self.claims)
        born = self.store.born
        queue = sorted(
            pods, key=lambda p: (-int(p["spec"].get("priority") or 0), born.get(p["metadata"]["uid"], 0))
        )
        for pod in queue:
            spec = pod["spec"]
            if not spec.get("nodeName") and not pod["metadata"].get("deletionTimestamp"):
                self._schedule(pod, nodes, pods, claims)
            if spec.get("nodeName") in ips:
                self.kubelet.sync(pod, ips[spec["nodeName"]])
        self._timed_faults()
        if time.monotonic() >= self._next_disk_check:
            self._next_disk_check = time.monotonic() + 0.5
            self._check_empty_dirs()

    def _schedule(
        self, pod: dict[str, Any], nodes: list[dict[str, Any]], pods: list[dict[str, Any]], claims: set
    ) -> None:
        placement = place(pod, nodes, pods, claims)
        meta, status = pod["metadata"], pod["status"]
        others = [c for c in status.get("conditions") or [] if c["type"] != "PodScheduled"]
        if placement.node is None:
            if self._last_schedule_message.get(meta["uid"]) == placement.message:
                return
            self._last_schedule_message[meta["uid"]] = placement.message
            condition = {
                "type": "PodScheduled",
                "status": "False",
                "lastProbeTime": None,
                "lastTransitionTime": now_rfc3339(),
                "reason": "Unschedulable",
                "message": placement.message,
            }
            status["conditions"] = [*others, condition]
            self.store.put("pods", pod, created=False)
            self.store.event(
                pod, "FailedScheduling", placement.message, warning=True, component="default-scheduler"
            )
            return
        self._last_schedule_message.pop(meta["uid"], None)
        pod["spec"]["nodeName"] = placement.node
        condition = {
            "type": "PodScheduled",
            "status": "True",
            "lastProbeTime": None,
            "lastTransitionTime": now_rfc3339(),
        }
        status["conditions"] = [*others, condition]
        self.store.put("pods", pod, created=False)
        self.store.event(
            pod,
            "Scheduled",
            f"Successfully assigned {meta['namespace']}/{meta['name']} to {placement.node}",
            component="default-scheduler",
        )

    # ----------------------------------------------------------------------------------------------
    # Deletion (the API's graceful delete, the registry's rules)
    # ----------------------------------------------------------------------------------------------

    def delete_pod(self, pod: dict[str, Any], grace: int | None) -> dict[str, Any]:
        """Unscheduled or finished pods go at once; running ones get ``deletionTimestamp`` + grace."""
        meta, spec = pod["metadata"], pod["spec"]
        if grace is None:
            grace = int(
                meta.get("deletionGracePeriodSeconds") or spec.get("terminationGracePeriodSeconds", 30)
            )
        if not spec.get("nodeName") or pod["status"].get("phase") in ("Succeeded", "Failed"):
            grace = 0
        if grace <= 0:
            self.store.remove("pods", meta["namespace"], meta["name"])
            run = self.kubelet.runs.get(meta["uid"])
            if run is not None:
                self.kubelet.forget(run)
            return copy.deepcopy(pod)
        current = meta.get("deletionGracePeriodSeconds")
        if current is None or grace < current:
            meta["deletionGracePeriodSeconds"] = grace
            meta["deletionTimestamp"] = (datetime.now(UTC) + timedelta(seconds=grace)).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            )
            run = self.kubelet.runs.get(meta["uid"])
            if run is not None and run.stopping:  # a shorter grace period on a second delete
                run.kill_at = min(run.kill_at or float("inf"), time.monotonic() + grace)
            self.store.put("pods", pod, created=False)
        return copy.deepcopy(pod)

    # ----------------------------------------------------------------------------------------------
    # Faults
    # ----------------------------------------------------------------------------------------------

    def inject(
        self,
        action: str,
        *,
        selector: str = "",
        namespace: str | None = None,
        on_log: str | None = None,
        after_seconds: float | None = None,
        times: int = 1,
        message: str | None = None,
    ) -> Fault:
        if action not in FAULT_ACTIONS:
            raise ValueError(f"unknown fault {action!r}; choose one of {FAULT_ACTIONS}")
        if on_log is None and after_seconds is None:
            after_seconds = 0.0
        fault = Fault(
            action,
            parse_labels(selector),
            namespace,
            re.compile(on_log.encode()) if on_log is not None else None,
            after_seconds,
            times,
            message or EVICTION_MESSAGE,
        )
        with self.store.lock:
            self.faults.append(fault)
            self.store.changed.notify_all()
        return fault

    def _applies(self, fault: Fault, pod: dict[str, Any]) -> bool:
        key = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
        return (
            fault.remaining > 0
            and key not in fault.fired
            and (fault.namespace is None or fault.namespace == pod["metadata"]["namespace"])
            and labels_match(fault.selector, pod)
        )

    def _on_line(self, run: PodRun, container: ContainerRun, line: bytes) -> None:
        pod = self._pod_of(run)
        if pod is None or run.stopping:
            return
        for fault in self.faults:
            if fault.on_log is not None and self._applies(fault, pod) and fault.on_log.search(line):
                self.fire(fault, pod, run)

    def _timed_faults(self) -> None:
        now = time.monotonic()
        for run in list(self.kubelet.runs.values()):
            pod = self._pod_of(run)
            if pod is None or run.stopping or not any(c.process is not None for c in run.containers):
                continue
            for fault in self.faults:
                due = fault.after_seconds is not None and now - run.started >= fault.after_seconds
                if fault.on_log is None and due and self._applies(fault, pod):
                    self.fire(fault, pod, run)

    def _pod_of(self, run: PodRun) -> dict[str, Any] | None:
        pod = self.store.get("pods", run.namespace, run.name)
        return pod if pod is not None and pod["metadata"]["uid"] == run.uid else None

    def fire(self, fault: Fault, pod: dict[str, Any], run: PodRun) -> None:
        fault.remaining -= 1
        fault.fired.append(f"{run.namespace}/{run.name}")
        if fault.action == "oom_kill":
            self.kubelet.oom_kill(run)
        elif fault.action == "evict":
            self.kubelet.evict(run, pod, fault.message)
        else:
            self.delete_pod(pod, None)

    def _check_empty_dirs(self) -> None:
        for run in list(self.kubelet.runs.values()):
            pod = self._pod_of(run)
            if pod is None or run.stopping or run.volumes is None:
                continue
            for volume in pod["spec"].get("volumes") or []:
                limit = (volume.get("emptyDir") or {}).get("sizeLimit")
                if limit is None or volume["name"] not in run.volumes:
                    continue
                used = sum(p.stat().st_size for p in run.volumes[volume["name"]].rglob("*") if p.is_file())
                if used > parse_quantity(limit):
                    message = f'Usage of EmptyDir volume "{volume["name"]}" exceeds the limit "{limit}". '
                    self.kubelet.evict(run, pod, message)
                    break
