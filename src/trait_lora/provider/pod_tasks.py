"""The Kubernetes DAG's own task bodies: the pod's per-trait values before it, the install after it.

The pod never reports back through Airflow (no xcom sidecar, no ``pods/exec``): the trainer writes its
result record, ``result.json``, next to its adapter in a staging folder the worker chose
(``kubernetes.locations``), on the PVC or in the bucket, and ``install`` reads it there. The location
is the worker's own, never taken from the pod, so a pod cannot make the worker read anything else.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from trait_lora.core.errors import TraitLoraError
from trait_lora.provider.tracking import steps


def pod_spec(plan: dict[str, Any], context: Any) -> dict[str, Any]:
    """The pod's per-trait values; an invalid shard fails here, before any pod is scheduled.

    A trait its group's pod trained this run needs no pod of its own (skipped: ``install`` reads what
    the group left); one its group failed with a reason a retry cannot change (exit 2 or 3) fails here
    with that reason; any other (a crash, out of memory, a group pod that never finished) trains in
    its own pod, as without groups."""
    from trait_lora.core.handoff import runs
    from trait_lora.provider.kubernetes import pod_spec as build

    context["trait_label"] = plan["trait"]
    plan = runs.load_trait_plan(plan)
    if plan["action"] == "invalid":
        reason = f"{plan['trait']}: shard is invalid, no pod started:\n" + "\n".join(plan["problems"])
        runs.record_failure(plan["output_dir"], context["run_id"], plan["trait"], "pod_spec", reason)
        raise AirflowFailException(reason)
    record = group_record(plan, context["run_id"])
    if record and record["status"] == "trained":
        raise AirflowSkipException(f"{plan['trait']}: trained by its group's pod; install verifies it")
    if record and record["exit_code"] in (2, 3):
        reason = f"{plan['trait']}: trained in a group's pod, failed (exit {record['exit_code']}):\n"
        reason += str(record["error"])
        runs.record_failure(plan["output_dir"], context["run_id"], plan["trait"], "train_pod", reason)
        raise AirflowFailException(reason)
    return build(plan)


def group_pod_spec(group: dict[str, Any], context: Any) -> dict[str, Any]:
    """The pod values of a group of traits (``traits_per_process``): one pod trains them all."""
    from trait_lora.core.handoff import runs
    from trait_lora.provider.kubernetes import group_pod_spec as build

    spec = build([runs.load_trait_plan(ref) for ref in group["traits"]], str(context["run_id"]))
    context["trait_label"] = spec["label"]
    return spec


def group_record(plan: dict[str, Any], run_id: str) -> dict[str, Any] | None:
    """What this run's group pod recorded for the trait (beside its staging folder on the PVC, or
    its prefix in the bucket), or None."""
    from trait_lora.core.storage.opener import is_url
    from trait_lora.core.storage.records import as_store
    from trait_lora.local.backend import STAGING_DIR
    from trait_lora.provider.kubernetes import locations, staging_name
    from trait_lora.train.group_records import RECORD_SUFFIX, parse_record, record_path

    adapter_dir = locations(plan)[1]
    if is_url(adapter_dir):
        blob = as_store(plan["output_dir"]).read(f"{STAGING_DIR}/{staging_name(plan)}{RECORD_SUFFIX}")
        data = blob.data if blob is not None else None
    else:
        path = record_path(adapter_dir)
        data = path.read_bytes() if path.is_file() else None
    record = parse_record(data)
    return record if record is not None and record.get("run_id") == run_id else None


def install_pod_result(plan: dict[str, Any], run_id: str, context: Any) -> dict[str, Any]:
    """Verify and install what the pod left in its staging folder, like any other adapter."""
    from trait_lora.core.handoff import runs
    from trait_lora.local.backend import install_trained

    context["trait_label"] = plan["trait"]
    plan = runs.load_trait_plan(plan)
    try:
        with pod_adapter(plan) as adapter_dir:
            result = install_trained(plan, adapter_dir, plan["output_dir"])
    except (TraitLoraError, AirflowFailException) as exc:
        runs.record_failure(plan["output_dir"], run_id, plan["trait"], "install", str(exc))
        raise AirflowFailException(str(exc)) from None
    runs.clear_failure(plan["output_dir"], run_id, plan["trait"])
    steps.track_trait({**context, "run_id": run_id}, plan, result, "kubernetes")
    return result


def _no_result(plan: dict[str, Any], where: str) -> AirflowFailException:
    from trait_lora.core.adapter.spec import RESULT_FILE

    return AirflowFailException(
        f"{plan['trait']}: the pod left no {RESULT_FILE} in {where}, so it did not finish training "
        "(see trait.train_pod's log); nothing installed"
    )


def _record(plan: dict[str, Any], data: bytes, where: str) -> dict[str, Any]:
    try:
        record = json.loads(data)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise AirflowFailException(
            f"{plan['trait']}: {where} is not the trainer's JSON record; nothing installed"
        )
    return record


@contextlib.contextmanager
def pod_adapter(plan: dict[str, Any]) -> Iterator[str]:
    """The pod's adapter as a local folder, once its ``result.json`` says it finished: on the PVC as
    it is; from the bucket, its files copied into a temp folder. Once installed, the staging folder
    or objects are removed (a full adapter copy per trait and job otherwise stays on the volume); a
    failed install keeps them for inspection."""
    from trait_lora.core.adapter.spec import RESULT_FILE, TRAINED_FILES
    from trait_lora.core.storage.opener import is_url
    from trait_lora.core.storage.records import as_store
    from trait_lora.local.backend import STAGING_DIR
    from trait_lora.provider.kubernetes import locations, staging_name
    from trait_lora.train.group_records import RECORD_SUFFIX, record_path

    adapter_dir = locations(plan)[1]
    if not is_url(adapter_dir):
        result = Path(adapter_dir) / RESULT_FILE
        if not result.is_file():
            raise _no_result(plan, adapter_dir)
        _record(plan, result.read_bytes(), str(result))
        yield adapter_dir
        shutil.rmtree(adapter_dir, ignore_errors=True)
        record_path(adapter_dir).unlink(missing_ok=True)  # a group pod's record, when one trained it
        return
    store = as_store(plan["output_dir"])
    prefix = f"{STAGING_DIR}/{staging_name(plan)}"
    blob = store.read(f"{prefix}/{RESULT_FILE}")
    if blob is None:
        raise _no_result(plan, adapter_dir)
    _record(plan, blob.data, f"{adapter_dir}/{RESULT_FILE}")
    with tempfile.TemporaryDirectory(prefix=f"trait-lora-{plan['trait']}-") as tmp:
        for name in TRAINED_FILES:
            found = store.read(f"{prefix}/{name}")
            if found is not None:
                (Path(tmp) / name).write_bytes(found.data)
        yield tmp
    for name in TRAINED_FILES:
        store.delete(f"{prefix}/{name}")
    store.delete(f"{prefix}{RECORD_SUFFIX}")  # a group pod's record, when one trained it
