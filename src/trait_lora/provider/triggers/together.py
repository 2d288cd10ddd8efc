"""``TogetherFineTuneTrigger``: waits for a Together job in the triggerer, not in a worker slot.

Uses the async client only (the triggerer runs every trigger on one event loop), polls with a
configurable interval, stops at an absolute deadline (``execution_timeout`` is not enforced while a
task is deferred), tolerates a bounded number of transient API errors, and logs each new job event
once. ``on_kill`` cancels the remote job when a user marks the task failed or clears it; a plain
cancellation (triggerer restart, rebalancing) never does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from trait_lora.provider.hooks.together import (
    FAILED_STATUSES,
    TERMINAL_STATUSES,
    TogetherHook,
    first_error_message,
)

CLASSPATH = "trait_lora.provider.triggers.together.TogetherFineTuneTrigger"


def event_key(event: dict[str, Any]) -> tuple[Any, ...]:
    return (event.get("created_at"), event.get("type"), event.get("step"), event.get("message"))


def describe_event(event: dict[str, Any]) -> str:
    step, total = event.get("step"), event.get("total_steps")
    progress = f" (step {step}/{total})" if step is not None and total else ""
    return f"{event.get('type', 'event')}: {event.get('message', '')}{progress}"


class TogetherFineTuneTrigger(BaseTrigger):
    """Fires one event when the job is terminal, the deadline passes, or the API keeps failing."""

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
    ) -> None:
        super().__init__()
        # These cross a serialization boundary into another process: check them here, loudly.
        if not job_id or not isinstance(job_id, str):
            raise ValueError(f"job_id must be a non-empty string, got {job_id!r}")
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be > 0 seconds, got {poll_interval!r}")
        if max_transient_errors < 0:
            raise ValueError(f"max_transient_errors must be >= 0, got {max_transient_errors!r}")
        self.job_id = job_id
        self.trait = trait
        self.together_conn_id = together_conn_id
        self.poll_interval = float(poll_interval)
        self.deadline = float(deadline) if deadline is not None else None
        self.max_transient_errors = int(max_transient_errors)
        self.last_status = last_status

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            CLASSPATH,
            {
                "job_id": self.job_id,
                "trait": self.trait,
                "together_conn_id": self.together_conn_id,
                "poll_interval": self.poll_interval,
                "deadline": self.deadline,
                "max_transient_errors": self.max_transient_errors,
                "last_status": self.last_status,
            },
        )

    def _event(
        self, status: str, message: str, job: dict[str, Any] | None = None, reason: str | None = None
    ) -> TriggerEvent:
        job = job or {}
        return TriggerEvent(
            {
                "status": status,
                "job_id": self.job_id,
                "trait": self.trait,
                "message": message,
                "reason": reason,  # Together's own words for a failed job, without our framing
                "total_price": job.get("total_price"),
            }
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = TogetherHook(together_conn_id=self.together_conn_id)
        client = await hook.get_async_client()
        seen: set[tuple[Any, ...]] = set()
        errors = 0
        status = self.last_status
        try:
            while True:
                if self.deadline is not None and time.time() >= self.deadline:
                    yield self._event(
                        "timeout",
                        f"job {self.job_id} ({self.trait}) still {status or 'unknown'} at the deadline; "
                        "it was NOT cancelled: raise wait_timeout or cancel it in Together's dashboard",
                    )
                    return
                try:
                    job = await hook.aget_job(client, self.job_id)
                except Exception as exc:  # transient: network, 429, 5xx after the SDK's own retries
                    errors += 1
                    self.log.warning(
                        "%s: polling job %s failed (%d/%d tolerated): %s",
                        self.trait,
                        self.job_id,
                        errors,
                        self.max_transient_errors,
                        type(exc).__name__,
                    )
                    if errors > self.max_transient_errors:
                        yield self._event(
                            "poll_error",
                            f"polling job {self.job_id} failed {errors} times in a row "
                            f"({type(exc).__name__}); the job was not cancelled",
                        )
                        return
                    await asyncio.sleep(self.poll_interval)
                    continue
                errors = 0
                new_status = str(job.get("status"))
                events = job.get("events")
                if events is None and new_status != status:
                    events = await self._events(hook, client)
                for event in events or []:
                    key = event_key(event)
                    if key not in seen:
                        seen.add(key)
                        self.log.info("%s [%s] %s", self.trait, self.job_id, describe_event(event))
                if new_status != status:
                    self.log.info("%s: job %s is %s", self.trait, self.job_id, new_status)
                    status = new_status
                if status in TERMINAL_STATUSES:
                    message, reason = f"job {self.job_id} {status}", None
                    if status in FAILED_STATUSES:
                        if events is None:
                            events = await self._events(hook, client)
                        reason = first_error_message(events or []) or job.get("message") or job.get("error")
                        message = f"job {self.job_id} ended {status}: {reason or 'no message from Together'}"
                    yield self._event(status, message, job, reason)
                    return
                await asyncio.sleep(self.poll_interval)
        finally:
            await client.close()

    async def _events(self, hook: TogetherHook, client: Any) -> list[dict[str, Any]]:
        try:
            return await hook.alist_events(client, self.job_id)
        except Exception as exc:
            self.log.warning(
                "%s: could not read events of %s: %s", self.trait, self.job_id, type(exc).__name__
            )
            return []

    async def on_kill(self) -> None:
        """A user marked the task failed/success or cleared it: stop paying for the job."""
        hook = TogetherHook(together_conn_id=self.together_conn_id)
        client = await hook.get_async_client()
        try:
            job = await hook.aget_job(client, self.job_id)
            if job.get("status") not in TERMINAL_STATUSES:
                await hook.acancel_job(client, self.job_id)
                self.log.warning("%s: cancelled Together job %s on user request", self.trait, self.job_id)
        finally:
            await client.close()
