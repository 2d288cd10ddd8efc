"""What a run would do for each selected trait, and why: ``skip``, ``resume``, ``train`` or ``invalid``.

This is the seed's dedupe (file hashes) and resume (job ids) logic, shared by the CLI, both DAGs and
the Kubernetes DAG, so every backend makes the same decision for the same inputs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trait_lora.core.adapter import AdapterSpec, installed_fingerprint, verify_installed
from trait_lora.core.adapter.spec import CHECKPOINTS_DIR, WEIGHTS_FILE
from trait_lora.core.config import TrainingConfig
from trait_lora.core.errors import AdapterError
from trait_lora.core.hashing import sha256_json
from trait_lora.core.jobs.job_status import JobStatus
from trait_lora.core.jobs.keys import job_key, job_suffix
from trait_lora.core.jobs.ledger import Ledger, LedgerView
from trait_lora.core.shards.catalog import Discovery, discover_shards
from trait_lora.core.shards.remote import discover_remote_shards
from trait_lora.core.shards.validation import validate_shard
from trait_lora.core.storage.opener import is_url, open_location

ACTIONS = ("skip", "resume", "train", "invalid")


@dataclass
class TraitPlan:
    trait: str
    axis: str
    direction: int
    shard_path: str
    action: str
    reason: str
    shard_sha256: str
    config_hash: str
    job_key: str
    suffix: str
    num_examples: int
    size: int
    job_id: str | None = None
    problems: list[str] = field(default_factory=list)
    # a shard on object storage: where it lives (``shard_path`` is the planning worker's copy, and any
    # other worker copies it again from here: ``remote.fetch_shard``)
    shard_location: str = ""
    shard_key: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(
    *,
    trait: str,
    shard_sha256: str,
    config: TrainingConfig,
    key: str,
    ledger: Ledger | LedgerView,
    force_retrain: bool,
    present: set[str] | None = None,
) -> tuple[str, str, str | None]:
    """(action, reason, job id to resume) for one valid shard.

    Skip wins when the installed adapter is exactly what this key would produce; otherwise a live
    (or completed, not yet installed) job for the same key is resumed, never paid for again.
    """
    config_hash = config.config_hash()
    why_train = "force retrain requested"
    # The forced retrain this key stands for already happened (an earlier run of the same backfill, or
    # this run before a clear): skip while that adapter is still the one installed.
    already = force_retrain and (ledger.hash_record(trait) or {}).get("job_key") == key
    if already and _why_not_skip(trait, shard_sha256, config, config_hash, ledger, present) is None:
        return "skip", "already force-retrained under this run's key (same backfill or run)", None
    if not force_retrain:
        why_train = _why_not_skip(trait, shard_sha256, config, config_hash, ledger, present)
        if why_train is None:
            return "skip", "unchanged shard and config; adapter present and verified", None
    job = ledger.job(trait) or {}
    if job.get("job_key") == key and job.get("job_id") and not JobStatus.of(job.get("status")).is_ending:
        return (
            "resume",
            f"job {job['job_id']} for this key is {job.get('status', 'submitted')}",
            job["job_id"],
        )
    return "train", why_train, None


def _why_not_skip(
    trait: str,
    shard_sha256: str,
    config: TrainingConfig,
    config_hash: str,
    ledger: Ledger | LedgerView,
    present: set[str] | None = None,
) -> str | None:
    """Why the trait must train (None: skip). ``present``: the adapter keys under ``lora_checkpoints/``
    of an output on object storage (one listing for every trait); there an adapter sits at a
    content-addressed key written once, verified before it was written, so being there is enough."""
    record = ledger.hash_record(trait)
    if record is None:
        return "no adapter trained yet"
    if record.get("shard_sha256") != shard_sha256:
        return "shard changed since the last adapter"
    if record.get("config_hash") != config_hash:
        return "training config changed since the last adapter"
    if present is not None:
        folder = record.get("adapter_path") or ""
        if f"{folder}/{WEIGHTS_FILE}" not in present:
            return "adapter recorded but missing from lora_checkpoints"
        return None
    fingerprint = record.get("adapter_stat")
    if fingerprint and fingerprint == installed_fingerprint(ledger.output_dir, trait):
        return None  # untouched since it verified at install (see installed_fingerprint)
    try:
        info = verify_installed(ledger.output_dir, trait, AdapterSpec.from_config(config))
    except AdapterError as exc:
        return f"installed adapter failed verification: {exc}"
    if info is None:
        return "adapter recorded but missing from lora_checkpoints"
    if info.sha256 != record.get("adapter_sha256"):
        return "installed adapter differs from the recorded one"
    return None


def plan_traits(
    shards_dir: str | Path,
    output_dir: str | Path,
    config: TrainingConfig,
    *,
    traits: list[str] | None = None,
    force_retrain: bool = False,
    run_nonce: str = "",
    discovery: Discovery | None = None,
) -> list[TraitPlan]:
    """Plan the selected traits (all when none are named); unknown names raise TraitNameError.

    ``run_nonce`` only matters with ``force_retrain``: it gives the forced job a key of its own that
    retries of the same run (and every run of one backfill, see ``forced_nonce``) share.
    """
    shards_store = open_location(shards_dir, what="shards_dir") if is_url(shards_dir) else None
    if discovery is not None:
        found = discovery
    elif shards_store is not None:
        found = discover_remote_shards(shards_store, traits)
    else:
        found = discover_shards(shards_dir)
    book = Ledger(output_dir)
    ledger = book.view()  # read once for every trait's decision
    present = None if book.local else set(book.store.list(f"{CHECKPOINTS_DIR}/"))
    config_hash = config.config_hash()
    plans: list[TraitPlan] = []
    for shard in found.select(traits):
        report = validate_shard(shard.path)
        key = job_key(report.sha256, config_hash, run_nonce if force_retrain else "")
        remote = (
            {"shard_location": shards_store.location, "shard_key": shard.path.name}
            if shards_store is not None and shard.source
            else {}
        )
        common = dict(
            trait=shard.trait,
            axis=shard.axis,
            direction=shard.direction,
            shard_path=str(shard.path),
            shard_sha256=report.sha256,
            config_hash=config_hash,
            job_key=key,
            suffix=job_suffix(shard.trait, key),
            num_examples=report.num_examples,
            size=report.size,
            **remote,
        )
        if not report.ok:
            problems = report.error_lines()
            if shard.source:  # name the object the user can fix, not this worker's copy
                problems = [line.replace(str(shard.path), shard.source) for line in problems]
            plans.append(
                TraitPlan(
                    **common,
                    action="invalid",
                    reason=f"shard has {len(report.problems) + report.more_problems} problem(s)",
                    problems=problems,
                )
            )
            continue
        action, reason, job_id = decide(
            trait=shard.trait,
            shard_sha256=report.sha256,
            config=config,
            key=key,
            ledger=ledger,
            force_retrain=force_retrain,
            present=present,
        )
        plans.append(TraitPlan(**common, action=action, reason=reason, job_id=job_id))
    return plans


def forced_nonce(run_id: str, run_type: str | None, conf: dict[str, Any] | None) -> str:
    """The nonce of a forced retrain's job key: the run id, except for a backfill.

    All runs of one backfill must share the forced key, or a forced backfill of N runs pays N times per
    trait. A task cannot see the backfill's id (the Task SDK's DagRun has none), but every run of a
    backfill carries the same conf, so the conf's digest stands for the backfill. A later backfill with
    an identical conf shares the key too: it finds the adapters already retrained and skips them (it
    never pays twice; to retrain once more, trigger a forced run or change the conf, e.g. add a note).
    """
    if str(run_type or "").lower().endswith("backfill"):
        return "backfill:" + sha256_json(conf or {})
    return run_id
