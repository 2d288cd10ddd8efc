"""What the dashboard shows, read from the files the pipeline already writes; nothing else is consulted.

The ledgers say what is installed and what is in flight, ``metrics/<trait>.json`` holds loss curves,
``run_summary.json`` / ``runs/<run>/summary.json`` say what the last (or a given) run did and why a trait
failed, and ``hypernetwork_data.json`` is what stage 3 sees. Keeping the dashboard a reader of these
(never a second record) means it can never disagree with the pipeline. Every reader tolerates a file
that is missing or damaged: a dashboard that 500s on one bad file hides the other traits.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from trait_lora.core.handoff.mapping import MAPPING_FILE
from trait_lora.core.handoff.runs import PLAN_FILE, Output
from trait_lora.core.handoff.summary import LATEST_SUMMARY, METRICS_DIR, SUMMARY_FILE
from trait_lora.core.jobs.job_status import JobStatus
from trait_lora.core.jobs.ledger import Ledger
from trait_lora.core.shards.catalog import TRAIT_RE
from trait_lora.core.storage.layout import run_key
from trait_lora.core.storage.local import LocalStore
from trait_lora.core.storage.location import parse_location
from trait_lora.core.storage.records import as_store
from trait_lora.core.storage.store import Store, StoreError

MAX_CURVE_POINTS = 2000  # a curve is drawn, not analysed: a huge metrics file must not stall a page


@dataclass(frozen=True)
class TraitRow:
    """One trait as a person reads it: its state and the figures that explain it."""

    trait: str
    state: str  # trained | skipped | failed | in flight | not trained
    adapter_sha256: str | None = None
    trained_at: str | None = None
    backend: str | None = None
    job_id: str | None = None
    job_status: str | None = None
    price_usd: float | None = None
    final_loss: float | None = None
    eval: dict[str, Any] | None = None
    reason: str | None = None
    curve: tuple[tuple[int, float], ...] = field(default=())
    mlflow_url: str | None = None  # the trait's last MLflow run, when a tracking server logged it

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["curve"] = [list(point) for point in self.curve]
        return data


def _records(found: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The ledger's records as read live (the dashboard must show jobs in flight), less empty ones."""
    return {k: v for k, v in found.items() if v}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _object(store: Store, key: str) -> dict[str, Any]:
    """The key's JSON object, or an empty one when it is missing, unreadable or not an object (a reader
    that only shows state; whoever writes reads strictly and is told what to fix)."""
    try:
        blob = store.read(key)
        data = blob.json() if blob is not None else {}
    except (OSError, ValueError, StoreError):
        return {}
    return data if isinstance(data, dict) else {}


def read_metrics(output_dir: Output, trait: str) -> dict[str, Any]:
    """``metrics/<trait>.json``: the loss curve (finite points only) and eval figures where recorded."""
    data = _object(as_store(output_dir), f"{METRICS_DIR}/{trait}.json")
    curve = []
    for step in data.get("steps") or []:
        if not isinstance(step, dict):
            continue
        x, y = _number(step.get("step")), _number(step.get("loss"))
        if x is not None and y is not None:
            curve.append((int(x), y))
    evaluation = data.get("eval")
    mlflow = data.get("mlflow") if isinstance(data.get("mlflow"), dict) else {}
    url = mlflow.get("url")
    return {
        "curve": tuple(curve[-MAX_CURVE_POINTS:]),
        "eval": evaluation if isinstance(evaluation, dict) else None,
        "mlflow_url": url if isinstance(url, str) and url.startswith(("http://", "https://")) else None,
    }


def _state(job: dict[str, Any], installed: bool, last: dict[str, Any]) -> str:
    if JobStatus.of(job.get("status")).in_flight:
        return "in flight"
    action = last.get("action")
    if action == "failed":
        return "failed"
    if installed:
        return "skipped" if action == "skipped" else "trained"
    return "not trained"


def trait_rows(output_dir: Output) -> list[TraitRow]:
    """Every trait the output dir knows of (installed, in a job, in the last run, or failed), by name."""
    out = as_store(output_dir)
    ledger = Ledger(out)
    hashes = _records(ledger.hashes(tolerant=True))
    jobs = _records(ledger.jobs(tolerant=True))
    latest = _object(out, LATEST_SUMMARY)
    last_rows = {
        r["trait"]: r
        for r in latest.get("traits") or []
        if isinstance(r, dict) and isinstance(r.get("trait"), str) and TRAIT_RE.fullmatch(r["trait"])
    }
    rows = []
    for trait in sorted(set(hashes) | set(jobs) | set(last_rows)):
        installed = hashes.get(trait, {})
        job = jobs.get(trait, {})
        last = last_rows.get(trait, {})
        metrics = read_metrics(out, trait)
        curve = metrics["curve"]
        state = _state(job, bool(installed), last)
        rows.append(
            TraitRow(
                trait=trait,
                state=state,
                adapter_sha256=installed.get("adapter_sha256"),
                trained_at=installed.get("trained_at"),
                backend=installed.get("backend") or latest.get("backend"),
                job_id=job.get("job_id") or installed.get("job_id"),
                job_status=job.get("status"),
                price_usd=_number(job.get("total_price_usd")),
                final_loss=curve[-1][1] if curve else _number(last.get("final_loss")),
                eval=metrics["eval"],
                reason=str(last.get("detail") or "") if state == "failed" else None,
                curve=curve,
                mlflow_url=metrics["mlflow_url"],
            )
        )
    return rows


def totals(rows: list[TraitRow]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + 1
    return {
        "traits": len(rows),
        "counts": counts,
        "in_flight": counts.get("in flight", 0),
        "spend_usd": round(sum(r.price_usd or 0.0 for r in rows), 6),
    }


def traits_view(output_dir: Output) -> dict[str, Any]:
    """The Traits tab: one row per trait and the totals, as JSON."""
    store = as_store(output_dir)
    rows = trait_rows(store)
    return {
        "output_dir": public(store),
        "totals": totals(rows),
        "traits": [r.to_json() for r in rows],
        "mapping": _object(store, MAPPING_FILE) or None,
    }


def public(store: Store) -> str:
    """The location as shown to a reader: a folder, or the URL without the connection id."""
    if isinstance(store, LocalStore):
        return str(store.root)
    return parse_location(store.location).public_url


def run_view(output_dir: Output, run_id: str) -> dict[str, Any]:
    """The Training summary tab of one run: its summary, plan, curves of what it trained, the mapping.

    The mapping on disk is shown only when this run wrote it (a later run may have replaced it).
    """
    store = as_store(output_dir)
    folder = run_key(run_id)
    summary = _object(store, f"{folder}/{SUMMARY_FILE}")
    plan = _object(store, f"{folder}/{PLAN_FILE}")
    mapping = _object(store, MAPPING_FILE)
    rows = [r for r in summary.get("traits") or [] if isinstance(r, dict) and isinstance(r.get("trait"), str)]
    curves = {}
    for row in rows:
        if row.get("action") in ("trained", "resumed") and TRAIT_RE.fullmatch(row["trait"]):
            curve = read_metrics(store, row["trait"])["curve"]
            if curve:
                curves[row["trait"]] = [list(p) for p in curve]
    state = "finished" if summary else ("planned" if plan else "unknown")
    return {
        "run_id": run_id,
        "output_dir": public(store),
        "state": state,
        "summary": summary or None,
        "planned": [
            {k: p.get(k) for k in ("trait", "action", "reason")}
            for p in plan.get("plans") or []
            if isinstance(p, dict)
        ],
        "curves": curves,
        "mapping": mapping if mapping.get("run_id") == run_id else None,
    }
