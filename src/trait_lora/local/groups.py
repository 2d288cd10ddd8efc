"""Many traits per trainer process: a run's traits split into groups, each group trained by one process.

A process per trait imports torch, transformers and peft and loads the base model again for every
30-example shard (~3 s of each trait's ~4 s with the tiny model; a pod and 16 GB of weights per trait on a
cluster). ``train_group`` starts one trainer for a group (``python -m trait_lora.train --group``), which
trains each trait's adapter into the trait's usual staging folder with a record beside it; each trait's
own task then calls ``take_group_result`` to verify and install it exactly as it installs an adapter it
trained itself, or, when its group left no record for this run (the group crashed), trains the trait
alone as before. So a trait that fails in a group fails alone, with its own reason, and a retry of its
task trains only that trait. With an output on object storage the staging folder is the group worker's
scratch, which another worker cannot see, so the group's task installs what it trained itself
(``install_for_any_worker``) and each trait's task, wherever it runs, takes the result from the run's
records.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from trait_lora.core.config import from_mapping
from trait_lora.core.errors import TraitLoraError
from trait_lora.core.handoff import runs
from trait_lora.core.storage.atomic import atomic_write_json
from trait_lora.core.storage.opener import is_url, scratch_dir
from trait_lora.core.storage.store import StoreError
from trait_lora.local.backend import (
    EXIT_MEANINGS,
    STAGING_DIR,
    LocalTrainingError,
    base_model_record,
    install_trained,
    run_trainer,
    staging_dir,
    trainer_flags,
    with_local_shard,
)
from trait_lora.train.group_records import FAILED, TRAINED, read_record, record_path, trained_earlier

T = TypeVar("T")
GROUPED_ACTIONS = ("train", "resume")


def split_groups(items: Sequence[T], size: int) -> list[list[T]]:
    """At most ``size`` items per group, the groups as even as possible, in order (a trait's two poles,
    next to each other in a run's plan, usually share a group and its base-model evaluation).

    A group of one is no group: that trait trains in its own task as it always did, so ``size`` 1 (the
    default) or a run with one trait to train changes nothing."""
    if size < 2 or len(items) < 2:
        return []
    count = math.ceil(len(items) / size)
    small, extra = divmod(len(items), count)
    groups, start = [], 0
    for i in range(count):
        end = start + small + (1 if i < extra else 0)
        groups.append(list(items[start:end]))
        start = end
    return [g for g in groups if len(g) > 1]


def train_group(
    plans: Sequence[dict[str, Any]],
    *,
    run_id: str,
    output_dir: str | Path | None = None,
    device: str = "cpu",
    gpus: list[str] | None = None,
    slot: int = 0,
    micro_batch: int | None = None,
    max_steps: int | None = None,
    model_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    timeout_per_trait: float | None = None,
    log: Callable[[str], None] = print,
    python: str = sys.executable,
) -> dict[str, Any]:
    """Train ``plans`` in one trainer process: ``{"traits": trait -> {"status", "exit_code"}}`` from
    their records, with the group's ``peak_memory_bytes``, ``load_seconds`` and ``wall_seconds``.

    On ``cuda`` with GPUs visible the group gets one of them to itself (``devices.gpu_claim``, as one
    trait does); its time limit is ``timeout_per_trait`` for each trait it trains. A trait already
    trained by this run's group (a retry of a group that stopped midway) is not trained again. Raises
    ``LocalTrainingError`` only when the group as a whole failed without recording its traits (a
    crash, a timeout): their tasks then train them alone."""
    members, statuses = [], {}
    location = str(output_dir or (plans[0]["output_dir"] if plans else ""))
    # on a bucket, what this run's group task already did for its traits (a retry after some installs,
    # maybe on another worker: the staging folders it trained into are gone or not here)
    installs = runs.read_group_installs(location, run_id) if is_url(location) else {}
    for plan in plans:
        staging = staging_dir(plan, output_dir)
        entry = group_install(plan, installs)
        if entry is not None:
            code = 0 if "result" in entry else int(entry.get("exit_code") or 1)
            statuses[plan["trait"]] = {
                "status": FAILED if code else TRAINED,
                "exit_code": code,
                "earlier": True,
            }
            continue
        if trained_earlier(staging, run_id):
            statuses[plan["trait"]] = {"status": TRAINED, "exit_code": 0, "earlier": True}
            continue
        _discard(staging)
        local = with_local_shard(plan)
        config = {**local["config"], "backend": "local"}
        if model_dir is not None:
            config["local_model"] = str(model_dir)
        members.append(
            {"trait": plan["trait"], "shard": local["shard_path"], "out": str(staging), "config": config}
        )
    if not members:
        return {"traits": statuses}
    manifest = {
        "config": from_mapping(members[0]["config"]).to_dict(),
        "run_id": run_id,
        "base_model_id": base_model_record(plans[0])["base_model"] if model_dir is not None else None,
        "members": members,
    }
    path = _manifest_path(plans[0], output_dir, run_id, [m["trait"] for m in members])
    atomic_write_json(path, manifest)
    argv = [python, "-m", "trait_lora.train", "--group", str(path)]
    argv += trainer_flags(
        gpu=device == "cuda", micro_batch=micro_batch, max_steps=max_steps, checkpoint_every=checkpoint_every
    )
    log(f"training {len(members)} trait(s) in one process: {', '.join(m['trait'] for m in members)}")
    timeout = timeout_per_trait * len(members) if timeout_per_trait else None
    line: dict[str, Any] = {}
    try:
        if device == "cuda" and gpus:
            from trait_lora.local.devices import gpu_claim

            with gpu_claim(gpus, first=slot, log=log) as claimed:
                log(f"training the group on GPU {claimed}")
                line = run_trainer(argv, log=log, env={"CUDA_VISIBLE_DEVICES": claimed}, timeout=timeout)
        else:
            line = run_trainer(argv, log=log, timeout=timeout)
    except LocalTrainingError as exc:
        if exc.exit_code not in (3, 4):  # the base could not load: every trait is recorded with why
            raise
    finally:
        path.unlink(missing_ok=True)
    for member in members:
        record = read_record(member["out"])
        if record is not None:
            statuses[member["trait"]] = {"status": record["status"], "exit_code": record["exit_code"]}
    figures = ("peak_memory_bytes", "load_seconds", "wall_seconds")
    return {"traits": statuses, **{k: line[k] for k in figures if k in line}}


def take_group_result(
    plan: dict[str, Any], run_id: str, output_dir: str | Path | None = None
) -> dict[str, Any] | None:
    """Install what this run's group trained for the trait (``install_trained``'s result); raise its
    failure (``LocalTrainingError`` with the trainer's exit code and message); None when no group of
    this run trained it, so the caller trains it alone. The record is used once: a retry of a failed
    trait trains it alone. With an output on object storage, what the group's task already did for
    this plan (``install_for_any_worker``: installed it, or found why not) is taken from the run's
    records, wherever this task runs."""
    location = str(output_dir or plan["output_dir"])
    if is_url(location) and plan.get("action") in GROUPED_ACTIONS:
        entry = group_install(plan, runs.read_group_installs(location, run_id))
        if entry is not None:
            return _taken(location, run_id, plan["trait"], entry)
    staging = staging_dir(plan, output_dir)
    record = read_record(staging)
    if record is None or record.get("run_id") != run_id:
        if record is not None:  # an earlier run's, never used (its task did not run): not this adapter
            _discard(staging)
        return None
    try:
        if record["status"] != TRAINED:
            code = int(record["exit_code"])
            meaning = EXIT_MEANINGS.get(code, f"exit code {code}")
            raise LocalTrainingError(f"trainer failed ({meaning}; in a group):\n{record['error']}", code)
        return install_trained(plan, staging, location if is_url(location) else Path(location))
    finally:
        _discard(staging)


def install_for_any_worker(
    plans: Sequence[dict[str, Any]],
    statuses: dict[str, dict[str, Any]],
    run_id: str,
    output_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> list[str]:
    """With an output on object storage the group trained into this worker's scratch folder, which a
    trait's own task on another worker (Celery) cannot see: it would train the trait again. So the
    group's task does here what each trait's task would do with its group's record, and leaves the
    outcome in the run's records (``runs.record_group_install``, tied to the plan's job key) for the
    trait's task to take: the installed result, or why the trait failed in its group or could not be
    installed (the trait's task then fails with that reason, or, for a failure a retry may cure, its
    retry trains it alone). Returns the traits installed; none for a local output folder, where each
    trait's task installs from the shared staging folder."""
    location = str(output_dir or (plans[0]["output_dir"] if plans else ""))
    if not is_url(location):
        return []
    installed, installs = [], runs.read_group_installs(location, run_id)
    for plan in plans:
        if plan["trait"] not in statuses or group_install(plan, installs) is not None:
            continue  # not recorded by the group, or already done by an earlier try of this task
        entry: dict[str, Any] = {"job_key": plan["job_key"]}
        try:
            result = take_group_result(plan, run_id, output_dir)
        except LocalTrainingError as exc:
            entry.update(error=str(exc), exit_code=exc.exit_code)
        except StoreError:
            raise  # the store did not answer: the group task's retry tries again
        except TraitLoraError as exc:  # the adapter failed its verification: as its own task would say
            entry.update(error=str(exc), exit_code=2)
        else:
            if result is None:
                continue
            entry["result"] = result
            installed.append(plan["trait"])
        if "error" in entry:
            log(f"{plan['trait']}: not installed with its group: {entry['error']}")
        runs.record_group_install(location, run_id, plan["trait"], entry)
    return installed


def group_install(plan: dict[str, Any], installs: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """What the run's group task did for this very plan, from the run's ``installs``
    (``runs.read_group_installs``): same job key, since a run cleared after a shard changed plans
    another adapter; or None."""
    entry = installs.get(plan["trait"])
    return entry if entry is not None and entry.get("job_key") == plan.get("job_key") else None


def _taken(location: str, run_id: str, trait: str, entry: dict[str, Any]) -> dict[str, Any]:
    """The group task's outcome for the trait: its installed result, or its failure raised once (a
    retry of the trait's task then trains it alone, as after a record on a volume)."""
    if "result" in entry:
        return dict(entry["result"])
    runs.update_run_file(location, run_id, runs.GROUP_INSTALLS_FILE, trait, None)
    code = int(entry.get("exit_code") or 1)
    raise LocalTrainingError(str(entry.get("error") or "failed in its group"), code)


def _discard(staging: Path) -> None:
    record_path(staging).unlink(missing_ok=True)
    shutil.rmtree(staging, ignore_errors=True)


def _manifest_path(
    plan: dict[str, Any], output_dir: str | Path | None, run_id: str, traits: list[str]
) -> Path:
    """Named by the run and its traits: a retry of the group writes the same file, another group its own."""
    digest = hashlib.sha256(json.dumps([run_id, traits]).encode()).hexdigest()[:16]
    return scratch_dir(str(output_dir or plan["output_dir"]), STAGING_DIR) / f"group-{digest}.json"
