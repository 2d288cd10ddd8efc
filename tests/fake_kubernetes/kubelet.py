"""A kubelet whose containers are local processes: it starts them, reads their output, ends them and
reports what a kubelet reports (container states and reasons, pod phase, conditions, events).

Per container, in the kubelet's order: pull the image (a blocked image gives ``ErrImagePull``, then
``ImagePullBackOff``), set up the pod's volumes (a missing Secret volume: ``ContainerCreating`` and a
``FailedMount`` event), build the config (a missing Secret or key for ``secretKeyRef``:
``CreateContainerConfigError`` with the kubelet's message, the pod stays ``Pending``; runAsNonRoot
against the image's user), then start: ``Popen`` in a new session, stdout and stderr merged into the
container log, one line per log entry with its time. Exit code -> ``terminated`` with reason
``Completed`` (0), ``Error`` or ``OOMKilled`` (a test's fault), the file at ``terminationMessagePath``
as its message. Stopping (deletion, ``activeDeadlineSeconds``, eviction) sends SIGTERM to the
container's process, then SIGKILL to its whole process group when the grace period is over.

Every method runs under ``Store.lock`` (the reader threads take it for each line).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fake_kubernetes.defaults import now_rfc3339
from tests.fake_kubernetes.runtime import (
    ConfigError,
    Images,
    MountError,
    Unsupported,
    argv,
    container_env,
    setup_volume,
    translate,
)
from tests.fake_kubernetes.store import Store

UNKNOWN_MESSAGE = "The container could not be located when the pod was terminated"


@dataclass(frozen=True)
class Launch:
    """One container start, for tests that check what a pod would have run with."""

    namespace: str
    pod: str
    container: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str
    mounts: tuple[tuple[str, str], ...]  # (mountPath, host folder)
    security_context: Mapping[str, Any]


@dataclass
class ContainerRun:
    spec: dict[str, Any]
    init: bool
    index: int
    state: str = "waiting"  # waiting | running | terminated
    reason: str = "ContainerCreating"
    message: str = ""
    process: subprocess.Popen[bytes] | None = None
    lines: list[tuple[float, bytes]] = field(default_factory=list)
    previous: list[tuple[float, bytes]] | None = None
    log_closed: bool = False
    started_at: str | None = None
    exit_code: int | None = None
    terminated: dict[str, Any] = field(default_factory=dict)
    last_state: dict[str, Any] = field(default_factory=dict)
    restart_count: int = 0
    container_id: str = ""
    next_try: float = 0.0
    last_event: float = 0.0
    oom: bool = False
    message_file: Path | None = None

    @property
    def name(self) -> str:
        return str(self.spec["name"])


@dataclass
class PodRun:
    uid: str
    namespace: str
    name: str
    scratch: Path
    containers: list[ContainerRun]
    started: float
    start_time: str
    pod_ip: str
    host_ip: str
    volumes: dict[str, Path] | None = None
    stopping: bool = False
    kill_at: float | None = None
    reason: str | None = None  # DeadlineExceeded | Evicted
    message: str = ""
    disruption: dict[str, Any] | None = None

    def container(self, name: str) -> ContainerRun | None:
        return next((c for c in self.containers if c.name == name), None)

    @property
    def mains(self) -> list[ContainerRun]:
        return [c for c in self.containers if not c.init]

    @property
    def quiet(self) -> bool:
        """No process left and every log read to its end."""
        return all(c.process is None and (c.state != "running") for c in self.containers)


class _Objects(Mapping[tuple[str, str, str], dict[str, Any]]):
    """Secrets and ConfigMaps as ``runtime`` looks them up: ``(resource, namespace, name)``."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __getitem__(self, key: tuple[str, str, str]) -> dict[str, Any]:
        obj = self._store.get(*key)
        if obj is None:
            raise KeyError(key)
        return obj

    def __iter__(self) -> Iterator[tuple[str, str, str]]:
        return iter(())

    def __len__(self) -> int:
        return 0


class Kubelet:
    def __init__(
        self,
        store: Store,
        images: Images,
        claims: Mapping[tuple[str, str], Path],
        *,
        service: tuple[str, int],
        bugs: list[str],
        on_line: Callable[[PodRun, ContainerRun, bytes], None],
        backoff: float,
    ) -> None:
        self.store, self.images, self.claims = store, images, claims
        self.service, self.bugs, self.on_line, self.backoff = service, bugs, on_line, backoff
        self.runs: dict[str, PodRun] = {}
        self.launches: list[Launch] = []
        self.root = Path(tempfile.mkdtemp(prefix="fake-kubelet-"))
        self._serial = 0

    # ----------------------------------------------------------------------------------------------
    # The sync loop (called by the controller for every bound pod)
    # ----------------------------------------------------------------------------------------------

    def sync(self, pod: dict[str, Any], host_ip: str) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        run = self.runs.get(meta["uid"]) or self._admit(pod, host_ip)
        now = time.monotonic()
        if meta.get("deletionTimestamp") and not run.stopping:
            self.stop(run, pod, grace=float(meta.get("deletionGracePeriodSeconds") or 0))
        deadline = spec.get("activeDeadlineSeconds")
        phase = pod["status"].get("phase")
        if (
            deadline
            and not run.stopping
            and phase not in ("Succeeded", "Failed")
            and now - run.started >= deadline
        ):
            run.reason, run.message = (
                "DeadlineExceeded",
                "Pod was active on the node longer than the specified deadline",
            )
            self.store.event(pod, "DeadlineExceeded", run.message, warning=True)
            self.stop(run, pod, grace=float(spec.get("terminationGracePeriodSeconds", 30)))
        if run.stopping:
            if run.kill_at is not None and now >= run.kill_at:
                self._signal_all(run, signal.SIGKILL)
        elif phase not in ("Succeeded", "Failed"):
            self._advance(pod, run, now)
        self._write_status(pod, run)
        if meta.get("deletionTimestamp") and run.quiet:
            self.store.remove("pods", meta["namespace"], meta["name"])
            self.forget(run)

    def _admit(self, pod: dict[str, Any], host_ip: str) -> PodRun:
        meta, spec = pod["metadata"], pod["spec"]
        self._serial += 1
        containers = [ContainerRun(c, True, i) for i, c in enumerate(spec.get("initContainers") or [])]
        containers += [ContainerRun(c, False, i) for i, c in enumerate(spec.get("containers") or [])]
        if any(c.init for c in containers):
            for c in containers:
                c.reason = "PodInitializing" if not c.init else c.reason
        run = PodRun(
            uid=meta["uid"],
            namespace=meta["namespace"],
            name=meta["name"],
            scratch=self.root / meta["uid"],
            containers=containers,
            started=time.monotonic(),
            start_time=now_rfc3339(),
            pod_ip=f"10.244.{self._serial // 250}.{self._serial % 250 + 2}",
            host_ip=host_ip,
        )
        run.scratch.mkdir(parents=True)
        self.runs[run.uid] = run
        return run

    def _advance(self, pod: dict[str, Any], run: PodRun, now: float) -> None:
        policy = pod["spec"].get("restartPolicy", "Always")
        for c in run.containers:
            if not c.init:
                continue
            if c.state == "terminated" and c.exit_code == 0:
                continue
            if c.state != "terminated" or policy != "Never":
                self._step(pod, run, c, now)
            return
        for c in run.mains:
            if c.reason == "PodInitializing":
                c.reason = "ContainerCreating"
            self._step(pod, run, c, now)

    def _step(self, pod: dict[str, Any], run: PodRun, c: ContainerRun, now: float) -> None:
        if c.state != "waiting" or now < c.next_try:
            return
        reference = c.spec["image"]
        image = self.images.resolve(reference)
        field_path = f"spec.{'initContainers' if c.init else 'containers'}{{{c.name}}}"
        if image.pull_error is not None:
            self._pull_failed(pod, c, reference, image.pull_error, now, field_path)
            return
        try:
            if run.volumes is None:
                run.volumes = {
                    v["name"]: setup_volume(v, run.scratch, run.namespace, _Objects(self.store), self.claims)
                    for v in pod["spec"].get("volumes") or []
                }
            env = container_env(pod, c.spec, image, _Objects(self.store), self.service)
            self._check_user(pod, c, image.user)
        except MountError as exc:
            c.reason, c.message = "ContainerCreating", ""
            self._event(pod, c, "FailedMount", str(exc), now, warning=True)
            c.next_try = now + self.backoff
            return
        except ConfigError as exc:
            c.reason, c.message = "CreateContainerConfigError", str(exc)
            self._event(pod, c, "Failed", f"Error: {exc}", now, warning=True, field_path=field_path)
            c.next_try = now + self.backoff
            return
        except Unsupported as exc:
            self.bugs.append(f"pod {run.namespace}/{run.name}: {exc}")
            c.reason, c.message, c.next_try = "ContainerCreating", str(exc), float("inf")
            return
        self._start(pod, run, c, image, env, field_path)

    def _pull_failed(
        self, pod: dict[str, Any], c: ContainerRun, reference: str, error: str, now: float, field_path: str
    ) -> None:
        if c.reason == "ErrImagePull":
            c.reason, c.message = (
                "ImagePullBackOff",
                f'Back-off pulling image "{reference}": ErrImagePull: {error}',
            )
            self.store.event(pod, "BackOff", f'Back-off pulling image "{reference}"', field_path=field_path)
            self.store.event(pod, "Failed", "Error: ImagePullBackOff", warning=True, field_path=field_path)
            c.next_try = now + 4 * self.backoff
            return
        c.reason, c.message = "ErrImagePull", error
        self.store.event(pod, "Pulling", f'Pulling image "{reference}"', field_path=field_path)
        self.store.event(
            pod, "Failed", f'Failed to pull image "{reference}": {error}', warning=True, field_path=field_path
        )
        self.store.event(pod, "Failed", "Error: ErrImagePull", warning=True, field_path=field_path)
        c.next_try = now + self.backoff

    def _check_user(self, pod: dict[str, Any], c: ContainerRun, image_user: int) -> None:
        pod_context = pod["spec"].get("securityContext") or {}
        context = c.spec.get("securityContext") or {}
        non_root = context.get("runAsNonRoot", pod_context.get("runAsNonRoot"))
        uid = context.get("runAsUser", pod_context.get("runAsUser"))
        meta = pod["metadata"]
        where = f'(pod: "{meta["name"]}_{meta["namespace"]}({meta["uid"]})", container: {c.name})'
        if non_root and uid == 0:
            raise ConfigError(f"container's runAsUser breaks non-root policy {where}")
        if non_root and uid is None and image_user == 0:
            raise ConfigError(f"container has runAsNonRoot and image will run as root {where}")

    def _event(
        self,
        pod: dict[str, Any],
        c: ContainerRun,
        reason: str,
        message: str,
        now: float,
        *,
        warning: bool = False,
        field_path: str | None = None,
    ) -> None:
        """Repeated kubelet errors: one event per second at most (its count goes up)."""
        if now - c.last_event >= 1.0:
            c.last_event = now
            self.store.event(pod, reason, message, warning=warning, field_path=field_path)

    def _start(
        self,
        pod: dict[str, Any],
        run: PodRun,
        c: ContainerRun,
        image: Any,
        env: dict[str, str],
        field_path: str,
    ) -> None:
        assert run.volumes is not None
        mounts = [
            (m["mountPath"], str(run.volumes[m["name"]] / m.get("subPath", "")).rstrip("/"))
            for m in c.spec.get("volumeMounts") or []
        ]
        c.message_file = run.scratch / "termination" / f"{c.name}-{c.restart_count}"
        c.message_file.parent.mkdir(exist_ok=True)
        c.message_file.write_bytes(b"")
        mounts.append((c.spec.get("terminationMessagePath", "/dev/termination-log"), str(c.message_file)))
        mounts.sort(key=lambda m: len(m[0]), reverse=True)
        words = [translate(w, mounts) for w in argv(c.spec, image, env)]
        env = {k: translate(v, mounts) for k, v in env.items()}
        env.setdefault("HOME", str(run.scratch / "home"))
        Path(env["HOME"]).mkdir(parents=True, exist_ok=True)
        workdir = c.spec.get("workingDir") or image.workdir
        cwd = Path(translate(workdir, mounts)) if workdir else run.scratch / "containers" / c.name
        cwd.mkdir(parents=True, exist_ok=True)
        if not words:
            c.reason, c.message = "CreateContainerError", "no command specified"
            self.store.event(
                pod, "Failed", "Error: no command specified", warning=True, field_path=field_path
            )
            c.next_try = time.monotonic() + self.backoff
            return
        self._serial += 1
        c.container_id = f"containerd://{self._serial:064x}"
        c.started_at = now_rfc3339()
        self.store.event(
            pod,
            "Pulled",
            f'Container image "{c.spec["image"]}" already present on machine',
            field_path=field_path,
        )
        self.store.event(pod, "Created", f"Created container: {c.name}", field_path=field_path)
        try:
            process = subprocess.Popen(
                words,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            message = (
                "failed to create containerd task: failed to create shim task: OCI runtime create failed: "
                "runc create failed: unable to start container process: "
                f'exec: "{words[0]}": {exc.strerror}: unknown'
            )
            c.state, c.exit_code, c.log_closed = "terminated", 128, True
            c.terminated = self._terminated(c, 128, "StartError", message)
            self.store.event(pod, "Failed", f"Error: {message}", warning=True, field_path=field_path)
            return
        c.state, c.process, c.log_closed, c.reason, c.message = "running", process, False, "", ""
        self.store.event(pod, "Started", f"Started container {c.name}", field_path=field_path)
        self.launches.append(
            Launch(
                run.namespace,
                run.name,
                c.name,
                tuple(words),
                env,
                str(cwd),
                tuple(mounts),
                {**(pod["spec"].get("securityContext") or {}), **(c.spec.get("securityContext") or {})},
            )
        )
        threading.Thread(
            target=self._read, args=(run, c, process), daemon=True, name=f"kubelet-{run.name}"
        ).start()

    def _read(self, run: PodRun, c: ContainerRun, process: subprocess.Popen[bytes]) -> None:
        """The container runtime's log pipe: one entry per line, then the exit."""
        assert process.stdout is not None
        try:
            for raw in iter(process.stdout.readline, b""):
                with self.store.lock:
                    c.lines.append((time.time(), raw))
                    self.on_line(run, c, raw)
                    self.store.changed.notify_all()
            process.stdout.close()
            code = process.wait()
            with self.store.lock:
                self._exited(run, c, code)
                self.store.changed.notify_all()
        except Exception as exc:  # a bug of the fake: reported, not printed by a dying thread
            self.bugs.append(f"kubelet reading {run.namespace}/{run.name}: {type(exc).__name__}: {exc}")

    def _exited(self, run: PodRun, c: ContainerRun, code: int) -> None:
        exit_code = code if code >= 0 else 128 - code
        reason = "OOMKilled" if c.oom else ("Completed" if exit_code == 0 else "Error")
        try:
            message = c.message_file.read_bytes()[:4096].decode("utf-8", "replace") if c.message_file else ""
        except OSError:  # the pod is gone and its scratch folder with it
            message = ""
        policy = c.spec.get("terminationMessagePolicy", "File")
        if not message and exit_code != 0 and policy == "FallbackToLogsOnError":
            message = b"".join(line for _, line in c.lines[-80:])[-2048:].decode("utf-8", "replace")
        c.process, c.exit_code, c.log_closed, c.oom = None, exit_code, True, False
        c.terminated = self._terminated(c, exit_code, reason, message)
        c.state = "terminated"
        pod = self.store.get("pods", run.namespace, run.name)
        if pod is not None and pod["metadata"]["uid"] != run.uid:
            pod = None  # a new pod of the same name: this run was force-deleted
        policy = (pod or {}).get("spec", {}).get("restartPolicy", "Always")
        if not run.stopping and (policy == "Always" or (policy == "OnFailure" and exit_code != 0)):
            delay = self.backoff * 2 ** min(c.restart_count, 5)
            c.last_state, c.state, c.reason = {"terminated": c.terminated}, "waiting", "CrashLoopBackOff"
            c.message = (
                f"back-off {delay:g}s restarting failed container={c.name} "
                f"pod={run.name}_{run.namespace}({run.uid})"
            )
            c.restart_count += 1
            c.previous, c.lines = c.lines, []
            c.next_try = time.monotonic() + delay
        if pod is not None:  # at once: a client that saw the log end must not read "running" after it
            self._write_status(pod, run)

    def _terminated(self, c: ContainerRun, exit_code: int, reason: str, message: str) -> dict[str, Any]:
        record: dict[str, Any] = {
            "exitCode": exit_code,
            "reason": reason,
            "startedAt": c.started_at,
            "finishedAt": now_rfc3339(),
        }
        if c.container_id:
            record["containerID"] = c.container_id
        if message:
            record["message"] = message
        return record

    # ----------------------------------------------------------------------------------------------
    # Stopping
    # ----------------------------------------------------------------------------------------------

    def stop(self, run: PodRun, pod: dict[str, Any] | None, grace: float) -> None:
        """SIGTERM now, SIGKILL when ``grace`` is over; containers that never started are reported lost."""
        run.stopping = True
        for c in run.containers:
            if c.process is not None:
                if pod is not None:
                    self.store.event(
                        pod,
                        "Killing",
                        f"Stopping container {c.name}",
                        field_path=f"spec.containers{{{c.name}}}",
                    )
                _signal(c.process, signal.SIGTERM, group=False)
            elif c.state == "waiting":
                c.state, c.exit_code = "terminated", 137
                c.terminated = self._terminated(c, 137, "ContainerStatusUnknown", UNKNOWN_MESSAGE)
                c.terminated["startedAt"] = None
        run.kill_at = time.monotonic() + max(grace, 0.0)
        if grace <= 0:
            self._signal_all(run, signal.SIGKILL)

    def _signal_all(self, run: PodRun, sig: signal.Signals) -> None:
        for c in run.containers:
            if c.process is not None:
                _signal(c.process, sig, group=True)

    def evict(self, run: PodRun, pod: dict[str, Any], message: str) -> None:
        """Node-pressure eviction: killed at once, pod ``Failed`` with reason ``Evicted``."""
        run.reason, run.message = "Evicted", message
        run.disruption = {
            "type": "DisruptionTarget",
            "status": "True",
            "reason": "TerminationByKubelet",
            "message": message,
        }
        self.store.event(pod, "Evicted", message, warning=True)
        self.stop(run, pod, grace=0)

    def oom_kill(self, run: PodRun, container: str | None = None) -> bool:
        """The kernel's OOM killer in the container's cgroup: SIGKILL, reported as ``OOMKilled``."""
        for c in run.containers:
            if c.process is not None and (container is None or c.name == container):
                c.oom = True
                _signal(c.process, signal.SIGKILL, group=True)
                return True
        return False

    def forget(self, run: PodRun) -> None:
        self._signal_all(run, signal.SIGKILL)
        self.runs.pop(run.uid, None)
        shutil.rmtree(run.scratch, ignore_errors=True)

    def shutdown(self) -> None:
        for run in list(self.runs.values()):
            self.forget(run)
        shutil.rmtree(self.root, ignore_errors=True)

    # ----------------------------------------------------------------------------------------------
    # Status (what the kubelet's status manager writes)
    # ----------------------------------------------------------------------------------------------

    def _write_status(self, pod: dict[str, Any], run: PodRun) -> None:
        old = pod["status"]
        status = {
            "phase": self._phase(pod, run),
            "hostIP": run.host_ip,
            "hostIPs": [{"ip": run.host_ip}],
            "podIP": run.pod_ip,
            "podIPs": [{"ip": run.pod_ip}],
            "startTime": run.start_time,
            "qosClass": old.get("qosClass", "BestEffort"),
        }
        if run.reason:
            status["reason"], status["message"] = run.reason, run.message
        inits = [c for c in run.containers if c.init]
        if inits:
            status["initContainerStatuses"] = [self._container_status(c) for c in inits]
        status["containerStatuses"] = [self._container_status(c) for c in run.mains]
        status["conditions"] = self._conditions(old, run, status["phase"])
        if status != old:
            pod["status"] = status
            self.store.put("pods", pod, created=False)

    @staticmethod
    def _container_status(c: ContainerRun) -> dict[str, Any]:
        if c.state == "running":
            state: dict[str, Any] = {"running": {"startedAt": c.started_at}}
        elif c.state == "terminated":
            state = {"terminated": c.terminated}
        else:
            state = {"waiting": {"reason": c.reason, **({"message": c.message} if c.message else {})}}
        status: dict[str, Any] = {
            "name": c.name,
            "state": state,
            "lastState": c.last_state,
            "ready": c.state == "running",
            "restartCount": c.restart_count,
            "image": c.spec["image"],
            "imageID": f"{c.spec['image']}@sha256:{'0' * 64}" if c.container_id else "",
            "started": c.state == "running",
        }
        if c.container_id:
            status["containerID"] = c.container_id
        return status

    @staticmethod
    def _phase(pod: dict[str, Any], run: PodRun) -> str:
        """``kubelet.getPhase`` for restartPolicy Never/OnFailure/Always, init containers first."""
        if run.reason in ("Evicted", "DeadlineExceeded"):
            return "Failed"  # set before the processes are gone, as the kubelet's syncPod does
        policy = pod["spec"].get("restartPolicy", "Always")
        for c in run.containers:
            if c.init and not (c.state == "terminated" and c.exit_code == 0):
                return "Failed" if c.state == "terminated" and policy == "Never" else "Pending"
        waiting = running = stopped = succeeded = 0
        for c in run.mains:
            if c.state == "running":
                running += 1
            elif c.state == "terminated":
                stopped += 1
                succeeded += c.exit_code == 0
            elif c.last_state:
                stopped += 1
            else:
                waiting += 1
        if waiting:
            return "Failed" if run.stopping and run.quiet else "Pending"
        if running:
            return "Running"
        if policy == "Always" and not run.stopping:
            return "Running"
        if stopped == succeeded:
            return "Succeeded"
        return "Running" if policy == "OnFailure" and not run.stopping else "Failed"

    @staticmethod
    def _conditions(old: dict[str, Any], run: PodRun, phase: str) -> list[dict[str, Any]]:
        previous = {c["type"]: c for c in old.get("conditions") or []}
        terminal = phase in ("Succeeded", "Failed")
        initialized = all(c.state == "terminated" and c.exit_code == 0 for c in run.containers if c.init)
        not_ready = [c.name for c in run.mains if c.state != "running"]
        ready_reason = "PodCompleted" if terminal else "ContainersNotReady"
        ready_message = "" if terminal else f"containers with unready status: [{' '.join(not_ready)}]"
        wanted: list[tuple[str, bool, str, str]] = [
            ("PodReadyToStartContainers", not (terminal and run.quiet), "", ""),
            ("Initialized", initialized, "" if initialized else "ContainersNotInitialized", ""),
            ("Ready", not not_ready, "" if not not_ready else ready_reason, ready_message),
            ("ContainersReady", not not_ready, "" if not not_ready else ready_reason, ready_message),
        ]
        conditions = []
        if run.disruption:
            conditions.append({**run.disruption, "lastProbeTime": None})
        for kind, ok, reason, message in wanted:
            value = "True" if ok else "False"
            condition: dict[str, Any] = {"type": kind, "status": value, "lastProbeTime": None}
            before = previous.get(kind)
            condition["lastTransitionTime"] = (
                before["lastTransitionTime"] if before and before["status"] == value else now_rfc3339()
            )
            if reason:
                condition["reason"] = reason
            if message:
                condition["message"] = message
            conditions.append(condition)
        if "PodScheduled" in previous:
            conditions.append(previous["PodScheduled"])
        return conditions


def _signal(process: subprocess.Popen[bytes], sig: signal.Signals, *, group: bool) -> None:
    try:
        if group:
            os.killpg(process.pid, sig)
        else:
            process.send_signal(sig)
    except (ProcessLookupError, PermissionError):
        pass  # already gone
