"""The cost gate: refuse a launch before it is paid for, not after.

Mapped launch tasks of one run check the per-run budget at the same moment, so the reservation is a
compare-and-swap of one small JSON record (on a folder or object storage alike). A retry of the same trait
finds its own reservation and does not count twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trait_lora.core.errors import TraitLoraError
from trait_lora.core.shards.catalog import check_trait_name
from trait_lora.core.storage.layout import run_key
from trait_lora.core.storage.ledger_io import Record
from trait_lora.core.storage.records import as_store, swap
from trait_lora.core.storage.store import Store


class BudgetError(TraitLoraError):
    """A launch that would pass the per-job or per-run budget; nothing was created."""


def usd(amount: float) -> str:
    """Dollars readable at every scale: a $0.0033 job must not print as $0.00."""
    return f"${amount:.2f}" if abs(amount) >= 1 else f"${amount:.4f}"


@dataclass(frozen=True)
class CostDecision:
    """What the gate makes of one estimate: the price, and whether the create may go ahead.

    ``refusal`` is final (a retry would get the same answer); ``retry_reason`` is not (an estimate is
    often unavailable only until Together has finished validating the file).
    """

    price: float | None
    refusal: str | None = None
    retry_reason: str | None = None


def estimated_price(estimate: Mapping[str, Any]) -> float | None:
    """The USD estimate, or None. ``estimation_available`` may be absent (Together's OpenAPI spec has no
    such field): absent means available, as the SDK reads it; only an explicit ``false`` means none."""
    if estimate.get("estimation_available") is False:
        return None
    price = estimate.get("estimated_total_price")
    if isinstance(price, int | float) and not isinstance(price, bool):
        return float(price)
    return None


def decide_cost(
    trait: str, estimate: Mapping[str, Any], *, job_budget: float | None, run_budget: float | None
) -> CostDecision:
    """The cost gate's verdict on Together's estimate, before any reservation or create."""
    price = estimated_price(estimate)
    if estimate.get("allowed_to_proceed") is False:
        shown = usd(price) if price is not None else "an unknown amount"
        return CostDecision(
            price,
            refusal=f"{trait}: Together says this account may not proceed (estimated {shown}, limit "
            f"${estimate.get('user_limit')}); add credit, nothing was created",
        )
    if price is None and (job_budget is not None or run_budget is not None):
        why = estimate.get("unavailable_reason") or "none given"
        return CostDecision(
            None,
            retry_reason=f"{trait}: Together gave no price estimate ({why}) and a budget is set, so no "
            "job was created; the task retries, or clear the budget",
        )
    if price is not None and job_budget is not None and price > job_budget:
        return CostDecision(
            price,
            refusal=f"{trait}: Together estimates {usd(price)}, above the per-job budget {usd(job_budget)}; "
            "no job was created. Raise max_job_price_usd or shrink the shard",
        )
    return CostDecision(price)


@dataclass(frozen=True)
class Reservation:
    trait: str
    amount: float
    run_total: float


def reserve(
    output_dir: str | Path | Store,
    run_id: str,
    trait: str,
    amount: float,
    *,
    job_budget: float | None = None,
    run_budget: float | None = None,
) -> Reservation:
    """Reserve ``amount`` (USD) for ``trait`` in this run, or raise BudgetError naming the limit."""
    check_trait_name(trait)
    if job_budget is not None and amount > job_budget:
        raise BudgetError(
            f"{trait}: Together estimates {usd(amount)}, above the per-job budget {usd(job_budget)}; "
            "no job was created. Raise max_job_price_usd or shrink the shard"
        )
    total: list[float] = []

    def change(old: Record | None) -> Record:
        reserved = dict(old or {})
        others = sum(float(r["amount"]) for t, r in reserved.items() if t != trait)
        if run_budget is not None and others + amount > run_budget:
            raise BudgetError(
                f"{trait}: Together estimates {usd(amount)}; with {usd(others)} already reserved by this "
                f"run that passes the per-run budget {usd(run_budget)}; no job was created. Raise "
                "max_run_price_usd or train fewer traits per run"
            )
        reserved[trait] = {"amount": amount}
        total[:] = [others + amount]
        return reserved

    swap(as_store(output_dir), _budget_key(run_id), what="budget reservations", change=change)
    return Reservation(trait, amount, total[0])


def release(output_dir: str | Path | Store, run_id: str, trait: str) -> None:
    """Give a reservation back (e.g. an operator's own cleanup after a create it knows did not happen)."""

    def change(old: Record | None) -> Record | None:
        if not old or trait not in old:
            return old
        return {t: r for t, r in old.items() if t != trait}

    swap(as_store(output_dir), _budget_key(run_id), what="budget reservations", change=change)


def _budget_key(run_id: str) -> str:
    return f"{run_key(run_id)}/budget.json"
