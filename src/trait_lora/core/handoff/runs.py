"""Per-run records under ``<output_dir>/runs/<run>/``: plan, failures, summary, loss curves.

A failed Airflow task pushes no XCom, so the fan-in could not say *why* a trait failed; each step
records its failure reason here before re-raising, and ``publish_mapping`` reads it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trait_lora.core.shards.catalog import check_trait_name
from trait_lora.core.storage.layout import RUNS_DIR as RUNS_DIR
from trait_lora.core.storage.layout import run_dir as run_dir
from trait_lora.core.storage.layout import run_key
from trait_lora.core.storage.ledger_io import Record, utc_now
from trait_lora.core.storage.records import as_store, read_versioned, swap
from trait_lora.core.storage.store import Store, encode_json

Output = str | Path | Store

FAILURES_FILE = "failures.json"
# What a group of traits (traits_per_process) installed, by trait, for traits' own tasks on other workers
GROUP_INSTALLS_FILE = "group_installs.json"
PLANS_DIR = "plans"
PLAN_FILE = "plan.json"


def update_run_file(output_dir: Output, run_id: str, name: str, key: str, value: Any) -> None:
    """Set one key of a per-run JSON object, by compare-and-swap: concurrent mapped tasks each keep
    their own key, on a folder or on object storage."""

    def change(old: Record | None) -> Record | None:
        if value is None and key not in (old or {}):
            return None  # nothing to clear: no write (most traits never fail)
        data = dict(old or {})
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
        return data

    swap(as_store(output_dir), f"{run_key(run_id)}/{name}", what=name, change=change)


def record_failure(
    output_dir: Output,
    run_id: str,
    trait: str,
    step: str,
    reason: str,
    details: Mapping[str, Any] | None = None,
) -> None:
    """``details``: facts beside the reason (a pod's phase, container state, exit code), kept as given."""
    check_trait_name(trait)
    record = {"step": step, "reason": reason, "at": utc_now(), **(details or {})}
    update_run_file(output_dir, run_id, FAILURES_FILE, trait, record)


def clear_failure(output_dir: Output, run_id: str, trait: str) -> None:
    """A retry that succeeded: the trait is no longer failed in this run."""
    update_run_file(output_dir, run_id, FAILURES_FILE, trait, None)


def read_failures(output_dir: Output, run_id: str) -> dict[str, dict[str, Any]]:
    key = f"{run_key(run_id)}/{FAILURES_FILE}"
    failures, _ = read_versioned(as_store(output_dir), key, what=FAILURES_FILE)
    return {t: r for t, r in (failures or {}).items() if isinstance(r, dict)}


def record_group_install(output_dir: Output, run_id: str, trait: str, result: Mapping[str, Any]) -> None:
    """What the group's task installed for ``trait`` (``install_trained``'s result), for the trait's
    own task, which may run on a worker that cannot see the group's scratch folder."""
    check_trait_name(trait)
    update_run_file(output_dir, run_id, GROUP_INSTALLS_FILE, trait, dict(result))


def read_group_installs(output_dir: Output, run_id: str) -> dict[str, dict[str, Any]]:
    key = f"{run_key(run_id)}/{GROUP_INSTALLS_FILE}"
    installs, _ = read_versioned(as_store(output_dir), key, what=GROUP_INSTALLS_FILE)
    return {t: r for t, r in (installs or {}).items() if isinstance(r, dict)}


def write_trait_plans(output_dir: Output, run_id: str, plans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each trait's plan as ``runs/<run>/plans/<trait>.json``; returns one small ref per plan to map over.

    Airflow hands every mapped task instance the whole list it maps over (one XCom, pulled and
    deserialised in full by each), so mapping over the plans themselves (~1.5 kB each, the settings
    included) cost O(traits) per task and O(traits^2) per run: about a second per upload at a thousand
    traits. A ref is the trait, its action, the output location and the plan's key; ``load_trait_plan``
    reads it back on whichever worker runs the step.
    """
    store = as_store(output_dir)
    refs = []
    for plan in plans:
        trait = check_trait_name(plan["trait"])
        key = f"{run_key(run_id)}/{PLANS_DIR}/{trait}.json"
        store.put(key, encode_json(plan))  # one writer: the run's discover
        refs.append({"trait": trait, "action": plan["action"], "output_dir": store.location, "plan_key": key})
    return refs


def write_run_plan(output_dir: Output, run_id: str, data: dict[str, Any]) -> None:
    """The whole plan of a run (``runs/<run>/plan.json``), for its publish step and the dashboard."""
    as_store(output_dir).put(f"{run_key(run_id)}/{PLAN_FILE}", encode_json(data))


def read_run_plan(output_dir: Output, run_id: str) -> dict[str, Any] | None:
    """The run's plan; None when discover wrote none (it failed, or the run never planned)."""
    plan, _ = read_versioned(as_store(output_dir), f"{run_key(run_id)}/{PLAN_FILE}", what=PLAN_FILE)
    return plan


def load_trait_plan(item: Mapping[str, Any]) -> dict[str, Any]:
    """The whole plan behind a mapped item: a ref from ``write_trait_plans``, or a plan passed whole."""
    if "plan_key" in item:
        store = as_store(str(item["output_dir"]))
        where = store.url(str(item["plan_key"]))
        blob = store.read(str(item["plan_key"]))
        raw = None if blob is None else blob.data
    elif "plan_file" in item:  # a ref written before plans moved into the store (a run in flight)
        where = str(item["plan_file"])
        try:
            raw = Path(where).read_bytes()
        except FileNotFoundError:
            raw = None
    else:
        return dict(item)
    if raw is None:
        raise FileNotFoundError(
            f"{where}: the plan of {item.get('trait')!r} for this run is gone (was runs/ cleaned while the "
            "run was going?); clear the run's discover task to plan again"
        )
    try:
        plan = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{where}: the plan of {item.get('trait')!r} does not parse ({exc})") from None
    if not isinstance(plan, dict) or plan.get("trait") != item.get("trait"):
        raise ValueError(f"{where}: holds no plan for {item.get('trait')!r}; clear the run's discover task")
    return plan
