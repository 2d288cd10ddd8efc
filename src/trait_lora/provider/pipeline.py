"""The tasks every training DAG shares: discover (validate + plan), publish the mapping, final check.

DAG files only wire these; keeping the logic here means the Together, local and Kubernetes DAGs make
the same decisions and write the same mapping, summary and Asset metadata.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from trait_lora import settings
from trait_lora.core.config import from_mapping
from trait_lora.core.errors import TraitLoraError
from trait_lora.provider.params import config_values
from trait_lora.provider.tracking import steps

log = logging.getLogger(__name__)

# Planning, ledger and summary code (validation, runs, adapter checks, matplotlib) is imported inside
# the tasks: DAG files import this module and must stay cheap to parse.

# Consumers schedule on this alias: each event names the mapping file the run actually wrote (an Asset
# whose URI is that file), so a run with another output_dir announces its own file.
HYPERNETWORK_ALIAS = "trait_lora_hypernetwork_data"


def discover(
    params: dict[str, Any], run_id: str, backend: str, dag_run: Any = None, *, dag: Any = None
) -> list[dict[str, Any]]:
    """Validate every selected shard and plan it; returns what to map over (skips and dry runs excluded),
    as one small ref per trait whose plan is in its own file (``runs.write_trait_plans``).

    The whole plan goes to ``runs/<run>/plan.json`` for ``publish``: Airflow can only map over a
    task's return value, so the plan cannot travel as a second XCom key.
    """
    from trait_lora.core.handoff import runs
    from trait_lora.core.jobs.plan import forced_nonce, plan_traits
    from trait_lora.core.storage.ledger_io import utc_now
    from trait_lora.provider.storage import confine_conf, run_roots

    try:
        config = from_mapping(config_values(params, backend), source="DAG params")
        # checked when the run was created (the form's pattern); again here with symlinks resolved,
        # before anything is read or written
        roots = run_roots(dag)
        where = {key: confine_conf(str(params[key]), roots, what=key) for key in ("shards_dir", "output_dir")}
        # a bad store stops the run here, before any upload or paid job: the output must honour
        # conditional writes (probed), the shards must be listable
        output_dir, shards_dir = (_opened(where[k], k) for k in ("output_dir", "shards_dir"))
        plans = plan_traits(
            shards_dir,
            output_dir,
            config,
            traits=list(params.get("traits") or []) or None,
            force_retrain=bool(params.get("force_retrain")),
            run_nonce=forced_nonce(
                run_id, getattr(dag_run, "run_type", None), getattr(dag_run, "conf", None)
            ),
        )
        recover = recovery_plans(plans, params.get("download_job_ids") or {}, backend)
        base_pin = None
        if backend != "together" and any(p.action in ("train", "resume") for p in plans):
            from trait_lora.provider.models import pin_base_model  # an all-skip rerun asks no Hub

            base_pin = pin_base_model(config.local_model)  # one version for every trait of the run
    except (TraitLoraError, FileNotFoundError) as exc:
        raise AirflowFailException(str(exc)) from None
    planned_at = utc_now()
    extra = {
        "output_dir": str(output_dir),
        "config": config.to_dict(),
        "planned_at": planned_at,
        "max_job_price_usd": params.get("max_job_price_usd"),
        "max_run_price_usd": params.get("max_run_price_usd"),
        "min_eval_improvement": params.get("min_eval_improvement"),
        "base_model_pin": base_pin,
    }
    all_plans = [{**p.to_dict(), **extra, **recover.get(p.trait, {})} for p in plans]
    dry_run = bool(params.get("dry_run"))
    to_run = [] if dry_run else [p for p in all_plans if p["action"] != "skip"]
    runs.write_run_plan(
        output_dir,
        run_id,
        {
            "run_id": run_id,
            "backend": backend,
            "dry_run": dry_run,
            "planned_at": planned_at,
            "plans": all_plans,
        },
    )
    counts = {a: sum(p["action"] == a for p in all_plans) for a in ("train", "resume", "skip", "invalid")}
    index = {p["trait"]: i for i, p in enumerate(to_run)}
    lines = [
        f"  [{index.get(p['trait'], '-')}] {p['trait']:<24} {p['action']:<8} {p['reason']}" for p in all_plans
    ]
    log.info(
        "plan for run %s (%s%s): %s\n  [map index] trait action reason\n%s",
        run_id,
        backend,
        ", dry run" if dry_run else "",
        counts,
        "\n".join(lines),
    )
    if to_run:
        from trait_lora.provider.tracking import mlflow_runs

        mlflow_runs.start_dag_run(
            getattr(dag, "dag_id", None), run_id, backend, config.to_dict(), len(to_run)
        )
    return runs.write_trait_plans(output_dir, run_id, to_run)  # small refs: see write_trait_plans


def _opened(where: Any, key: str) -> str:
    """A confined location made ready for the run: a folder resolved as before; on object storage
    the output is probed for conditional writes, so a bad store stops the run in discover, before any
    upload or paid job (the shards' store fails the same way at the plan's one listing)."""
    from trait_lora.provider.storage import checked_store

    if where.is_local:
        return str(where.path.resolve())
    if key == "output_dir":
        return checked_store(where, what=key).location
    return where.url


def recovery_plans(plans: list[Any], job_ids: dict[str, str], backend: str) -> dict[str, dict[str, Any]]:
    """``download_job_ids`` (trait -> Together job id): fetch that finished job's adapter instead of
    training, so a refused or lost download is recovered without paying for a new job. Launch checks
    that the job was trained under the trait's current key (its suffix tag) before anything is
    installed. A trait whose current adapter is installed is left skipped (nothing to recover)."""
    from trait_lora.core.errors import ConfigError

    if not job_ids:
        return {}
    if backend != "together":
        raise ConfigError("download_job_ids: only the Together DAG downloads jobs; remove it from the conf")
    by_trait = {p.trait: p for p in plans}
    unknown = sorted(set(job_ids) - set(by_trait))
    if unknown:
        raise ConfigError(
            f"download_job_ids names {', '.join(unknown)}, not among this run's traits; add them to "
            "traits (or leave traits empty for all)"
        )
    out: dict[str, dict[str, Any]] = {}
    for trait, job_id in job_ids.items():
        plan = by_trait[trait]
        if plan.action in ("train", "resume"):
            out[trait] = {
                "action": "resume",
                "reason": f"download of Together job {job_id} asked for (download_job_ids)",
                "recover_job_id": job_id,
            }
        else:
            log.info("%s: %s; job %s not downloaded", trait, plan.reason, job_id)
    return out


def load_plan(params: dict[str, Any], run_id: str) -> dict[str, Any]:
    """The plan ``discover`` wrote; none means discover failed, and there is nothing to publish."""
    from trait_lora.core.handoff import runs

    output_dir = _output_location(params)
    data = runs.read_run_plan(output_dir, run_id)
    if data is None:
        raise AirflowSkipException(
            "discover did not plan this run (see its log); nothing to publish, the mapping is unchanged"
        )
    return {**data, "output_dir": output_dir}


def _output_location(params: dict[str, Any]) -> str:
    """The run's output location as discover wrote it: a resolved folder, or the URL as given."""
    from trait_lora.core.storage.opener import is_url

    raw = str(params["output_dir"])
    return raw if is_url(raw) else str(Path(raw.removeprefix("file://")).resolve())


def train_local(plan: dict[str, Any], run_id: str, context: Any) -> dict[str, Any]:
    """One trait on the local backend; a bad shard or a trainer failure fails only this trait.

    When the run trains traits in groups (``traits_per_process``), this installs what the trait's group
    trained, or fails with the group's reason for it; a trait no group of this run trained (a group of
    one, a group that crashed) is trained here, alone."""
    from trait_lora.core.handoff import runs
    from trait_lora.local.backend import LocalTrainingError, train_trait
    from trait_lora.local.groups import take_group_result

    context["trait_label"] = plan["trait"]
    plan = runs.load_trait_plan(plan)
    output_dir = plan["output_dir"]
    try:
        if plan["action"] == "invalid":
            raise AirflowFailException(
                f"{plan['trait']}: shard is invalid, nothing trained:\n" + "\n".join(plan["problems"])
            )
        result = take_group_result(plan, run_id)
        if result is None:
            result = train_trait(
                plan,
                model_dir=local_model_dir(plan),
                checkpoint_every=settings.get_int("checkpoint_every_steps"),
                **local_device_args(context),
            )
    except (LocalTrainingError, TraitLoraError, AirflowFailException) as exc:
        runs.record_failure(output_dir, run_id, plan["trait"], "train", str(exc))
        if isinstance(exc, LocalTrainingError) and exc.exit_code in (1, 4):
            raise  # a crash or OOM may pass on retry
        raise AirflowFailException(str(exc)) from None
    runs.clear_failure(output_dir, run_id, plan["trait"])
    steps.track_trait({**context, "run_id": run_id}, plan, result, "local")
    return result


def local_model_dir(plan: dict[str, Any]) -> Any:
    """This worker's copy of the run's pinned base model (downloaded once per worker, then reused);
    None for a model given as a local folder or a cached id."""
    if not plan.get("base_model_pin"):
        return None
    from trait_lora.provider.models import model_folder

    return model_folder(plan["base_model_pin"])


def local_device_args(context: Any) -> dict[str, Any]:
    """``[trait_lora] local_device`` resolved on this worker: the device, the GPUs it sees, and the
    task's map index to spread traits over them."""
    from trait_lora.local.devices import resolve_device, visible_gpus

    gpus = visible_gpus()
    device = resolve_device(settings.get_str("local_device"), gpus)
    ti = context.get("ti") if hasattr(context, "get") else None
    slot = getattr(ti, "map_index", 0) or 0
    return {"device": device.value, "gpus": gpus, "slot": max(0, int(slot))}


def normalise_results(results: Any) -> dict[str, dict[str, Any]]:
    """A mapped group's output is a list (2+ successes), a dict (1) or None (0): make it trait -> result."""
    if results is None:
        return {}
    if isinstance(results, dict):
        results = [results]
    elif not isinstance(results, list | tuple):
        results = list(results[:])  # a LazyXComSequence: one slice request, not one request per item
    out: dict[str, dict[str, Any]] = {}
    for item in results:
        if isinstance(item, dict) and item.get("trait"):
            out[item["trait"]] = item
    return out


def publish(
    params: dict[str, Any],
    results: Any,
    run_id: str,
    backend: str,
    outlet_events: Any = None,
    alias: Any = None,
) -> dict[str, Any]:
    """Write the mapping (even when some traits failed) and the run summary; announce the mapping as an
    Asset event only when its content changed (an all-skipped run emits none)."""
    from trait_lora.core.handoff import runs
    from trait_lora.core.handoff.mapping import mapping_sha256, publish_mapping
    from trait_lora.core.handoff.summary import build_summary, format_table, write_summary

    discovered = load_plan(params, run_id)
    output_dir = discovered["output_dir"]
    plans = discovered["plans"]
    by_trait = normalise_results(results)
    failures = runs.read_failures(output_dir, run_id)
    summary = build_summary(
        run_id=run_id,
        backend=backend,
        plans=plans,
        results=by_trait,
        failures=failures,
        dry_run=discovered["dry_run"],
    )
    paths = write_summary(output_dir, summary)
    log.info("run summary\n%s", format_table(summary))
    if discovered["dry_run"]:
        raise AirflowSkipException("dry run: plan and summary written; mapping and Asset left unchanged")
    config = from_mapping(plans[0]["config"]) if plans else None
    if config is None:
        raise AirflowSkipException("no traits selected: nothing to publish")
    mapping_path, mapping, before = publish_mapping(
        output_dir, config, failed=summary["failed"], run_id=run_id
    )
    digest = mapping_sha256(mapping)
    changed = digest != before
    log.info(
        "mapping: %s (%d trait(s), %d failed)", mapping_path, len(mapping["traits"]), len(mapping["failed"])
    )
    steps.track_mapping(str(output_dir), str(mapping_path), mapping, digest, summary, backend)
    extra = {
        "run_id": run_id,
        "mapping_path": str(mapping_path),
        "trained": sorted(r["trait"] for r in summary["traits"] if r["action"] == "trained"),
        "resumed": sorted(r["trait"] for r in summary["traits"] if r["action"] == "resumed"),
        "skipped": sorted(r["trait"] for r in summary["traits"] if r["action"] == "skipped"),
        "failed": sorted(summary["failed"]),
        "num_traits": len(mapping["traits"]),
        "mapping_sha256": digest,
        "counts": summary["counts"],
        "total_price_usd": round(sum(float(r.get("total_price") or 0) for r in summary["traits"]), 6),
    }
    if changed and outlet_events is not None and alias is not None:
        from airflow.sdk import Asset

        outlet_events[alias].add(Asset(uri=asset_uri(mapping_path)), extra=extra)
        log.info("mapping changed (sha256 %s): Asset event for %s", digest[:12], mapping_path)
    else:
        log.info("mapping unchanged (sha256 %s): no Asset event", digest[:12])
    return {
        **extra,
        "changed": changed,
        "summary": paths,
        "failed_reasons": summary["failed"],
    }


def asset_uri(mapping_location: str) -> str:
    """The mapping's Asset URI: ``file:///...`` for a folder, ``s3://bucket/key`` (no connection id:
    consumers match on the data's name, not on who wrote it) on object storage."""
    from trait_lora.core.storage.location import parse_location

    where = parse_location(mapping_location, what="mapping")
    if where.is_local:
        assert where.path is not None
        return where.path.resolve().as_uri()
    return where.public_url


def check(published: dict[str, Any] | None) -> None:
    """The leaf that turns a partial success into a failed run, after the good traits were published."""
    from trait_lora.core.handoff.mapping import MAPPING_FILE

    if not published:
        return
    failed = published.get("failed_reasons") or {}
    if failed:
        lines = "\n".join(f"  {t}: {r}" for t, r in sorted(failed.items()))
        raise AirflowFailException(
            f"{len(failed)} trait(s) failed (the others are published in {MAPPING_FILE}):\n{lines}"
        )
