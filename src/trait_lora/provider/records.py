"""Typed records for what crosses XCom and the trigger boundary; plain JSON on the wire.

A trait's result travels upload -> launch -> wait -> download as one JSON object: the plan ``discover``
made (opaque here) plus what each step learned. ``TraitJob`` is that object inside the code, so a step
reads ``job.file_id`` rather than fishing in a dict; trigger events get the same treatment, and
``from_payload`` refuses an event that is not one of ours instead of failing on a missing key later.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trait_lora.core.jobs.job_status import JobStatus

# Together's ``processing_status`` of an uploaded file once its (asynchronous) validation has ended.
from trait_lora.provider.hooks.answers import FILE_DONE as FILE_DONE
from trait_lora.provider.hooks.answers import FILE_OK as FILE_OK
from trait_lora.provider.hooks.answers import FILE_REJECTED as FILE_REJECTED

NANODOLLARS = 1e9  # a job's ``total_price`` is integer nano-USD


def usd_from_nano(raw: object) -> float | None:
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return round(raw / NANODOLLARS, 6)
    return None


@dataclass(frozen=True)
class TraitJob:
    """One trait's Together job as the per-trait tasks hand it on."""

    plan: Mapping[str, Any]
    file_id: str | None = None
    validation_file_id: str | None = None  # the held-out part of the shard, when it has one
    num_validation: int = 0
    job_id: str | None = None
    status: str | None = None
    adopted: bool = False
    estimated_price: float | None = None
    total_price: float | None = None  # USD
    output_name: str | None = None

    @classmethod
    def from_xcom(cls, data: Mapping[str, Any] | Any) -> TraitJob:
        from trait_lora.core.handoff.runs import load_trait_plan

        data = load_trait_plan(data)  # the first step gets discover's ref; later ones the whole record
        if not data.get("trait"):
            raise ValueError(f"not a per-trait result (no 'trait'): keys {sorted(data)}")
        names = {f.name for f in dataclasses.fields(cls)} - {"plan"}
        own = {k: data.pop(k) for k in list(data) if k in names}
        return cls(plan=data, **own)

    def to_xcom(self) -> dict[str, Any]:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "plan"}
        return {**self.plan, **fields}

    def but(self, **changes: Any) -> TraitJob:
        return dataclasses.replace(self, **changes)

    @property
    def trait(self) -> str:
        return str(self.plan["trait"])

    @property
    def job_key(self) -> str:
        return str(self.plan["job_key"])

    @property
    def output_dir(self) -> str:
        return str(self.plan["output_dir"])

    @property
    def job_status(self) -> JobStatus:
        return JobStatus.of(self.status)


# What a trigger's wait ended with (besides the job's own terminal status).
TIMEOUT = "timeout"
POLL_ERROR = "poll_error"
ENDED = "ended"


@dataclass(frozen=True)
class JobEvent:
    """The one event ``TogetherFineTuneTrigger`` fires."""

    outcome: str  # ENDED | TIMEOUT | POLL_ERROR
    job_id: str
    trait: str
    status: str  # Together's last status of the job
    message: str
    reason: str | None = None  # Together's own words for a failed job, without our framing
    total_price_usd: float | None = None

    def payload(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_payload(cls, payload: Any) -> JobEvent:
        return _from_payload(cls, payload, (ENDED, TIMEOUT, POLL_ERROR))


@dataclass(frozen=True)
class FileEvent:
    """The one event ``TogetherFileTrigger`` fires: Together's validation of an uploaded file ended."""

    outcome: str  # ENDED | TIMEOUT | POLL_ERROR
    file_id: str
    trait: str
    status: str  # processing_status: COMPLETED, FAILED, INVALID_FORMAT (or the last seen)
    message: str
    report: dict[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_payload(cls, payload: Any) -> FileEvent:
        return _from_payload(cls, payload, (ENDED, TIMEOUT, POLL_ERROR))


def _from_payload(cls: Any, payload: Any, outcomes: tuple[str, ...]) -> Any:
    if not isinstance(payload, Mapping):
        raise ValueError(f"{cls.__name__}: expected an event object, got {type(payload).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    # ``status`` may be empty: a wait that timed out before its first successful poll saw none.
    missing = [n for n in required if payload.get(n) in (None, "") and n not in ("message", "status")]
    if missing or payload.get("outcome") not in outcomes:
        raise ValueError(
            f"{cls.__name__}: malformed trigger event (missing {missing or 'nothing'}, outcome "
            f"{payload.get('outcome')!r}); was it fired by an older version of this provider? Clear the task"
        )
    return cls(**{n: payload[n] for n in names if n in payload})
