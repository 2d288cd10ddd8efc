"""Reading what Together sends, liberally.

Together's public OpenAPI spec promises less than SDK 3.1.1's types declare (the model limits answer
requires nine fields in the spec, about twenty in the SDK; the spec's file object has ``Processed`` and
no ``processing_status``). The SDK itself parses answers leniently, so a strict re-validation of our
own (``FinetuneModelLimits.model_validate``) refused answers the SDK accepts and failed every launch.
Here every answer is read for the fields we use, a missing one is either not checked (limits) or a
reason to wait (file validation), and an answer we truly cannot read names the endpoint and the field.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Mapping
from typing import Any

log = logging.getLogger(__name__)

LIMITS_ENDPOINT = "GET /v1/fine-tunes/models/limits"
FILE_OK = "COMPLETED"
FILE_REJECTED = frozenset({"FAILED", "INVALID_FORMAT"})
FILE_DONE = FILE_REJECTED | {FILE_OK}
# ``unavailable_reason`` values of the price estimate (the SDK's ``UnavailableEstimate``).
NOT_VALIDATED_YET = frozenset({"train_file_not_validated", "eval_file_not_validated"})
INVALID_FILE = frozenset({"train_file_invalid", "eval_file_invalid"})

# Stand-ins for limits the answer did not give: wide enough that the SDK's own checks pass, so only
# Together's server decides what we could not check ourselves.
_NO_LIMIT = 1 << 30
_WARNED: set[tuple[str, str]] = set()


class UnreadableAnswer(Exception):
    """An answer from Together we cannot read: a retry may get a readable one; our parameters are fine."""

    def __init__(self, endpoint: str, field: str, detail: str = "") -> None:
        self.endpoint = endpoint
        self.field = field
        super().__init__(
            f"Together's answer to {endpoint} has no usable {field!r}"
            + (f" ({detail})" if detail else "")
            + "; retrying. If this persists, Together's API has changed: report it with this message"
        )


def warn_unchecked(model: str, fields: list[str]) -> None:
    """A limit Together did not send is not checked by us; said once per process and field."""
    for name in fields:
        if (model, name) not in _WARNED:
            _WARNED.add((model, name))
            log.warning(
                "Together's limits for %s do not include %s; it is not checked before the job is "
                "created (Together still refuses a value out of range)",
                model,
                name,
            )


def sdk_model_limits(raw: Mapping[str, Any], *, lora_r: int) -> Any:
    """The SDK's ``FinetuneModelLimits`` built from whatever the server sent, never re-validated.

    ``fine_tuning.create`` reads a few limits itself (LoRA batch sizes, sequence-length bounds,
    ``supports_vision``); a missing one gets a stand-in that lets the SDK's check pass. Our own check
    (``core.limits``) has already run on every limit that was present.
    """
    from together.types.finetune_model_limits import FinetuneModelLimits, FullTraining, LoraTraining

    if not isinstance(raw, Mapping):
        raise UnreadableAnswer(LIMITS_ENDPOINT, "body", f"not a JSON object: {type(raw).__name__}")
    lora_raw = raw.get("lora_training") if isinstance(raw.get("lora_training"), Mapping) else {}
    lora = LoraTraining.model_construct(
        default_rank=_int_or(lora_raw.get("default_rank"), lora_r),
        max_batch_size=_int_or(lora_raw.get("max_batch_size"), _NO_LIMIT),
        max_batch_size_dpo=_int_or(lora_raw.get("max_batch_size_dpo"), _NO_LIMIT),
        max_rank=_int_or(lora_raw.get("max_rank"), _NO_LIMIT),
        min_batch_size=_int_or(lora_raw.get("min_batch_size"), 1),
        target_modules=list(lora_raw.get("target_modules") or []),
    )
    full_raw = raw.get("full_training")
    full = (
        FullTraining.model_construct(
            max_batch_size=_int_or(full_raw.get("max_batch_size"), _NO_LIMIT),
            max_batch_size_dpo=_int_or(full_raw.get("max_batch_size_dpo"), _NO_LIMIT),
            min_batch_size=_int_or(full_raw.get("min_batch_size"), 1),
        )
        if isinstance(full_raw, Mapping)
        else None
    )
    fields: dict[str, Any] = {
        "lora_training": lora,
        "full_training": full,
        "min_max_seq_length": _int_or(raw.get("min_max_seq_length"), 0),
        "max_seq_length_sft": _int_or(raw.get("max_seq_length_sft"), _NO_LIMIT),
        "max_seq_length_dpo": _int_or(raw.get("max_seq_length_dpo"), _NO_LIMIT),
        "supports_vision": raw.get("supports_vision") is True,
    }
    passthrough = {k: v for k, v in raw.items() if k not in fields and k != "model_name"}
    if "model_name" in raw:
        passthrough["api_model_name"] = raw["model_name"]
    return FinetuneModelLimits.model_construct(**passthrough, **fields)


def _int_or(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def file_status(found: Mapping[str, Any]) -> str:
    """Together's verdict on an uploaded file: COMPLETED / FAILED / INVALID_FORMAT / a pending status,
    or "" when the answer does not say (the spec's shape: ``Processed`` and no ``processing_status``).

    ``Processed: true`` alone is not a verdict (a rejected file is processed too): the caller then asks
    the price estimate, which says whether the file is valid, invalid or not validated yet.
    """
    status = found.get("processing_status")
    return str(status).upper() if status else ""


def estimate_verdict(estimate: Mapping[str, Any]) -> str:
    """What a price estimate says about the file it was asked for: COMPLETED, INVALID_FORMAT or ""."""
    if estimate.get("estimation_available") is False:
        reason = str(estimate.get("unavailable_reason") or "")
        if reason in NOT_VALIDATED_YET:
            return ""
        if reason in INVALID_FILE:
            return "INVALID_FORMAT"
    return FILE_OK  # a price (or a reason that is not about the file): Together accepted it


# Held-out loss keys in a metrics row: ``eval/loss`` (the W&B naming of the spec's ``train/loss``),
# ``eval_loss`` (the SDK's early-stopping help, HF Trainer's name), and the ``validation`` spellings.
HELD_OUT_KEYS = ("eval/loss", "eval_loss", "validation/loss", "validation_loss", "val/loss", "eval/eval_loss")


def held_out_loss(row: Mapping[str, Any]) -> float | None:
    for key in HELD_OUT_KEYS:
        value = row.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def rejection_detail(report: Mapping[str, Any] | None) -> str:
    """Together's own words from a ``validation_report``; says so when there are none."""
    report = report or {}
    detail = report.get("error") or report.get("message")
    if detail:
        return str(detail)
    return "Together gave no reason (its file object carries no validation_report)"


# Event levels/types that carry Together's reason for a failed job. Compared in lower case: the SDK's
# generated enums say ``error``/``job_error``, its hand-written ones ``Error``/``JOB_ERROR``.
ERROR_LEVELS = frozenset({"error", "legacy_ierror"})
ERROR_TYPES = frozenset({"job_error", "job_user_error", "job_failed", "job_stopped"})


def job_to_dict(job: Any) -> dict[str, Any]:
    """A JSON-safe dict of an SDK job object (keeps fields the generated model does not declare)."""
    if isinstance(job, dict):
        return dict(job)
    data = job.model_dump(mode="json", by_alias=True) if hasattr(job, "model_dump") else dict(vars(job))
    extra = getattr(job, "model_extra", None) or {}
    for key, value in extra.items():
        data.setdefault(key, value)
    return data


def output_name(job: dict[str, Any]) -> str | None:
    """Sync ``create`` says ``output_name``, ``retrieve`` says ``model_output_name``: read both."""
    return job.get("model_output_name") or job.get("output_name") or job.get("x_model_output_name")


def job_matches_tag(job: dict[str, Any], tag: str) -> bool:
    """A job is ours for a key when its suffix (or, failing that, its output name) carries the tag."""
    suffix = job.get("suffix") or ""
    if suffix:
        return suffix.endswith(tag)
    return tag in (output_name(job) or "")


def is_permanent(exc: BaseException) -> bool:
    """A 4xx other than 408/409/429: the request itself is wrong, retrying the task cannot help."""
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and 400 <= status < 500 and status not in (408, 409, 429)


def retry_after_seconds(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                return None
    return None


def backoff_delay(
    attempt: int, exc: BaseException | None = None, base: float = 1.0, cap: float = 60.0
) -> float:
    """Retry-After when the server gave one, else exponential backoff with full jitter."""
    hinted = retry_after_seconds(exc) if exc is not None else None
    if hinted is not None:
        return min(cap, hinted) + random.uniform(0, min(1.0, hinted * 0.1 + 0.01))
    return random.uniform(0, min(cap, base * (2**attempt)))


def conflict_is_final(response: Any) -> None:
    """httpx response hook: the SDK obeys ``x-should-retry``; a 409 answer cannot change on retry."""
    if response.status_code == 409:
        response.headers["x-should-retry"] = "false"


def first_error_message(events: Iterable[dict[str, Any]]) -> str | None:
    """Together's own words for a failed job: the last error (or stop) event's message.

    The job objects have no error field; the events are the only place Together says why.
    """
    message = None
    for event in events:
        level = str(event.get("level") or "").lower()
        kind = str(event.get("type") or "").lower()
        # job_stopped: a cancelled job's reason is a stop event (level warning, not error)
        if level in ERROR_LEVELS or kind in ERROR_TYPES:
            message = event.get("message") or message
    return message


# The SDK's ValueError messages for our parameters (lib/resources/fine_tuning.py), by the parameter
# they are about: the message then names our run parameter, not only the SDK's words.
_SDK_CHECKS = (
    ("batch size", "batch_size"),
    ("warmup ratio", "warmup_ratio"),
    ("min learning rate ratio", "min_lr_ratio"),
    ("gradient norm", "max_grad_norm"),
    ("weight decay", "weight_decay"),
    ("sequence length", "max_seq_length"),
    ("lora dropout", "lora_dropout"),
    ("number of cycles", "scheduler_num_cycles"),
    ("early stopping", "eval_fraction"),
)


def sdk_refusal(trait: str, exc: ValueError) -> str:
    """Our parameter refused by the SDK's own checks: which one, and the SDK's words (with the range)."""
    text = str(exc)
    names = [name for words, name in _SDK_CHECKS if words in text.lower()]
    which = f"parameter {names[0]}" if names else "a parameter"
    return (
        f"{trait}: the Together SDK refused {which} before anything was sent: {text}. Change it in "
        "the run's parameters and trigger again"
    )
