"""Together job statuses as one type: an open set, because the SDK types ``status`` as enum-or-str
"for forward compatibility", so a status nobody listed must neither crash us nor look finished.

Every place that asks "is this job over?", "did it fail?" or "may a run adopt it?" asks this type,
instead of repeating string sets in the hook, the plan and the trigger.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class KnownStatus(StrEnum):
    """What Together documents (plus ``user_error``, which the generated SDK Literal omits)."""

    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    COMPRESSING = "compressing"
    UPLOADING = "uploading"
    CANCEL_REQUESTED = "cancel_requested"
    CANCELLED = "cancelled"
    ERROR = "error"
    USER_ERROR = "user_error"
    COMPLETED = "completed"


FAILED = frozenset({KnownStatus.CANCELLED, KnownStatus.ERROR, KnownStatus.USER_ERROR})
TERMINAL = FAILED | {KnownStatus.COMPLETED}
# Our own ledger-only statuses: the create is about to be sent (or was sent and its answer is not
# known), and a create Together (or the SDK) definitely refused, which holds no slot.
CREATING = "creating"
NOT_CREATED = "not_created"


@dataclass(frozen=True)
class JobStatus:
    """One status value as Together (or our ledger) wrote it, normalised to lower case."""

    value: str

    @classmethod
    def of(cls, raw: object) -> JobStatus:
        text = getattr(raw, "value", raw)
        return cls(str(text or "").strip().lower())

    @property
    def known(self) -> KnownStatus | None:
        try:
            return KnownStatus(self.value)
        except ValueError:
            return None

    @property
    def is_known(self) -> bool:
        return self.known is not None or self.value in (CREATING, NOT_CREATED)

    @property
    def is_terminal(self) -> bool:
        """Together will not change this job any more."""
        return self.known in TERMINAL

    @property
    def is_failed(self) -> bool:
        """Ended without an adapter: error, user_error or cancelled."""
        return self.known in FAILED

    @property
    def is_ending(self) -> bool:
        """Failed, or on its way there (``cancel_requested``): never adopt it, never wait to finish it."""
        return self.is_failed or self.known is KnownStatus.CANCEL_REQUESTED

    @property
    def ends_wait(self) -> bool:
        """Nothing left to wait for: the job ended, or is being cancelled (which only ends in failure)."""
        return self.is_terminal or self.is_ending

    @property
    def is_adoptable(self) -> bool:
        """A job for our key in this status is ours to poll (running, completed, or unknown: never
        duplicate a job whose status we cannot read)."""
        return bool(self.value) and self.value not in (CREATING, NOT_CREATED) and not self.is_ending

    @property
    def in_flight(self) -> bool:
        """Counts against the cap on jobs in flight: anything Together may still be running or billing."""
        return bool(self.value) and self.value != NOT_CREATED and not self.is_terminal

    def __str__(self) -> str:
        return self.value
