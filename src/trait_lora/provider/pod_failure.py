"""Why a training pod failed, in the words a user acts on: what the cluster said, what it means, what
to change, and whether a retry can help.

The cncf.kubernetes provider ends a failed try with "Pod ... returned a failure" or a launch timeout;
the facts behind it (the pod's phase and reason, its container's terminated or waiting state, the exit
code, the scheduler's message) are in the pod's status, which is gone once the run is over (a pod that
never started is deleted). ``diagnose`` reads them from the pod as the API answered it (the JSON of a
``V1Pod``) into a ``PodFailure``: its ``message`` goes into the run's failures, hence the summary, the
mapping's ``failed`` and the dashboard; ``retry`` says whether the try may be retried
(``AirflowException``) or must not be (``AirflowFailException``: the same pod would fail the same way).

Plain functions on plain JSON, no Airflow or Kubernetes import, so they are checked without a cluster.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from trait_lora.local.backend import EXIT_MEANINGS

# The trainer's exit codes (trait_lora.train, the same as on a worker) and what a container runtime
# reports for a signal; 2 and 3 mean the input or the model is wrong: a retry fails the same way.
NO_RETRY_EXITS = (2, 3)
TRAINER_EXITS = {
    **EXIT_MEANINGS,
    130: "stopped by SIGTERM (the pod was deleted or preempted)",
    137: "killed by SIGKILL (the node ran out of memory, or the pod was force-deleted)",
    143: "stopped by SIGTERM (the pod was deleted or preempted)",
}
PULL_ERRORS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")


@dataclass(frozen=True)
class PodFailure:
    """One failed try of a trait's pod; ``to_dict`` is what the run's failure record keeps."""

    message: str
    retry: bool
    pod: str = ""  # namespace/name, "" when no pod was created
    phase: str | None = None
    pod_reason: str | None = None  # Evicted, DeadlineExceeded
    container_state: str | None = None  # "terminated OOMKilled", "waiting CreateContainerConfigError"
    exit_code: int | None = None
    exit_meaning: str | None = None
    scheduler: str | None = None  # PodScheduled=False: the scheduler's message
    oom_killed: bool = False
    micro_batch: int | None = None  # the micro-batch the pod ran with

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, "", False) or k == "retry"}


def _base_status(pod: dict[str, Any], container: str) -> dict[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return next((s for s in statuses if s.get("name") == container), statuses[0] if statuses else {})


def _last_error(message: str | None) -> str:
    """The trainer's own explanation from the container's termination message (the pod sets
    ``FallbackToLogsOnError``: its last log lines), one line, bounded."""
    lines = [ln.strip() for ln in (message or "").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.lower().startswith("error")]
    picked = errors[-1] if errors else (lines[-1] if lines else "")
    return picked[:300]


def _scheduler_message(pod: dict[str, Any]) -> str | None:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return str(condition.get("message") or condition.get("reason") or "not scheduled")
    return None


def diagnose(
    pod: dict[str, Any] | None,
    *,
    error: str = "",
    created: bool = True,
    container: str = "base",
    micro_batch: int | None = None,
    settings: dict[str, Any] | None = None,
    retries_left: bool = True,
) -> PodFailure:
    """The failure of one try from the pod's last known state (``None``: it is gone, or, with
    ``created=False``, it was never created). ``settings`` carries the values named in advice
    (``k8s_memory``, ``k8s_schedule_timeout_minutes``, ``k8s_active_deadline_minutes``, image);
    ``retries_left``: whether the task has a retry to come (the message promises one only then)."""
    cfg = settings or {}
    again = "; the retry starts a new one" if retries_left else ""
    if pod is None:
        if not created:
            permanent = bool(re.search(r"\b(40[0-4]|409|422)\b", error)) and "Reason: " in error
            return PodFailure(
                f"the pod could not be created: {_first_line(error)}"
                + (
                    "; the retry looks for it by its labels before creating another"
                    if retries_left and not permanent
                    else ""
                ),
                retry=not permanent,
                micro_batch=micro_batch,
            )
        return PodFailure(
            "the pod is gone: it was deleted while it ran (kubectl delete, a drained or lost node)" + again,
            retry=True,
            micro_batch=micro_batch,
        )
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    where = f"pod {meta.get('namespace')}/{meta.get('name')}"
    phase, pod_reason = status.get("phase"), status.get("reason")
    base = dict(pod=f"{meta.get('namespace')}/{meta.get('name')}", phase=phase, micro_batch=micro_batch)
    state = _base_status(pod, container).get("state") or {}
    terminated, waiting = state.get("terminated"), state.get("waiting")

    if pod_reason == "Evicted":
        return PodFailure(
            f"{where} was evicted by its node: {(status.get('message') or 'node pressure').strip()}"
            f"{again} (raise [trait_lora] k8s_memory if its node keeps evicting it)",
            retry=True,
            pod_reason=pod_reason,
            **base,
        )
    if pod_reason == "DeadlineExceeded":
        minutes = cfg.get("k8s_active_deadline_minutes")
        return PodFailure(
            f"{where} ran past its deadline (activeDeadlineSeconds, [trait_lora] "
            f"k8s_active_deadline_minutes = {minutes}) and Kubernetes stopped it: raise that setting "
            "or train fewer steps",
            retry=False,
            pod_reason=pod_reason,
            **base,
        )
    if meta.get("deletionTimestamp") and not (terminated and terminated.get("reason") == "OOMKilled"):
        return PodFailure(
            f"{where} was deleted while it ran (kubectl delete, a drained or lost node){again}",
            retry=True,
            container_state=f"terminated {terminated.get('reason')}" if terminated else None,
            exit_code=terminated.get("exitCode") if terminated else None,
            **base,
        )
    if terminated:
        return _terminated(where, terminated, base, cfg, micro_batch, retries_left)
    if waiting:
        reason, text = waiting.get("reason") or "", waiting.get("message") or ""
        if reason == "CreateContainerConfigError":
            return PodFailure(
                f"{where} cannot start: {text} (CreateContainerConfigError). Create that Secret (and "
                "key) in the namespace, or point [trait_lora] k8s_hf_secret / k8s_hf_secret_key / "
                "k8s_storage_secret at one that exists",
                retry=False,
                container_state=f"waiting {reason}",
                **base,
            )
        if reason in PULL_ERRORS:
            image = cfg.get("image") or "the trainer image"
            return PodFailure(
                f"{where} cannot pull its image {image} ({reason}: {text}). Set [trait_lora] "
                "trainer_image (or the Variable trait_lora_trainer_image) to an image the nodes can "
                "pull, with imagePullSecrets if the registry is private",
                retry=False,
                container_state=f"waiting {reason}",
                **base,
            )
    scheduler = _scheduler_message(pod)
    if phase == "Pending" and scheduler:
        minutes = cfg.get("k8s_schedule_timeout_minutes")
        capacity = "Insufficient" in scheduler
        advice = (
            "every GPU is taken: lower [trait_lora] k8s_max_pods or add GPU nodes"
            if capacity
            else "no node matches: check [trait_lora] k8s_node_selector, k8s_tolerations and the "
            "requests (k8s_gpus, k8s_cpu, k8s_memory) against your GPU nodes"
        )
        return PodFailure(
            f"{where} found no node within [trait_lora] k8s_schedule_timeout_minutes = {minutes}: "
            f"{scheduler} ({advice})",
            retry=capacity,
            scheduler=scheduler,
            **base,
        )
    detail = (
        f"waiting {waiting.get('reason')}: {waiting.get('message') or ''}"
        if waiting
        else (phase or "its state unknown")
    )
    return PodFailure(
        f"{where} failed ({detail}): {_first_line(error) or 'see the task log'}",
        retry=True,
        container_state=f"waiting {waiting.get('reason')}" if waiting else None,
        scheduler=scheduler,
        **base,
    )


def _terminated(
    where: str,
    terminated: dict[str, Any],
    base: dict[str, Any],
    cfg: dict[str, Any],
    micro_batch: int | None,
    retries_left: bool,
) -> PodFailure:
    code, reason = terminated.get("exitCode"), terminated.get("reason") or ""
    said = _last_error(terminated.get("message"))
    tail = f": {said}" if said else ""
    if reason == "OOMKilled":
        half = max(1, micro_batch // 2) if micro_batch else None
        if half is None or half == micro_batch:
            lower = "lower the model's memory (quantization 4bit)"
        elif retries_left:
            lower = f"the retry runs with micro-batch {half}; lower [trait_lora] k8s_micro_batch"
        else:
            lower = f"lower [trait_lora] k8s_micro_batch below {micro_batch}"
        return PodFailure(
            f"{where} was OOMKilled (exit {code}) at micro-batch {micro_batch}: the trainer used more "
            f"than the pod's memory limit ([trait_lora] k8s_memory = {cfg.get('k8s_memory')}); "
            f"{lower}, or raise k8s_memory",
            retry=True,
            container_state="terminated OOMKilled",
            exit_code=code,
            exit_meaning="out of memory (the container's memory limit)",
            oom_killed=True,
            **base,
        )
    meaning = TRAINER_EXITS.get(code, f"exit code {code}") if isinstance(code, int) else "no exit code"
    retry = code not in NO_RETRY_EXITS
    return PodFailure(
        f"{where} failed: the trainer exited {code} ({meaning}){tail}"
        + ("" if retry else "; not retried: the same input fails the same way"),
        retry=retry,
        container_state=f"terminated {reason}".strip(),
        exit_code=code,
        exit_meaning=meaning,
        **base,
    )


def _first_line(text: str) -> str:
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()[:400]
    return ""
