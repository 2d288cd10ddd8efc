"""The training pod's operator: the cncf.kubernetes provider's ``KubernetesPodOperator``, with its own
lifecycle (create or re-attach, defer, logs, cleanup, ``on_kill``) and these changes, each through
the provider's public methods (no private one is overridden):

* the pod is built from the settings when it is built (``kubernetes.pod_settings``): GPU, node pool,
  volumes, model cache, Secrets by reference, security context, deadline;
* a pod that never started is deleted (it holds a node's GPU or would start later with nobody
  following it); one that ran and failed is kept for ``kubectl logs`` / ``describe``;
* while it waits for the pod to start, the trigger also fails at once on ``CreateContainerConfigError``
  (a missing Secret or key), as the provider does for an image that cannot be pulled, instead of
  holding the node until the startup timeout;
* no log is asked of a container that never started (the provider would ask three times for a 400);
* a failed try says why in the run's failures (``pod_failure.diagnose``: phase, container state, exit
  code and its meaning, the scheduler's message) and is retried only when a retry can help (not after
  trainer exit 2 or 3, a missing Secret, an image that cannot be pulled); the retry of an OOMKilled pod
  runs with half its micro-batch.

This module imports the provider's operator module, and with it the Kubernetes clients (about a
second): a DAG file names ``training_pod.TrainingPod``, which becomes this operator when its task runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from functools import cached_property
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.triggers.pod import KubernetesPodTrigger
from airflow.providers.cncf.kubernetes.utils.pod_manager import PodManager
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException
from airflow.triggers.base import TriggerEvent

from trait_lora import settings
from trait_lora.provider import kubernetes, pod_failure
from trait_lora.provider.kubernetes import BASE_FIXED, MAP_INDEX_TEMPLATE, UI_COLOR

TRAINER_CMD = ("python", "-m", "trait_lora.train")
DAG_ID = "trait_lora_kubernetes"


def config_error(pod: Any) -> str | None:
    """The kubelet's ``CreateContainerConfigError`` for any container of ``pod``, as a message."""
    status = getattr(pod, "status", None)
    for container in getattr(status, "container_statuses", None) or []:
        waiting = getattr(container.state, "waiting", None)
        if waiting is not None and waiting.reason == "CreateContainerConfigError":
            return (
                f"pod {pod.metadata.namespace}/{pod.metadata.name} cannot start container "
                f"{container.name}: {waiting.message} (CreateContainerConfigError). Create that Secret "
                "(and key) in the namespace, or point [trait_lora] k8s_hf_secret / k8s_hf_secret_key / "
                "k8s_storage_secret at one that exists"
            )
    return None


class PodTryFailed(AirflowException):
    """A try whose pod failed in a way a retry can help (evicted, OOMKilled, deleted, a crash)."""


class PodFailedForGood(AirflowFailException):
    """A try whose retry would fail the same way (trainer exit 2 or 3, missing Secret, bad image)."""


def _ever_started(pod: Any, container: str) -> bool:
    status = getattr(pod, "status", None)
    for found in getattr(status, "container_statuses", None) or []:
        if found.name == container:
            state, last = found.state, found.last_state
            return bool((state and (state.running or state.terminated)) or (last and last.terminated))
    return False


def _traits(run_record: dict[str, Any]) -> list[str]:
    """The traits a pod trains, from its ``run_record`` (``kubernetes.pod_spec``/``group_pod_spec``)."""
    traits = run_record.get("traits")
    if traits is None and run_record.get("trait"):  # a record from before groups named their traits
        traits = [run_record["trait"]]
    return [str(t) for t in traits or []]


# The labels that make a pod this try's own (the provider sets them from the task instance).
_TRY_LABELS = ("dag_id", "task_id", "run_id", "map_index", "try_number")


class AdoptingPodManager(PodManager):
    """The provider's pod manager, except that a create answered ``409 AlreadyExists`` for a pod this
    very try made is that pod: its first answer was lost (a reset connection, a timeout) and the
    provider sent the create again. The provider counts 409 as transient and asks four more times,
    15 s in all, then fails the try; the pod it made runs on with nobody following it."""

    def run_pod_async(self, pod: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            return super().run_pod_async(pod, **kwargs)
        except ApiException as exc:
            if exc.status != 409:
                raise
            found = self.read_pod(pod)
            mine, theirs = pod.metadata.labels or {}, found.metadata.labels or {}
            if any(mine.get(k) != theirs.get(k) for k in _TRY_LABELS):
                raise
            self.log.warning(
                "pod %s already exists with this try's labels: the answer to its create was lost; "
                "following it",
                pod.metadata.name,
            )
            return found


def _starting(pod: Any, container: str) -> bool:
    return getattr(getattr(pod, "status", None), "phase", None) == "Pending" and not _ever_started(
        pod, container
    )


class TrainingPodTrigger(KubernetesPodTrigger):
    """The provider's pod trigger, its ``run`` unchanged, watched while the pod starts: a container the
    kubelet cannot build (``CreateContainerConfigError``: a missing Secret or key) ends the wait at
    once with the kubelet's message, as the provider ends it for an image that cannot be pulled,
    instead of holding the node until the startup timeout. Only public surfaces: ``run`` and the
    async hook's ``get_pod``, one read per ``startup_check_interval`` until the container starts."""

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{__name__}.{type(self).__name__}", super().serialize()[1]

    async def run(self) -> AsyncIterator[TriggerEvent]:
        events = super().run()
        provider_event = asyncio.ensure_future(anext(events))
        try:
            starting = True
            while True:
                timeout = self.startup_check_interval if starting else None
                done, _ = await asyncio.wait({provider_event}, timeout=timeout)
                if done:
                    with contextlib.suppress(StopAsyncIteration):
                        yield provider_event.result()
                    return
                try:
                    pod = await self.hook.get_pod(self.pod_name, self.pod_namespace)
                except Exception:  # the provider's own reads decide what an API error means
                    continue
                message = config_error(pod)
                if message:
                    yield TriggerEvent(
                        {
                            "name": self.pod_name,
                            "namespace": self.pod_namespace,
                            "status": "timeout",  # what the provider sends for a pod that cannot start
                            "message": message,
                            **self.trigger_kwargs,
                        }
                    )
                    return
                starting = _starting(pod, self.base_container_name)
        finally:
            if not provider_event.done():
                provider_event.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await provider_event
            await events.aclose()


class TrainingPodOperator(KubernetesPodOperator):
    """One trait's GPU pod. ``name``, ``arguments``, ``labels`` and ``annotations`` come from the
    ``pod_spec`` task (``kubernetes.pod_spec``); everything else from the settings."""

    ui_color = UI_COLOR
    template_fields = (*KubernetesPodOperator.template_fields, "run_record")

    def __init__(
        self,
        *,
        name: Any,
        arguments: Any,
        labels: Any,
        annotations: Any = None,
        image: str | None = None,
        namespace: str | None = None,
        run_record: Any = None,
        **kwargs: Any,
    ) -> None:
        self.run_record = run_record  # {"traits", "output_dir"}: where a failed try records why
        kwargs.setdefault("map_index_template", MAP_INDEX_TEMPLATE)
        super().__init__(
            name=name,
            arguments=arguments,
            labels=labels,
            annotations=annotations if annotations is not None else {},
            image=image
            or kubernetes.variable_template("trait_lora_trainer_image", settings.get_str("trainer_image")),
            namespace=namespace
            or kubernetes.variable_template("trait_lora_k8s_namespace", settings.get_str("k8s_namespace")),
            cmds=list(TRAINER_CMD),
            deferrable=True,
            **BASE_FIXED,  # the trainer writes result.json next to its adapter: no sidecar, no exec
            get_logs=True,
            on_finish_action="delete_succeeded_pod",
            log_events_on_failure=True,
            log_pod_spec_on_failure=False,  # events and container states say why; the spec is in the UI
            # a failed container's last log lines become its termination message: the trainer's
            # "error: ..." reaches the pod's status, hence the run's failures and its summary
            termination_message_policy="FallbackToLogsOnError",
            **{**kubernetes.operator_settings(), **kwargs},
        )

    @cached_property
    def pod_manager(self) -> PodManager:
        return AdoptingPodManager(kube_client=self.client, callbacks=self.callbacks)

    def build_pod_request_obj(self, context: Any = None, *, dry_run: bool = False) -> Any:
        for attribute, value in kubernetes.pod_settings(self.arguments).items():
            setattr(self, attribute, value)
        if context is not None and self.run_record and not dry_run:
            self.arguments = self._after_oom(self.arguments, context)
        return super().build_pod_request_obj(context, dry_run=dry_run)

    def _after_oom(self, arguments: Any, context: Any) -> list[Any]:
        """The argv with half the micro-batch when this run's last pod of the trait (or of any trait of
        the group) was OOMKilled (its failure record says at which micro-batch), so the retry fits
        where the try did not; a trait's own pod after its group's OOMKilled pod starts there too."""
        from trait_lora.core.handoff import runs

        args = list(arguments or [])
        record = self.run_record or {}
        failures = runs.read_failures(record["output_dir"], context["run_id"])
        tried = []
        for trait in _traits(record):
            failure = failures.get(trait) or {}
            pod = failure.get("pod") if isinstance(failure.get("pod"), dict) else {}
            if pod.get("oom_killed") and isinstance(pod.get("micro_batch"), int):
                tried.append((pod["micro_batch"], trait))
        flag = kubernetes.MICRO_BATCH_FLAG
        if tried and flag in args[:-1]:
            smallest, trait = min(tried)
            half = max(1, smallest // 2)
            args[args.index(flag) + 1] = str(half)
            self.log.warning(
                "the last pod of %s was OOMKilled at micro-batch %d: this one runs with %d",
                trait,
                smallest,
                half,
            )
        return args

    def execute(self, context: Any) -> Any:
        try:
            return super().execute(context)
        except Exception as exc:
            self._failed(context, exc, created=self.pod is not None)

    def trigger_reentry(self, context: Any, event: dict[str, Any]) -> Any:
        self._logs_wanted = self.get_logs
        try:
            if self.get_logs and event.get("status") != "success" and not self._container_started(event):
                # no log to read from a container that never started (a missing Secret, an image that
                # cannot be pulled, no node): the provider would ask three times, seconds apart, for a 400
                self.log.info("no log: container %s never started", self.base_container_name)
                self.get_logs = False
            return super().trigger_reentry(context, event)
        except Exception as exc:
            self._failed(context, exc, created=True)
        finally:
            self.get_logs = self._logs_wanted

    def invoke_defer_method(self, *args: Any, **kwargs: Any) -> Any:
        # a re-deferral (the pod still pending after an "error" event) follows the pod, and its logs,
        # as configured, not as this re-entry left get_logs
        self.get_logs = getattr(self, "_logs_wanted", self.get_logs)
        return super().invoke_defer_method(*args, **kwargs)

    def _container_started(self, event: dict[str, Any]) -> bool:
        try:
            pod = self.hook.get_pod(event["name"], event["namespace"])
        except Exception:  # gone or unreadable: the provider's re-entry says so
            return True
        return _ever_started(pod, self.base_container_name)

    def _failed(self, context: Any, exc: Exception, *, created: bool) -> None:
        """Say why the try failed (task log and the run's failures) and whether to retry; the
        provider's own handling (logs, events, cleanup) has already run."""
        if isinstance(exc, PodTryFailed | PodFailedForGood | AirflowSkipException):
            raise exc
        from kubernetes.client import ApiClient

        pod = ApiClient().sanitize_for_serialization(self.pod) if self.pod is not None else None
        container = next(
            (c for c in ((pod or {}).get("spec") or {}).get("containers") or [] if c.get("name") == "base"),
            {},
        )
        used = kubernetes.argument(container.get("args") or self.arguments, kubernetes.MICRO_BATCH_FLAG)
        failure = pod_failure.diagnose(
            pod,
            error=str(exc),
            created=created,
            container=self.base_container_name,
            micro_batch=int(used) if used and used.isdigit() else None,
            settings={**kubernetes.advice_settings(), "image": container.get("image") or self.image},
            retries_left=context["ti"].try_number <= (self.retries or 0),
        )
        self.log.error("%s", failure.message)
        record = self.run_record or {}
        traits = _traits(record)
        if traits and record.get("output_dir"):
            from trait_lora.core.handoff import runs

            where = f" (in the pod of its group of {len(traits)})" if len(traits) > 1 else ""
            for trait in traits:
                runs.record_failure(
                    record["output_dir"],
                    context["run_id"],
                    trait,
                    "train_pod",
                    f"{trait}{where}: {failure.message}",
                    {"pod": failure.to_dict()},
                )
        raise (PodTryFailed if failure.retry else PodFailedForGood)(failure.message) from exc

    def defer(self, *, trigger: Any, method_name: str, kwargs: Any = None, timeout: Any = None) -> Any:
        if type(trigger) is KubernetesPodTrigger:
            trigger = TrainingPodTrigger(**trigger.serialize()[1])
        super().defer(trigger=trigger, method_name=method_name, kwargs=kwargs, timeout=timeout)

    def get_or_create_pod(self, pod_request_obj: Any, context: Any) -> Any:
        self._found_earlier = True  # what process_pod_deletion is asked about is an earlier try's pod
        try:
            return super().get_or_create_pod(pod_request_obj, context)
        finally:
            self._found_earlier = False

    def process_pod_deletion(self, pod: Any, *, reraise: bool = True) -> bool:
        """``delete_succeeded_pod``, and a pod still ``Pending`` is deleted too: it never ran, so there
        is nothing to inspect but its events (already in the task log), and it holds or awaits a GPU.

        A finished pod of an earlier try that nobody processed (its worker was lost) is not deleted
        and trained again, as the provider would: one that succeeded is followed to its result; one
        that failed is kept for inspection (labelled checked) while a new one starts."""
        phase = getattr(getattr(pod, "status", None), "phase", None)
        if pod is not None and getattr(self, "_found_earlier", False):
            if phase == "Succeeded":
                self.log.info(
                    "pod %s of an earlier try finished: following it to its result", pod.metadata.name
                )
                return False
            self.patch_already_checked(pod, reraise=False)
            self.log.info("pod %s of an earlier try failed: kept, starting a new one", pod.metadata.name)
            return True
        if pod is not None and phase == "Pending":
            self.log.info("Deleting pod %s: it never started", pod.metadata.name)
            try:
                self.pod_manager.delete_pod(pod)
            except Exception:
                if reraise:
                    raise
                self.log.exception("Unable to delete pod %s", pod.metadata.name)
            return True
        return super().process_pod_deletion(pod, reraise=reraise)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """The pod trained on the shard and wrote its adapter to staging (the install task then
        names the installed adapter)."""
        from trait_lora.provider.tracking import lineage

        def value(flag: str) -> list[tuple[str, str]]:
            found = kubernetes.argument(self.arguments, flag)
            return [lineage.dataset_id(found)] if found else []

        trait = dict(self.annotations or {}).get(kubernetes.TRAIT_ANNOTATION) or str(
            dict(self.labels).get("trait", "")
        ).replace("-", "_")
        return lineage.operator_lineage(
            value("--shard"), value("--out"), {"trait": trait, "backend": "kubernetes"}
        )


def pod_manifest(
    plan: dict[str, Any], *, run_id: str, image: str = "", namespace: str = ""
) -> dict[str, Any]:
    """The pod ``trait_lora_kubernetes`` would create for ``plan``, as the JSON the API server receives
    (``trait-lora k8s-pod``): built by the same operator, with the labels of a run's first try; only
    the name's random suffix differs from run to run."""
    from types import SimpleNamespace

    from kubernetes.client import ApiClient

    spec = kubernetes.pod_spec(plan)
    op = TrainingPodOperator(
        task_id="train_pod",
        **kubernetes.operator_arguments(spec),
        image=image or settings.get_str("trainer_image"),
        namespace=namespace or settings.get_str("k8s_namespace"),
    )
    ti = SimpleNamespace(dag_id=DAG_ID, task_id="trait.train_pod", map_index=0, try_number=1)
    pod = op.build_pod_request_obj({"ti": ti, "run_id": run_id, "dag": None}, dry_run=True)
    return ApiClient().sanitize_for_serialization(pod)
