"""A group member's record: what a group trainer process says of each trait it was given.

``<out>.result.json`` beside the member's adapter folder (an object beside its prefix when ``out`` is an
``s3://`` URL): ``{"trait", "run_id", "status": "trained" | "failed", "exit_code", "error", "result"}``.
Written last, after the adapter and its ``result.json``, so a record that says trained means the
adapter is there. Read by the trait's own task (``local.groups``, ``provider.pod_tasks``) to install
what the group trained, and by a later process of the same run so as not to train it again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol, TextIO

from trait_lora.core.adapter.spec import RESULT_FILE
from trait_lora.core.storage.atomic import atomic_write_json
from trait_lora.train import objects

RECORD_SUFFIX = ".result.json"
TRAINED, FAILED = "trained", "failed"


class Placed(Protocol):
    """A member as a record knows it: its trait and where its adapter goes."""

    trait: str
    out: str


def record_path(out: str | os.PathLike[str]) -> Path:
    """Where a member's record goes: beside its adapter folder, which only appears when it trained."""
    path = Path(out)
    return path.with_name(path.name + RECORD_SUFFIX)


def record_url(out: str) -> str:
    """The record of a member whose adapter goes to object storage: an object beside its prefix."""
    return out.rstrip("/") + RECORD_SUFFIX


def read_record(out: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A member's record, or None when the group did not get to it (or it is not a record)."""
    try:
        return parse_record(record_path(out).read_bytes())
    except FileNotFoundError:
        return None


def parse_record(data: bytes | str | None) -> dict[str, Any] | None:
    """A record's JSON (read from a volume or a bucket), or None when it is not one."""
    try:
        record = json.loads(data) if data else None
    except ValueError:
        return None
    return record if isinstance(record, dict) and record.get("status") in (TRAINED, FAILED) else None


def write_record(
    member: Placed,
    run_id: str | None,
    code: int,
    error: str | None = None,
    result: dict[str, Any] | None = None,
    *,
    local_out: Path | None = None,
) -> dict[str, Any]:
    """The member's record beside its adapter; uploaded beside the prefix for an ``s3://`` out (the
    local copy then goes beside ``local_out``, the scratch folder it trained into)."""
    record = {
        "trait": member.trait,
        "run_id": run_id,
        "status": TRAINED if code == 0 else FAILED,
        "exit_code": code,
        "error": error,
        "result": result,
    }
    if objects.is_s3(member.out):
        objects.put_bytes(record_url(member.out), json.dumps(record, indent=2, sort_keys=True).encode())
        if local_out is not None:
            atomic_write_json(record_path(local_out), record)
    else:
        atomic_write_json(record_path(member.out), record)
    return record


def trained_earlier(out: str | os.PathLike[str], run_id: str | None, err: TextIO | None = None) -> bool:
    """Whether an earlier process of this run (a group pod evicted or deleted after it, a retried
    group task) trained and recorded the member whose adapter goes to ``out``: its record says trained
    for this run, and the adapter is where it says (the record is written last, after the adapter and
    its ``result.json``). Its trait's own task has not installed it yet (installs wait for the
    group), so training it again would only cost the time."""
    if not run_id:
        return False
    try:
        if objects.is_s3(str(out)):
            record = parse_record(objects.read_bytes(record_url(str(out))))
            # the adapter is still there (an install that consumed it deletes the record after it)
            record = record if record and objects.read_bytes(f"{out}/{RESULT_FILE}") is not None else None
        else:
            record = read_record(out)
            record = record if (Path(out) / RESULT_FILE).is_file() else None
    except Exception as exc:  # unreadable: training it again is the safe side
        print(f"note: cannot read the record beside {out} ({exc}); training it", file=err)
        return False
    return record is not None and record.get("run_id") == run_id and record.get("status") == TRAINED
