"""The local DAG's groups: ``plan_groups`` splits a run's traits to train, ``train_group`` trains a group.

Grouping only changes how many trainer processes a run starts: each trait keeps its own ``train`` task
(verify, install, ledger, summary, lineage, MLflow), which installs what its group trained or, when no
group of the run trained it, trains it alone (``pipeline.train_local``). It is not part of any job key:
an adapter trained in a group is the one its trait gets alone (``trait_lora.train.group``).
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from trait_lora import settings
from trait_lora.core.errors import TraitLoraError
from trait_lora.core.storage.store import StoreError
from trait_lora.provider.pipeline import local_device_args, local_model_dir

log = logging.getLogger(__name__)


def plan_groups(refs: Any, params: dict[str, Any]) -> list[dict[str, Any]]:
    """The groups to train, each ``{"traits": [ref, ...]}`` of at most ``traits_per_process`` traits;
    none at the default of 1. Only traits to train join one: skipped and invalid traits never do."""
    from trait_lora.local.groups import GROUPED_ACTIONS, split_groups

    size = int(params.get("traits_per_process") or 1)
    trainable = [r for r in list(refs or []) if r.get("action") in GROUPED_ACTIONS]
    groups = [{"traits": group} for group in split_groups(trainable, size)]
    if groups:
        log.info(
            "%d trait(s) in %d group(s) of at most %d: %s",
            sum(len(g["traits"]) for g in groups),
            len(groups),
            size,
            "; ".join(", ".join(r["trait"] for r in g["traits"]) for g in groups),
        )
    return groups


def train_group(group: dict[str, Any], run_id: str, context: Any) -> dict[str, Any]:
    """One trainer process for the group's traits; what each trait's record says, by trait.

    A trait's failure is its own task's to report, so this fails only when the group as a whole did
    (a crash, a timeout): a retry trains the traits it had not recorded, and once retries are spent the
    traits' own tasks train them alone."""
    from trait_lora.core.handoff import runs
    from trait_lora.local.backend import LocalTrainingError
    from trait_lora.local.groups import install_for_any_worker
    from trait_lora.local.groups import train_group as train

    plans = [runs.load_trait_plan(ref) for ref in group["traits"]]
    context["trait_label"] = f"{plans[0]['trait']} +{len(plans) - 1}"
    try:
        done = train(
            plans,
            run_id=run_id,
            model_dir=local_model_dir(plans[0]),
            checkpoint_every=settings.get_int("checkpoint_every_steps"),
            timeout_per_trait=settings.get_float("local_timeout_minutes") * 60,
            **local_device_args(context),
        )
    except LocalTrainingError as exc:
        if exc.exit_code in (1, 4):
            raise  # a crash may pass on retry
        raise AirflowFailException(str(exc)) from None
    except StoreError:
        raise  # the store did not answer (reading the run's records): a retry may find it
    except TraitLoraError as exc:
        raise AirflowFailException(str(exc)) from None
    statuses = done["traits"]
    installed = install_for_any_worker(plans, statuses, run_id, log=log.info)
    failed = sorted(t for t, s in statuses.items() if s["status"] != "trained")
    log.info(
        "group: %d trained, %d failed%s, peak memory %.2f GiB (%s)",
        len(statuses) - len(failed),
        len(failed),
        f" ({', '.join(failed)})" if failed else "",
        (done.get("peak_memory_bytes") or 0) / 1024**3,
        f"{len(installed)} installed here for the traits' tasks on any worker"
        if installed
        else "each trait's own task installs it or reports why",
    )
    return done
