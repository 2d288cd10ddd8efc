"""Job claims: who may create the one paid job of a trait's key, and how a stale holder is fenced off.

Together will not check a token of ours, so the POST itself cannot be fenced (Kleppmann's fencing
tokens need a resource that refuses stale ones). What we can do, and do: record the intent to create
(the claim) by a compare-and-swap before the POST, give every claim a holder and an epoch, refuse any
later write of a holder whose epoch is gone, re-check the claim just before posting, and search
Together by the key's suffix tag before any post that follows a takeover. A dead or zombie holder can
then cost at most the window between its last check and its POST, never a silent second job later.

The holder is the task instance (``dag/run/task/map_index``) and its try: a later try of the same task
instance takes its own earlier claim over at once (after the search), anyone else waits until the claim
is stale. A record whose create may have reached Together (``posted``) never goes stale by age alone:
only a search by suffix that finds nothing lets it go.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from trait_lora.core.errors import LedgerError
from trait_lora.core.jobs.job_status import CREATING
from trait_lora.core.storage.ledger_io import Record, parse_utc, utc_now

CLAIM = "claim"


class ClaimHeld(LedgerError):
    """Another task instance is creating this trait's job right now; wait and look again."""

    def __init__(self, trait: str, holder: str, epoch: int) -> None:
        super().__init__(
            f"{trait}: another task ({holder}, claim {epoch}) is creating this job right now; waiting for "
            "it (its job is adopted once it exists)"
        )
        self.holder = holder
        self.epoch = epoch


class ClaimLost(LedgerError):
    """This holder's claim was taken over (it was stale, or a later try took it): it must write nothing
    more and post nothing more."""


@dataclass(frozen=True)
class Holder:
    """A task instance and its try."""

    id: str
    attempt: int = 1

    def to_json(self) -> dict[str, Any]:
        return {"holder": self.id, "try": self.attempt}


@dataclass(frozen=True)
class Claim:
    """A claim held: its epoch, and whether it was taken over from someone (then search first)."""

    trait: str
    holder: Holder
    epoch: int
    took_over: bool = False


def claim_of(record: Record | None) -> dict[str, Any]:
    claim = (record or {}).get(CLAIM)
    return claim if isinstance(claim, dict) else {}


def epoch_of(record: Record | None) -> int:
    try:
        return int(claim_of(record).get("epoch") or 0)
    except (TypeError, ValueError):
        return 0


def is_fresh_creating(record: Record, now: datetime, stale_after_s: float) -> bool:
    """A ``creating`` with no job id still holds its claim (and a slot): recent, or its POST may have
    reached Together (``posted``: only a search by suffix can let it go)."""
    if record.get("status") != CREATING or record.get("job_id"):
        return False
    if record.get("posted"):
        return True
    return (now - parse_utc(record.get("updated_at"))).total_seconds() <= stale_after_s


def decide_claim(
    trait: str,
    old: Record | None,
    *,
    job_key: str,
    holder: Holder,
    now: datetime,
    stale_after_s: float,
) -> tuple[Record, Claim]:
    """The record after ``holder`` claims the trait's create for ``job_key``, or ClaimHeld.

    Taking over (a stale claim, or an earlier try of the same task instance) bumps the epoch, so every
    write the previous holder still attempts is refused (``check_holder``)."""
    old = old or {}
    same_key = old.get("job_key") in (None, job_key)
    previous = claim_of(old)
    contested = same_key and old.get("status") == CREATING and not old.get("job_id") and previous
    took_over = False
    if contested and previous.get("holder") != holder.id:
        age = (now - parse_utc(old.get("updated_at"))).total_seconds()
        if age <= stale_after_s:  # its holder may be alive: wait for it, its job will be adopted
            raise ClaimHeld(trait, str(previous.get("holder")), epoch_of(old))
        took_over = True
    elif contested:
        took_over = previous.get("try") != holder.attempt
    base = dict(old) if same_key else {}
    epoch = epoch_of(old) + 1
    base.update(
        job_key=job_key,
        status=CREATING,
        updated_at=utc_now(),
        **{CLAIM: {**holder.to_json(), "epoch": epoch, "at": utc_now()}},
    )
    if took_over:
        base.pop("posted", None)  # the new holder searches by suffix before it posts again
    return base, Claim(trait, holder, epoch, took_over=bool(took_over))


def check_holder(trait: str, record: Record | None, claim: Claim) -> None:
    """Refuse a write by a holder whose claim is gone (taken over, or replaced by another key)."""
    if epoch_of(record) != claim.epoch or claim_of(record).get("holder") != claim.holder.id:
        current = claim_of(record)
        raise ClaimLost(
            f"{trait}: this task's claim {claim.epoch} was taken over by {current.get('holder')} "
            f"(claim {current.get('epoch')}); it writes and creates nothing more"
        )
