"""Injected faults: statuses, resets, lost create answers, random failures (what a real network and
service do to a client)."""

from __future__ import annotations

import random
import re
from typing import Any

from tests.fake_together.state import FakeState
from tests.fake_together.wire import (
    _error,
    _Fault,
    _json_reply,
    _RandomFaults,
    _Reply,
    _Request,
    _seconds,
)

# --------------------------------------------------------------------------------------------------
# The fake
# --------------------------------------------------------------------------------------------------


class FaultsMixin(FakeState):
    """Fault injection of ``FakeTogether`` (state lives on the fake)."""

    # ----------------------------------------------------------------------------------------------
    # Faults
    # ----------------------------------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        path_regex: str,
        status: int = 503,
        times: int = 1,
        retry_after: float | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        """The next ``times`` matching requests get ``status`` before anything happens (no state change).

        Rules are consumed in the order added. A 429 always carries ``Retry-After`` (``retry_after`` or
        ``retry_after_default``); other statuses carry it only when ``retry_after`` is given. ``body``
        replaces the default ``{"error": {...}}`` JSON.
        """
        with self._lock:
            self._faults.append(
                _Fault(method.upper(), re.compile(path_regex), times, "status", status, retry_after, body)
            )

    def reset_next(self, method: str, path_regex: str, times: int = 1) -> None:
        """The next ``times`` matching requests are read, then the connection is reset with no answer."""
        with self._lock:
            self._faults.append(_Fault(method.upper(), re.compile(path_regex), times, "reset"))

    def drop_create_response(self, times: int = 1) -> None:
        """The next ``times`` successful ``POST /v1/fine-tunes`` CREATE the job, then reset the connection.

        This is the lost-answer case: the client sees a connection error although a paid job exists.
        """
        with self._lock:
            self._drop_creates += times

    def fail_randomly(
        self,
        rate: float,
        statuses: tuple[int, ...] = (429, 503),
        seed: int = 0,
        retry_after: float | None = 0.01,
        *,
        include_storage: bool = False,
    ) -> None:
        """That share of API requests (every ``/v1/...`` path, download included) fail before doing anything.

        The storage PUT of an upload is left alone unless ``include_storage``: the SDK sends that PUT
        through bare httpx with no retry, so a random failure there fails the whole upload instead of
        exercising retries. Seeded, so a single-threaded test sees the same failures every run.
        ``fail_randomly(0)`` turns it off. Explicit ``fail_next``/``reset_next`` rules are applied first.
        """
        if not 0 <= rate <= 1:
            raise ValueError("rate must be within [0, 1]")
        with self._lock:
            self._random = (
                _RandomFaults(rate, tuple(statuses), random.Random(seed), retry_after, include_storage)
                if rate
                else None
            )

    def _fault_for(self, req: _Request) -> _Reply | None:
        for fault in self._faults:
            if fault.remaining > 0 and fault.method == req.method and fault.pattern.search(req.path):
                fault.remaining -= 1
                self._faults = [f for f in self._faults if f.remaining > 0]
                if fault.kind == "reset":
                    return _Reply(action="reset")
                return self._fault_reply(fault.status, fault.retry_after, fault.body)
        rnd = self._random
        in_scope = rnd is not None and (req.path.startswith("/v1/") or rnd.include_storage)
        if rnd is not None and in_scope and rnd.rng.random() < rnd.rate:
            return self._fault_reply(rnd.rng.choice(rnd.statuses), rnd.retry_after, None)
        return None

    def _fault_reply(self, status: int, retry_after: float | None, body: dict[str, Any] | None) -> _Reply:
        if retry_after is None and status == 429:
            retry_after = self.retry_after_default
        headers = {"Retry-After": _seconds(retry_after)} if retry_after is not None else {}
        if body is not None:
            return _json_reply(status, body, headers)
        kind = "rate_limit_exceeded" if status == 429 else "server_error"
        return _error(status, f"injected fault: HTTP {status}", type_=kind, headers=headers)
