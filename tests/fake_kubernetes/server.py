"""A fake Kubernetes API server (core/v1) on 127.0.0.1 with a scheduler and a process kubelet, for the
real ``kubernetes`` / ``kubernetes_asyncio`` clients and the cncf.kubernetes provider.

It claims to be Kubernetes 1.37 and validates as that API server does (the OpenAPI schema of 1.37
from ``kubernetes-validate``, then the rules in ``validation.py``/``rules.py``); it schedules onto the
nodes a test gives it (``scheduler.py``) and runs each container's argv as a local process
(``kubelet.py``; images, env and volumes: ``runtime.py``).

Routes (``/api/v1``): namespaces (get, list, create), nodes (get, list), pods (create, get, list,
watch, patch, delete, ``status``, ``log``, ``eviction``; ``exec``/``attach`` answer 400 "Upgrade request
required" as to any client that cannot upgrade to a WebSocket), events (list, watch, get), secrets and
configmaps (create, get, list, delete), persistentvolumeclaims (get, list). Every answer that is not
a success is the API's ``Status``; an unknown path is its 404.

What tests read: ``stats`` (pods created, most pods running / holding a node at once, requests per
route), ``created_pods``, ``launches`` (argv, env and mounts of each container start), ``bugs`` (the
fake's own crashes and setups it cannot model: the fixture fails the test on any).
"""

from __future__ import annotations

import base64
import copy
import random
import re
import secrets
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.fake_kubernetes import api_objects, api_pods
from tests.fake_kubernetes.api_objects import public
from tests.fake_kubernetes.cluster import Cluster, Fault
from tests.fake_kubernetes.defaults import now_rfc3339, stamp_metadata
from tests.fake_kubernetes.kubelet import Launch
from tests.fake_kubernetes.logs import pod_log
from tests.fake_kubernetes.runtime import Images
from tests.fake_kubernetes.selectors import labels_match, parse_labels
from tests.fake_kubernetes.store import Stats, Store
from tests.fake_kubernetes.validation import KUBERNETES_VERSION, DecodeError, check_schema
from tests.fake_kubernetes.wire import ApiError, Reply, Request, Server, bad_request, json_reply, not_found

_NS = r"/api/v1/namespaces/(?P<ns>[^/]+)"
_READ_ONLY = "persistentvolumeclaims"


class FakeKubernetes:
    """Use as a context manager. Thread-safe: every change goes through ``Store.lock``."""

    def __init__(
        self,
        *,
        token: str | None = None,
        default_node: bool = True,
        backoff: float = 0.2,
        tick: float = 0.02,
        seed: int | None = None,
    ) -> None:
        self.token = token if token is not None else secrets.token_urlsafe(16)
        self.store = Store()
        self.images = Images()
        self.bugs: list[str] = []
        self.rng = random.Random(seed)
        self._backoff, self._tick = backoff, tick
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self.cluster: Cluster | None = None
        self._default_node = default_node
        self._http_faults: list[list[Any]] = []  # [method, route, times left, status or None (lost)]
        self._routes: list[tuple[str, re.Pattern[str], str, Callable[..., Reply]]] = [
            (method, re.compile(pattern + "$"), name, handler)
            for method, pattern, name, handler in (
                ("GET", r"/version/?", "version", self._version),
                ("GET", r"/api/?", "api", self._api),
                ("GET", r"/api/v1/?", "api/v1", self._api_v1),
                ("GET", r"/api/v1/namespaces", "namespaces", self._list_cluster),
                ("POST", r"/api/v1/namespaces", "namespaces", self._create_namespace),
                ("GET", r"/api/v1/namespaces/(?P<name>[^/]+)", "namespace", self._get_cluster),
                ("GET", r"/api/v1/nodes", "nodes", self._list_cluster),
                ("GET", r"/api/v1/nodes/(?P<name>[^/]+)", "node", self._get_cluster),
                (
                    "GET",
                    r"/api/v1/(?P<resource>pods|events|secrets|configmaps|persistentvolumeclaims)",
                    "all",
                    self._list_all,
                ),
                (
                    "GET",
                    _NS + r"/(?P<resource>pods|events|secrets|configmaps|persistentvolumeclaims)",
                    "list",
                    self._list,
                ),
                ("POST", _NS + r"/pods", "pods", self._create_pod),
                ("POST", _NS + r"/(?P<resource>secrets|configmaps)", "create", self._create),
                ("GET", _NS + r"/pods/(?P<name>[^/]+)", "pod", self._get_pod),
                ("GET", _NS + r"/pods/(?P<name>[^/]+)/status", "pods/status", self._get_pod),
                ("PATCH", _NS + r"/pods/(?P<name>[^/]+)", "pod", self._patch_pod),
                ("DELETE", _NS + r"/pods/(?P<name>[^/]+)", "pod", self._delete_pod),
                ("GET", _NS + r"/pods/(?P<name>[^/]+)/log", "pods/log", self._log),
                ("POST", _NS + r"/pods/(?P<name>[^/]+)/eviction", "pods/eviction", self._evict),
                (
                    "GET",
                    _NS + r"/pods/(?P<name>[^/]+)/(?:exec|attach|portforward)",
                    "pods/exec",
                    self._upgrade,
                ),
                (
                    "POST",
                    _NS + r"/pods/(?P<name>[^/]+)/(?:exec|attach|portforward)",
                    "pods/exec",
                    self._upgrade,
                ),
                (
                    "GET",
                    _NS + r"/(?P<resource>events|secrets|configmaps|persistentvolumeclaims)/(?P<name>[^/]+)",
                    "get",
                    self._get,
                ),
                (
                    "DELETE",
                    _NS + r"/(?P<resource>secrets|configmaps)/(?P<name>[^/]+)",
                    "delete",
                    self._delete,
                ),
            )
        ]

    # ----------------------------------------------------------------------------------------------
    # Lifecycle
    # ----------------------------------------------------------------------------------------------

    def start(self) -> FakeKubernetes:
        if self._server is not None:
            return self
        self._server = Server(("127.0.0.1", 0), self)
        self.cluster = Cluster(
            self.store,
            self.images,
            service=("127.0.0.1", self.port),
            bugs=self.bugs,
            backoff=self._backoff,
            tick=self._tick,
        )
        for namespace in ("default", "kube-system", "kube-public"):
            self.add_namespace(namespace)
        if self._default_node:
            self.add_node("node-1")
        self.cluster.start()
        self._thread = self._server.serve("fake-kubernetes", poll_interval=0.05)
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        assert self.cluster is not None
        self.cluster.stop()  # processes killed, followers and watches released
        self._server.close()
        self._server = None

    def __enter__(self) -> FakeKubernetes:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the fake first"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ----------------------------------------------------------------------------------------------
    # Client configuration
    # ----------------------------------------------------------------------------------------------

    def kubeconfig(self, namespace: str = "default") -> dict[str, Any]:
        """A kubeconfig (as a dict) whose current context is this fake, with its bearer token."""
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": self.token}}],
            "contexts": [
                {"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}
            ],
            "current-context": "fake",
        }

    def airflow_connection(self, namespace: str = "default") -> dict[str, Any]:
        """An Airflow connection (JSON form of ``AIRFLOW_CONN_<ID>``) the cncf.kubernetes hooks accept:
        ``kube_config`` in the extra, read by both ``KubernetesHook`` and ``AsyncKubernetesHook``."""
        return {
            "conn_type": "kubernetes",
            "extra": {"in_cluster": False, "kube_config": self.kubeconfig(namespace), "namespace": namespace},
        }

    # ----------------------------------------------------------------------------------------------
    # Cluster setup by tests
    # ----------------------------------------------------------------------------------------------

    def add_node(
        self,
        name: str,
        *,
        cpu: str = "8",
        memory: str = "32Gi",
        gpus: int = 0,
        labels: dict[str, str] | None = None,
        taints: list[dict[str, str]] | None = None,
        pods: int = 110,
        unschedulable: bool = False,
    ) -> None:
        """A Ready node; ``gpus`` > 0 adds ``nvidia.com/gpu`` to its capacity (the device plugin's)."""
        with self.store.lock:
            count = len(self.store.list("nodes")) + 1
            resources = {"cpu": cpu, "memory": memory, "pods": str(pods), "ephemeral-storage": "100Gi"}
            if gpus:
                resources["nvidia.com/gpu"] = str(gpus)
            node: dict[str, Any] = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "labels": {
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        **(labels or {}),
                    },
                },
                "spec": {"taints": list(taints or []), **({"unschedulable": True} if unschedulable else {})},
                "status": {
                    "capacity": dict(resources),
                    "allocatable": dict(resources),
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True",
                            "reason": "KubeletReady",
                            "message": "kubelet is posting ready status",
                            "lastHeartbeatTime": now_rfc3339(),
                            "lastTransitionTime": now_rfc3339(),
                        }
                    ],
                    "addresses": [
                        {"type": "InternalIP", "address": f"10.0.0.{count + 1}"},
                        {"type": "Hostname", "address": name},
                    ],
                    "nodeInfo": {
                        "machineID": f"{count:032x}",
                        "systemUUID": f"00000000-0000-4000-8000-{count:012x}",
                        "bootID": f"00000000-0000-4000-9000-{count:012x}",
                        "kernelVersion": "6.8.0",
                        "osImage": "Ubuntu 24.04 LTS",
                        "containerRuntimeVersion": "containerd://2.1.4",
                        "kubeletVersion": f"v{KUBERNETES_VERSION}",
                        "kubeProxyVersion": f"v{KUBERNETES_VERSION}",
                        "operatingSystem": "linux",
                        "architecture": "amd64",
                    },
                },
            }
            stamp_metadata(node, None, self.rng)
            self.store.put("nodes", node, created=True)

    def add_namespace(self, name: str) -> None:
        with self.store.lock:
            namespace = {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}},
                "spec": {"finalizers": ["kubernetes"]},
                "status": {"phase": "Active"},
            }
            stamp_metadata(namespace, None, self.rng)
            self.store.put("namespaces", namespace, created=True)

    def add_secret(
        self, name: str, data: dict[str, str], namespace: str = "default", type: str = "Opaque"
    ) -> None:
        with self.store.lock:
            secret = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": name},
                "type": type,
                "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
            }
            stamp_metadata(secret, namespace, self.rng)
            self.store.put("secrets", secret, created=True)

    def add_configmap(self, name: str, data: dict[str, str], namespace: str = "default") -> None:
        with self.store.lock:
            configmap = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": name},
                "data": dict(data),
            }
            stamp_metadata(configmap, namespace, self.rng)
            self.store.put("configmaps", configmap, created=True)

    def add_pvc(self, name: str, folder: str | Path, namespace: str = "default", size: str = "100Gi") -> None:
        """A Bound claim whose volume is the host folder ``folder`` (see ``runtime.py`` on mounts)."""
        assert self.cluster is not None, "start() the fake first"
        with self.store.lock:
            claim = {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": name},
                "spec": {
                    "accessModes": ["ReadWriteMany"],
                    "resources": {"requests": {"storage": size}},
                    "volumeName": f"pv-{name}",
                },
                "status": {"phase": "Bound", "accessModes": ["ReadWriteMany"], "capacity": {"storage": size}},
            }
            stamp_metadata(claim, namespace, self.rng)
            self.store.put("persistentvolumeclaims", claim, created=True)
            self.cluster.claims[(namespace, name)] = Path(folder)

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
        """Arm a fault for pods matching the label ``selector``: ``oom_kill`` (exit 137, OOMKilled),
        ``evict`` (node pressure: Failed, reason Evicted) or ``delete`` (a graceful delete by someone
        else). It fires when a container of the pod logs a line matching ``on_log`` (a regex), or
        ``after_seconds`` after the pod started; once per pod, on ``times`` pods."""
        assert self.cluster is not None, "start() the fake first"
        return self.cluster.inject(
            action,
            selector=selector,
            namespace=namespace,
            on_log=on_log,
            after_seconds=after_seconds,
            times=times,
            message=message,
        )

    def oom_kill(self, name: str, namespace: str = "default", container: str | None = None) -> bool:
        assert self.cluster is not None
        with self.store.lock:
            pod = self.store.get("pods", namespace, name)
            run = self.cluster.kubelet.runs.get(pod["metadata"]["uid"]) if pod else None
            return run is not None and self.cluster.kubelet.oom_kill(run, container)

    def evict(self, name: str, namespace: str = "default", message: str | None = None) -> None:
        assert self.cluster is not None
        with self.store.lock:
            pod = self.store.get("pods", namespace, name)
            run = self.cluster.kubelet.runs.get(pod["metadata"]["uid"]) if pod else None
            if pod is None or run is None:
                raise LookupError(f"pod {namespace}/{name} is not running on a node")
            self.cluster.kubelet.evict(run, pod, message or "The node was low on resource: memory. ")

    # ----------------------------------------------------------------------------------------------
    # Reading the cluster (copies)
    # ----------------------------------------------------------------------------------------------

    @property
    def stats(self) -> Stats:
        return self.store.stats

    @property
    def created_pods(self) -> list[dict[str, Any]]:
        return self.store.created_pods

    @property
    def launches(self) -> list[Launch]:
        assert self.cluster is not None
        return self.cluster.kubelet.launches

    def created_per_label(self, key: str) -> Counter[str]:
        """How many pods were created per value of label ``key`` (e.g. one per trait)."""
        return Counter((p["metadata"].get("labels") or {}).get(key, "") for p in self.created_pods)

    def pod(self, name: str, namespace: str = "default") -> dict[str, Any] | None:
        with self.store.lock:
            pod = self.store.get("pods", namespace, name)
            return copy.deepcopy(pod) if pod else None

    def pods(self, selector: str = "", namespace: str | None = None) -> list[dict[str, Any]]:
        requirements = parse_labels(selector)
        with self.store.lock:
            return [
                copy.deepcopy(p) for p in self.store.list("pods", namespace) if labels_match(requirements, p)
            ]

    def events(self, pod: str | None = None, namespace: str = "default") -> list[dict[str, Any]]:
        with self.store.lock:
            return [
                copy.deepcopy(e)
                for e in self.store.list("events", namespace)
                if pod is None or e["involvedObject"]["name"] == pod
            ]

    def logs(self, name: str, namespace: str = "default", container: str | None = None) -> str:
        assert self.cluster is not None
        with self.store.lock:
            pod = self.store.get("pods", namespace, name)
            run = self.cluster.kubelet.runs.get(pod["metadata"]["uid"]) if pod else None
            if run is None:
                return ""
            found = run.container(container) if container else run.mains[0]
            return b"".join(line for _, line in (found.lines if found else [])).decode("utf-8", "replace")

    def wait_for(
        self, predicate: Callable[[], bool], timeout: float = 10.0, what: str = "the condition"
    ) -> None:
        """Block until ``predicate()`` (evaluated under the lock after each change) holds."""
        deadline = time.monotonic() + timeout
        with self.store.lock:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"fake Kubernetes: {what} did not happen within {timeout:g}s")
                self.store.changed.wait(min(left, 0.1))

    def wait_for_phase(
        self,
        name: str,
        phases: tuple[str, ...] = ("Succeeded", "Failed"),
        namespace: str = "default",
        timeout: float = 10.0,
    ) -> dict[str, Any]:
        def reached() -> bool:
            pod = self.store.get("pods", namespace, name)
            return pod is not None and pod["status"].get("phase") in phases

        self.wait_for(reached, timeout, f"pod {namespace}/{name} reaching {'/'.join(phases)}")
        pod = self.pod(name, namespace)
        assert pod is not None
        return pod

    def self_check(self) -> list[str]:
        """Every stored object against the 1.37 strict schema: what the fake answers (the kubelet's
        statuses, the scheduler's conditions, events, nodes) must be what a cluster could answer."""
        problems = []
        with self.store.lock:
            for resource, objects in self.store.objects.items():
                for obj in objects.values():
                    where = f"{resource}/{obj['metadata']['name']}"
                    try:
                        result = check_schema(obj)
                    except DecodeError as exc:
                        problems.append(f"{where}: {exc}")
                        continue
                    problems += [f"{where}: unknown field {u}" for u in result.unknown]
                    problems += [f"{where}: {e}" for e in result.errors]
        return problems

    # ----------------------------------------------------------------------------------------------
    # Dispatch
    # ----------------------------------------------------------------------------------------------

    def fail_requests(self, method: str, route: str, *, status: int = 503, times: int = 1) -> None:
        """The next ``times`` requests to ``(method, route)`` (names as in ``stats.requests``) are
        answered with a ``status`` Status and not carried out."""
        self._http_faults.append([method, route, times, status])

    def lose_answers(self, method: str, route: str, *, times: int = 1) -> None:
        """The next ``times`` requests to ``(method, route)`` are carried out, then the connection is
        reset before the answer: the client cannot know the pod was created (or deleted)."""
        self._http_faults.append([method, route, times, None])

    def _http_fault(self, method: str, route: str) -> list | None:
        with self.store.lock:
            for fault in self._http_faults:
                if fault[0] == method and fault[1] == route and fault[2] > 0:
                    fault[2] -= 1
                    return fault
        return None

    def dispatch(self, request: Request) -> Reply:
        try:
            if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
                raise ApiError(401, "Unauthorized", "Unauthorized")
            allowed = False
            for method, pattern, name, handler in self._routes:
                match = pattern.match(request.path)
                if not match:
                    continue
                allowed = True
                if method != request.method:
                    continue
                self.store.stats.requests[(method, name)] += 1
                fault = self._http_fault(method, name)
                if fault is not None and fault[3] is not None:
                    reason = {429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}
                    raise ApiError(fault[3], reason.get(fault[3], "InternalError"), "injected by the test")
                with self.store.lock:
                    reply = handler(request, **match.groupdict())
                if fault is not None:
                    return Reply(reset=True)
                return reply
            if allowed:
                raise ApiError(
                    405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
                )
            raise ApiError(404, "NotFound", "the server could not find the requested resource", {})
        except ApiError as exc:
            return exc.reply()
        except Exception as exc:
            self.bugs.append(f"{request.method} {request.path}: {''.join(traceback.format_exception(exc))}")
            return ApiError(500, "InternalError", f"Internal error occurred: {exc}").reply()

    def _version(self, request: Request) -> Reply:
        major, minor, _ = KUBERNETES_VERSION.split(".")
        return json_reply(
            {
                "major": major,
                "minor": minor,
                "gitVersion": f"v{KUBERNETES_VERSION}",
                "gitTreeState": "clean",
                "goVersion": "go1.25.0",
                "compiler": "gc",
                "platform": "linux/amd64",
            }
        )

    def _api(self, request: Request) -> Reply:
        return json_reply(
            {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self.port}"}
                ],
            }
        )

    def _api_v1(self, request: Request) -> Reply:
        names = (
            "pods",
            "pods/log",
            "pods/status",
            "pods/eviction",
            "events",
            "secrets",
            "configmaps",
            "namespaces",
            "nodes",
            "persistentvolumeclaims",
        )
        resources = [
            {
                "name": n,
                "namespaced": n not in ("namespaces", "nodes"),
                "kind": api_objects.KINDS.get(n.split("/")[0], "Pod"),
                "verbs": ["get", "list"],
            }
            for n in names
        ]
        return json_reply({"kind": "APIResourceList", "groupVersion": "v1", "resources": resources})

    def _require_namespace(self, namespace: str) -> None:
        if self.store.get("namespaces", None, namespace) is None:
            raise not_found("namespaces", namespace)

    def _list_cluster(self, request: Request) -> Reply:
        return api_objects.list_or_watch(
            self.store, request.path.rstrip("/").rsplit("/", 1)[-1], None, request
        )

    def _get_cluster(self, request: Request, name: str) -> Reply:
        resource = request.path.split("/")[3]
        return api_objects.get(self.store, resource, None, name)

    def _create_namespace(self, request: Request) -> Reply:
        return api_objects.create_simple(self.store, "namespaces", None, request, self.rng)

    def _list_all(self, request: Request, resource: str) -> Reply:
        return api_objects.list_or_watch(self.store, resource, None, request)

    def _list(self, request: Request, ns: str, resource: str) -> Reply:
        return api_objects.list_or_watch(self.store, resource, ns, request)

    def _get(self, request: Request, ns: str, resource: str, name: str) -> Reply:
        return api_objects.get(self.store, resource, ns, name)

    def _create(self, request: Request, ns: str, resource: str) -> Reply:
        self._require_namespace(ns)
        return api_objects.create_simple(self.store, resource, ns, request, self.rng)

    def _delete(self, request: Request, ns: str, resource: str, name: str) -> Reply:
        return api_objects.delete_simple(self.store, resource, ns, name)

    def _create_pod(self, request: Request, ns: str) -> Reply:
        self._require_namespace(ns)
        return api_pods.create_pod(self.store, ns, request, self.rng)

    def _get_pod(self, request: Request, ns: str, name: str) -> Reply:
        return json_reply(public(api_pods.read_pod(self.store, ns, name)))

    def _patch_pod(self, request: Request, ns: str, name: str) -> Reply:
        return api_pods.patch_pod(self.store, api_pods.read_pod(self.store, ns, name), request)

    def _delete_pod(self, request: Request, ns: str, name: str) -> Reply:
        assert self.cluster is not None
        return api_pods.delete_pod(self.store, self.cluster, api_pods.read_pod(self.store, ns, name), request)

    def _evict(self, request: Request, ns: str, name: str) -> Reply:
        assert self.cluster is not None
        return api_pods.evict_pod(self.store, self.cluster, ns, name, request)

    def _log(self, request: Request, ns: str, name: str) -> Reply:
        assert self.cluster is not None
        return pod_log(self.store, self.cluster.kubelet, api_pods.read_pod(self.store, ns, name), request)

    def _upgrade(self, request: Request, ns: str, name: str) -> Reply:
        api_pods.read_pod(self.store, ns, name)
        raise bad_request("Upgrade request required")
