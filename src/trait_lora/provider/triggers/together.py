"""Triggers that wait on Together in the triggerer, not in a worker slot.

``TogetherFineTuneTrigger`` waits for a job, ``TogetherFileTrigger`` for Together's (asynchronous)
validation of an uploaded file. Both use the async client only (the triggerer runs every trigger on
one event loop), poll at a configurable interval, stop at an absolute deadline (``execution_timeout``
is not enforced while a task is deferred), tolerate a bounded number of transient API errors, and fire
exactly one event (records in ``trait_lora.provider.records``). The job trigger logs each new Together
event once; its ``on_kill`` cancels the remote job when a user marks the task failed or clears it (if
``cancel_on_kill``), while a plain cancellation (triggerer restart, rebalancing) never does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from trait_lora.core.jobs.job_status import JobStatus
from trait_lora.provider.hooks.answers import file_status
from trait_lora.provider.hooks.together import TogetherHook, first_error_message, is_permanent
from trait_lora.provider.records import (
    ENDED,
    FILE_DONE,
    FILE_OK,
    POLL_ERROR,
    TIMEOUT,
    FileEvent,
    JobEvent,
    usd_from_nano,
)

CLASSPATH = "trait_lora.provider.triggers.together.TogetherFineTuneTrigger"
FILE_CLASSPATH = "trait_lora.provider.triggers.together.TogetherFileTrigger"


def event_key(event: dict[str, Any]) -> tuple[Any, ...]:
    return (event.get("created_at"), event.get("type"), event.get("step"), event.get("message"))


def describe_event(event: dict[str, Any]) -> str:
    step, total = event.get("step"), event.get("total_steps")
    progress = f" (step {step}/{total})" if step is not None and total else ""
    return f"{event.get('type', 'event')}: {event.get('message', '')}{progress}"


class _PollingTrigger(BaseTrigger):
    """Shared argument checks and the bounded-error polling loop."""

    def __init__(
        self,
        *,
        trait: str,
        together_conn_id: str,
        poll_interval: float,
        deadline: float | None,
        max_transient_errors: int,
    ) -> None:
        super().__init__()
        # These cross a serialization boundary into another process: check them here, loudly.
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be > 0 seconds, got {poll_interval!r}")
        if max_transient_errors < 0:
            raise ValueError(f"max_transient_errors must be >= 0, got {max_transient_errors!r}")
        self.trait = trait
        self.together_conn_id = together_conn_id
        self.poll_interval = float(poll_interval)
        self.deadline = float(deadline) if deadline is not None else None
        self.max_transient_errors = int(max_transient_errors)

    def _common(self) -> dict[str, Any]:
        return {
            "trait": self.trait,
            "together_conn_id": self.together_conn_id,
            "poll_interval": self.poll_interval,
            "deadline": self.deadline,
            "max_transient_errors": self.max_transient_errors,
        }

    def _past_deadline(self) -> bool:
        return self.deadline is not None and time.time() >= self.deadline

    async def _poll(self, what: str, call: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any] | str:
        """One poll that rides out transient errors; returns the object, or a poll_error message."""
        errors = 0
        while True:
            try:
                return await call()
            except Exception as exc:  # transient: network, 429, 5xx after the SDK's own retries
                status = getattr(exc, "status_code", None)
                if is_permanent(exc):  # 401/403/404...: polling again cannot change the answer
                    return f"polling {what} was refused by Together (HTTP {status}): {exc}"
                errors += 1
                self.log.warning(
                    "%s: polling %s failed (%d/%d tolerated): %s",
                    self.trait,
                    what,
                    errors,
                    self.max_transient_errors,
                    type(exc).__name__,
                )
                if errors > self.max_transient_errors:
                    return f"polling {what} failed {errors} times in a row ({type(exc).__name__})"
                if self._past_deadline():
                    return f"polling {what} kept failing until the deadline ({type(exc).__name__})"
                await asyncio.sleep(self.poll_interval)


class TogetherFineTuneTrigger(_PollingTrigger):
    """Fires one ``JobEvent`` when the job ends (or is being cancelled), the deadline passes, or the
    API keeps failing."""

    def __init__(
        self,
        *,
        job_id: str,
        trait: str,
        together_conn_id: str = TogetherHook.default_conn_name,
        poll_interval: float = 30.0,
        deadline: float | None = None,
        max_transient_errors: int = 10,
        last_status: str | None = None,
        cancel_on_kill: bool = True,
    ) -> None:
        if not job_id or not isinstance(job_id, str):
            raise ValueError(f"job_id must be a non-empty string, got {job_id!r}")
        super().__init__(
            trait=trait,
            together_conn_id=together_conn_id,
            poll_interval=poll_interval,
            deadline=deadline,
            max_transient_errors=max_transient_errors,
        )
        self.job_id = job_id
        self.last_status = last_status
        self.cancel_on_kill = bool(cancel_on_kill)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            CLASSPATH,
            {
                "job_id": self.job_id,
                **self._common(),
                "last_status": self.last_status,
                "cancel_on_kill": self.cancel_on_kill,
            },
        )

    def _event(self, outcome: str, status: str, message: str, **extra: Any) -> TriggerEvent:
        return TriggerEvent(JobEvent(outcome, self.job_id, self.trait, status, message, **extra).payload())

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = TogetherHook(together_conn_id=self.together_conn_id)
        client = await hook.get_async_client()
        seen: set[tuple[Any, ...]] = set()
        warned: set[str] = set()
        status = JobStatus.of(self.last_status)
        try:
            while True:
                if self._past_deadline():
                    yield self._event(
                        TIMEOUT,
                        status.value,
                        f"job {self.job_id} ({self.trait}) still {status.value or 'unknown'} at the "
                        "deadline; it was NOT cancelled: raise wait_timeout or cancel it in Together's "
                        "dashboard",
                    )
                    return
                job = await self._poll(f"job {self.job_id}", lambda: hook.aget_job(client, self.job_id))
                if isinstance(job, str):
                    yield self._event(POLL_ERROR, status.value, f"{job}; the job was not cancelled")
                    return
                new = JobStatus.of(job.get("status"))
                # Together's job object may carry no events or an empty list: that means "none
                # shown here", not "none happened"; read the events endpoint on each status change.
                events = job.get("events") or None
                if events is None and new != status:
                    events = await self._events(hook, client)
                self._log_events(events or [], seen)
                if new != status:
                    if not new.is_known and new.value not in warned:
                        warned.add(new.value)
                        self.log.warning(
                            "%s: job %s has status %r, unknown to this version; still polling it "
                            "(it is not treated as finished or failed)",
                            self.trait,
                            self.job_id,
                            new.value,
                        )
                    self.log.info("%s: job %s is %s", self.trait, self.job_id, new.value)
                    status = new
                if status.ends_wait:
                    yield await self._ended(hook, client, job, status, events)
                    return
                await asyncio.sleep(self.poll_interval)
        finally:
            await client.close()

    async def _ended(
        self, hook: TogetherHook, client: Any, job: dict[str, Any], status: JobStatus, events: Any
    ) -> TriggerEvent:
        price = usd_from_nano(job.get("total_price"))
        if not status.is_ending:
            return self._event(ENDED, status.value, f"job {self.job_id} {status}", total_price_usd=price)
        reason = first_error_message(events or [])
        if reason is None:  # the inline list was empty or had no error yet: ask the events endpoint
            reason = first_error_message(await self._events(hook, client))
        reason = reason or job.get("message") or job.get("error")
        message = f"job {self.job_id} ended {status}: {reason or 'no message from Together'}"
        return self._event(ENDED, status.value, message, reason=reason, total_price_usd=price)

    def _log_events(self, events: list[dict[str, Any]], seen: set[tuple[Any, ...]]) -> None:
        for event in events:
            key = event_key(event)
            if key not in seen:
                seen.add(key)
                self.log.info("%s [%s] %s", self.trait, self.job_id, describe_event(event))

    async def _events(self, hook: TogetherHook, client: Any) -> list[dict[str, Any]]:
        try:
            return await hook.alist_events(client, self.job_id)
        except Exception as exc:
            self.log.warning(
                "%s: could not read events of %s: %s", self.trait, self.job_id, type(exc).__name__
            )
            return []

    async def on_kill(self) -> None:
        """A user marked the task failed/success or cleared it: stop paying for the job (if asked to)."""
        if not self.cancel_on_kill:
            self.log.info("%s: cancel_on_kill is off; job %s keeps running", self.trait, self.job_id)
            return
        hook = TogetherHook(together_conn_id=self.together_conn_id)
        client = await hook.get_async_client()
        try:
            job = await hook.aget_job(client, self.job_id)
            status = JobStatus.of(job.get("status"))
            if not status.ends_wait:
                await hook.acancel_job(client, self.job_id)
                self.log.warning("%s: cancelled Together job %s on user request", self.trait, self.job_id)
        finally:
            await client.close()


class TogetherFileTrigger(_PollingTrigger):
    """Fires one ``FileEvent`` when Together has validated (or rejected) an uploaded file."""

    def __init__(
        self,
        *,
        file_id: str,
        trait: str,
        together_conn_id: str = TogetherHook.default_conn_name,
        poll_interval: float = 5.0,
        deadline: float | None = None,
        max_transient_errors: int = 10,
        model: str | None = None,
    ) -> None:
        if not file_id or not isinstance(file_id, str):
            raise ValueError(f"file_id must be a non-empty string, got {file_id!r}")
        super().__init__(
            trait=trait,
            together_conn_id=together_conn_id,
            poll_interval=poll_interval,
            deadline=deadline,
            max_transient_errors=max_transient_errors,
        )
        self.file_id = file_id
        self.model = model  # asked in the price estimate when the file object carries no status

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (FILE_CLASSPATH, {"file_id": self.file_id, **self._common(), "model": self.model})

    async def _status(self, hook: TogetherHook, client: Any, found: dict[str, Any]) -> str | None:
        """The file's verdict: its ``processing_status`` where sent, else what the price estimate says
        (the spec's file object has only ``Processed``, which a rejected file has too); None: the
        estimate kept failing (a poll_error)."""
        status = file_status(found)
        if status:
            return status
        if not self.model:  # a trigger serialized before ``model`` existed: trust ``Processed``
            return FILE_OK if found.get("Processed") is True else ""
        model = self.model
        verdict = await self._poll(
            f"the estimate for file {self.file_id}", lambda: hook.afile_verdict(client, self.file_id, model)
        )
        return verdict if verdict in ("", *FILE_DONE) else None

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = TogetherHook(together_conn_id=self.together_conn_id)
        client = await hook.get_async_client()
        status = ""
        try:
            while True:
                if self._past_deadline():
                    message = f"file {self.file_id} still {status or 'unknown'} at the deadline"
                    yield TriggerEvent(
                        FileEvent(TIMEOUT, self.file_id, self.trait, status, message).payload()
                    )
                    return
                found = await self._poll(f"file {self.file_id}", lambda: hook.aget_file(client, self.file_id))
                if isinstance(found, str):
                    yield TriggerEvent(
                        FileEvent(POLL_ERROR, self.file_id, self.trait, status, found).payload()
                    )
                    return
                new = await self._status(hook, client, found)
                if new is None:
                    message = f"the price estimate for file {self.file_id} kept failing"
                    yield TriggerEvent(
                        FileEvent(POLL_ERROR, self.file_id, self.trait, status, message).payload()
                    )
                    return
                if new != status:
                    self.log.info("%s: file %s is %s", self.trait, self.file_id, new or "not validated yet")
                    status = new
                if status in FILE_DONE:
                    report = found.get("validation_report") or {}
                    message = f"file {self.file_id} {status}"
                    yield TriggerEvent(
                        FileEvent(ENDED, self.file_id, self.trait, status, message, report).payload()
                    )
                    return
                await asyncio.sleep(self.poll_interval)
        finally:
            await client.close()
