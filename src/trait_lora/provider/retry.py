"""Retries by kind of failure, through Airflow 3.3's ``retry_policy``.

Airflow retries every failure alike after ``retry_delay``. What Together answers says more: a 429 or a
503 names its own wait (``Retry-After``), a timeout or a reset may pass at once, an answer we could not
read may be readable next time. Those are retried with their own delay. Failures a retry cannot fix
(400/404/422: the request is wrong; 401/403: the key is) are turned into ``AirflowFailException`` where
they happen (``operators.base.guarded``), with Together's message or the connection to fix, so no
policy is consulted for them. A policy can only shorten or delay retries, never add any: ``retries``
still caps them.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from airflow.sdk import RetryDecision, RetryPolicy

RETRYABLE_STATUSES = frozenset({408, 409, 429}) | frozenset(range(500, 600))
MAX_HINTED_DELAY = 600.0  # seconds: a Retry-After beyond this is Together asking for a later run


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it was raised from, innermost last (``raise ... from`` and implicit context)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def together_status(exc: BaseException) -> int | None:
    """The HTTP status of the Together answer behind ``exc``, if one is in its chain."""
    for cause in causes(exc):
        status = getattr(cause, "status_code", None)
        if isinstance(status, int):
            return status
    return None


def is_transport_error(exc: BaseException) -> bool:
    """A timeout or a broken connection on the way to Together (no answer at all)."""
    try:
        from together import APIConnectionError
    except ImportError:  # pragma: no cover - the SDK is a dependency
        return False
    return any(isinstance(cause, APIConnectionError) for cause in causes(exc))


class TogetherRetryPolicy(RetryPolicy):
    """Retry what Together says may pass, with the delay it asks for; default for everything else."""

    def __init__(self, min_delay: float = 0.0) -> None:
        self.min_delay = float(min_delay)

    def evaluate(
        self, exception: BaseException, try_number: int, max_tries: int, context: Any = None
    ) -> RetryDecision:
        from trait_lora.provider.hooks.answers import UnreadableAnswer
        from trait_lora.provider.hooks.together import retry_after_seconds

        status = together_status(exception)
        if status in RETRYABLE_STATUSES:
            hinted = next((h for c in causes(exception) if (h := retry_after_seconds(c)) is not None), None)
            delay = (
                None
                if hinted is None
                else timedelta(seconds=max(self.min_delay, min(hinted, MAX_HINTED_DELAY)))
            )
            how = (
                f"after Together's Retry-After of {hinted:g} s" if hinted is not None else "after retry_delay"
            )
            return RetryDecision.retry(delay, f"Together answered HTTP {status}; retrying {how}")
        if is_transport_error(exception):
            return RetryDecision.retry(None, "no answer from Together (timeout or connection); retrying")
        if any(isinstance(c, UnreadableAnswer) for c in causes(exception)):
            return RetryDecision.retry(None, "an answer from Together could not be read; retrying")
        return RetryDecision.default()

    def serialize(self) -> dict[str, Any]:
        return {"__type": "trait_lora.provider.retry.TogetherRetryPolicy", "min_delay": self.min_delay}

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> TogetherRetryPolicy:
        return cls(min_delay=float(data.get("min_delay", 0.0)))
