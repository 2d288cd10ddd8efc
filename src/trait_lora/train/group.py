"""Many traits, one trainer process: the base model loaded once, each trait's adapter trained on it in turn.

A process per trait pays for importing torch, transformers and peft (~3 s) and loading the base model
again for every 30-example shard; a group pays for them once. Each trait is still trained exactly as
``train_adapter`` trains it alone (its own seed, a fresh LoRA, its own optimizer and schedule, then the
adapter taken out of the base again), so its adapter is the one it would get alone, and grouping is not
part of any job key.

The contract with the caller is a manifest in and a record per trait out:

- the manifest (``--group FILE``, JSON): ``{"config": TrainingConfig.to_dict(), "run_id": optional,
  "base_model_id": optional, "members": [{"trait", "shard", "out", "config": optional}]}``; every member
  trains on the manifest config's base model (a member whose own config names another fails alone);
- each member's record (``group_records``), ``<out>.result.json`` beside its adapter folder (an
  object beside its prefix when ``out`` is an ``s3://`` URL): ``{"trait", "run_id", "status":
  "trained" | "failed", "exit_code", "error", "result"}``, where ``exit_code`` means what the
  single-trait process's exit code means (``trait_lora.train``) and ``result`` is the line it prints,
  also in ``<out>/result.json`` as it is for one trait; the record is written last, so a record that
  says trained means the adapter is there;
- ``shard`` and ``out`` may be ``s3://`` URLs (a pod without a volume), as for one trait: the shard (and
  its opposite pole, for the held-out evaluation) is copied into scratch, the adapter uploaded;
- the process exits 0 once every member has its record, whatever the records say (a bad shard, a shard
  with nothing to learn, an out-of-memory step at micro-batch 1 fail that member only). It exits 2 for a
  manifest it cannot read (no record written), 3 or 4 when the base model cannot be loaded (every member
  recorded with that code: training it alone fails the same way), 130 when interrupted and 1 on a crash;
  a member without a record was not trained and can be trained again, alone or in another group;
- a second process of the same run (a group pod's replacement after an eviction) does not train again a
  member that already has a trained record for this ``run_id``, and resumes the member it was training
  from its checkpoint (``--checkpoint-every``: beside the adapter folder, or in the bucket beside the
  prefix for an ``s3://`` out, as for one trait).
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from trait_lora.core.adapter.spec import RESULT_FILE
from trait_lora.core.config import TrainingConfig, from_mapping
from trait_lora.core.errors import ConfigError
from trait_lora.core.shards.catalog import check_trait_name
from trait_lora.train import EXIT_FAILED, objects
from trait_lora.train.group_records import FAILED, TRAINED, trained_earlier, write_record


@dataclass(frozen=True)
class Member:
    """One trait of a group: where its shard is and where its adapter and record go (a path on this
    machine or an ``s3://`` URL each)."""

    trait: str
    shard: str
    out: str
    config: TrainingConfig


@dataclass(frozen=True)
class _Local:
    """A member's shard and adapter folder on this machine, and where the adapter goes when not here."""

    shard: Path
    out: Path
    remote: str | None = None


@dataclass(frozen=True)
class Manifest:
    config: TrainingConfig
    members: list[Member]
    run_id: str | None = None
    base_model_id: str | None = None


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """The group's manifest, from a file or given as JSON itself (a pod's argv); a ``ConfigError``
    naming the file and field for anything unusable."""
    text = str(path)
    inline = text.lstrip().startswith("{")
    where = "(the manifest given as JSON)" if inline else text
    try:
        data = json.loads(text if inline else Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--group {where}: cannot read the group manifest ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise ConfigError(f"--group {where}: must be a JSON object with a 'config' object")
    items = data.get("members")
    if not isinstance(items, list) or not items:
        raise ConfigError(f"--group {where}: 'members' must be a non-empty list of {{trait, shard, out}}")
    config = from_mapping(data["config"], source=f"{where}: config")
    members: list[Member] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not all(
            isinstance(item.get(k), str) for k in ("trait", "shard", "out")
        ):
            raise ConfigError(f"--group {where}: members[{i}] needs 'trait', 'shard' and 'out' strings")
        own = item.get("config")
        members.append(
            Member(
                trait=check_trait_name(item["trait"]),
                shard=item["shard"],
                out=item["out"],
                config=from_mapping(own, source=f"{where}: members[{i}].config") if own else config,
            )
        )
    traits = [m.trait for m in members]
    outs = [m.out if objects.is_s3(m.out) else str(Path(m.out).resolve()) for m in members]
    if len(set(traits)) != len(traits) or len(set(outs)) != len(outs):
        raise ConfigError(f"--group {where}: each member needs its own trait and its own 'out' folder")
    return Manifest(config, members, data.get("run_id"), data.get("base_model_id"))


class _Tee(io.TextIOBase):
    """The member's messages go to the log as usual and are kept for its record."""

    def __init__(self, stream: TextIO) -> None:
        self.stream, self.kept = stream, io.StringIO()

    def write(self, text: str) -> int:
        self.kept.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


def run_group(
    manifest: Manifest,
    err: TextIO,
    *,
    load_kwargs: dict[str, Any],
    train_kwargs: dict[str, Any],
    scratch: Path,
) -> tuple[int, dict[str, Any]]:
    """Train every member on one base; (exit code, the group's summary line). Each member's shard is
    checked and its errors mapped to exit codes as for one trait (the single-trait CLI's own
    ``validate_shard`` and ``guarded``); members on object storage are copied into and trained in
    ``scratch``."""
    from trait_lora.train.guard import guarded
    from trait_lora.train.guard import validate_shard as validate

    started = time.perf_counter()
    summary: dict[str, Any] = {"traits": {}, "run_id": manifest.run_id}
    pending: list[tuple[Member, _Local, Any]] = []
    for i, member in enumerate(manifest.members):  # bad shards fail in well under a second, before torch
        if trained_earlier(member.out, manifest.run_id, err):
            print(f"group: {member.trait} was trained by this run's earlier process; not again", file=err)
            summary["traits"][member.trait] = {"status": TRAINED, "exit_code": 0, "earlier": True}
            continue
        tee = _Tee(err)
        local = _localized(member, scratch / str(i), tee)
        code, report = validate(local.shard, tee) if local else (2, None)
        if local is None or code:
            summary["traits"][member.trait] = _record(member, manifest, code, tee, local=local)
        else:
            pending.append((member, local, report))
    if not pending:
        return 0, _close(summary, started, None)

    from trait_lora.train.guard import skip_bitsandbytes

    skip_bitsandbytes(manifest.config, *(m.config for m, _, _ in pending))
    imported = time.perf_counter()
    from trait_lora.train import trainer

    summary["import_seconds"] = time.perf_counter() - imported

    print(
        f"group: loading {manifest.config.local_model} once for {len(pending)} trait(s)", file=err, flush=True
    )
    tee = _Tee(err)
    code, base = guarded(lambda: trainer.load_base(manifest.config, **load_kwargs), tee)
    if code:
        if code in (3, 4):  # the same base would fail each of them alone
            for member, local, _ in pending:
                summary["traits"][member.trait] = _record(member, manifest, code, tee, local=local)
        return code, _close(summary, started, None)
    summary["load_seconds"] = base.load_seconds
    # torch's, transformers' and the base's objects live as long as the process: out of the collector's
    # sight, the full collection between two traits costs milliseconds instead of ~0.3 s
    gc.freeze()
    peaks = [trainer.peak_memory(base.runtime)]  # the base alone, before any adapter
    losses: dict[Any, float | None] = {}  # base losses shared by the group's evaluations
    for k, (member, local, report) in enumerate(pending, 1):
        print(f"group: [{k}/{len(pending)}] {member.trait}", file=err, flush=True)
        tee = _Tee(err)
        line = None
        remote = _remote_checkpoint(local, train_kwargs, tee)
        try:
            code, result = guarded(
                lambda m=member, lo=local, r=report, t=tee, rc=remote: trainer.train_adapter(
                    lo.shard,
                    lo.out,
                    m.config,
                    base_model_id=manifest.base_model_id,
                    report=r,
                    base=base,
                    base_losses=losses,
                    log=t,
                    **train_kwargs,
                    **({"checkpoint_dir": rc.local, "on_checkpoint": rc.upload} if rc else {}),
                ),
                tee,
            )
            if code == 0:
                line = _published(local, result.summary())
                if remote is not None:
                    remote.discard(tee)
        except Exception:  # one trait's crash is its own: recorded, and the next starts from the base
            traceback.print_exc(file=tee)
            print(f"error: the trainer crashed on {member.trait} (traceback above)", file=tee)
            code, result = EXIT_FAILED, None
        base.tidy()
        if code == 130:  # interrupted: this member has no record, so it counts as not trained
            return code, _close(summary, started, peaks)
        summary["traits"][member.trait] = _record(member, manifest, code, tee, line, local=local)
        peaks.append(result.metrics["peak_memory_bytes"] if line else trainer.peak_memory(base.runtime))
        if not base.intact:  # the adapter could not be taken out: the rest train elsewhere, unrecorded
            print("error: the base model was left with an adapter in it; stopping the group", file=err)
            return EXIT_FAILED, _close(summary, started, peaks)
    return 0, _close(summary, started, peaks)


def _remote_checkpoint(local: _Local, train_kwargs: dict[str, Any], err: TextIO) -> Any:
    """A member bound for object storage keeps its checkpoints in the bucket beside its prefix, as a
    single trait's pod does (a pod's scratch is lost with it); the one an earlier pod left is pulled."""
    if not (local.remote and train_kwargs.get("checkpoint_every")):
        return None
    return objects.RemoteCheckpoint.resumed(local.remote, local.out.parent / "checkpoint", err)


def _localized(member: Member, scratch: Path, err: TextIO) -> _Local | None:
    """The member's shard and adapter folder here: a shard on object storage is copied into
    ``scratch`` (with its opposite pole when the held-out evaluation scores it), an adapter bound for
    object storage is trained there; None (the reason printed) when the shard cannot be read."""
    shard, out, remote = Path(member.shard), Path(member.out), None
    try:
        if objects.is_s3(member.shard):
            shard = objects.fetch(member.shard, scratch / "shard" / member.shard.rsplit("/", 1)[-1])
            if member.config.eval_fraction > 0:
                objects.fetch_opposite(member.shard, shard.parent)
    except Exception as exc:  # a missing object, refused credentials: this member fails, not the group
        print(f"error: cannot read shard {member.shard}: {exc}", file=err)
        return None
    if objects.is_s3(member.out):
        out, remote = scratch / "adapter", member.out
    return _Local(shard, out, remote)


def _published(local: _Local, line: dict[str, Any]) -> dict[str, Any]:
    """``result.json`` in the adapter folder, as for one trait; then the folder's upload to object
    storage (result.json last among its files, then the record: once it says trained, all is there)."""
    if local.remote:
        line = {**line, "adapter_dir": local.remote}
    (local.out / RESULT_FILE).write_text(json.dumps(line, sort_keys=True) + "\n")
    if local.remote:
        objects.publish_dir(local.out, local.remote)
    return line


def _record(
    member: Member,
    manifest: Manifest,
    code: int,
    tee: _Tee,
    result: dict[str, Any] | None = None,
    *,
    local: _Local | None = None,
) -> dict[str, Any]:
    error = None
    if code:  # what the trainer said from its error line on (a bad shard's problems follow it)
        lines = [ln for ln in tee.kept.getvalue().splitlines() if ln.strip()]
        first = max((i for i, ln in enumerate(lines) if ln.startswith("error:")), default=len(lines) - 20)
        error = "\n".join(lines[max(0, first) :][:50]) or f"exit code {code}"
    record = write_record(
        member, manifest.run_id, code, error, result, local_out=local.out if local else None
    )
    return {"status": record["status"], "exit_code": code}


def _close(summary: dict[str, Any], started: float, peaks: list[int] | None) -> dict[str, Any]:
    """The group's line: per-trait statuses, counts, time and the peak memory of the whole group (the
    largest of its traits' peaks: each trait's includes the base model, loaded once)."""
    statuses = [t["status"] for t in summary["traits"].values()]
    summary.update(
        trained=statuses.count(TRAINED),
        failed=statuses.count(FAILED),
        wall_seconds=time.perf_counter() - started,
    )
    if peaks:
        summary["peak_memory_bytes"] = max(peaks)
    return summary


def main(args: argparse.Namespace, err: TextIO) -> int:
    """``python -m trait_lora.train --group``: the exit code (see above); the group's line on stdout."""
    from trait_lora.train import EXIT_BAD_INPUT
    from trait_lora.train.guard import pinned_config

    try:
        manifest = read_manifest(args.group)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=err)
        return EXIT_BAD_INPUT
    code, config = pinned_config(args, manifest.config, err)
    if code:
        return code
    if config is not manifest.config:  # the pin's folder: every member trains on it
        model = {"local_model": config.local_model}
        members = [replace(m, config=from_mapping({**m.config.to_dict(), **model})) for m in manifest.members]
        manifest = replace(manifest, config=config, members=members, base_model_id=args.base_model_id)
    elif args.base_model_id:
        manifest = replace(manifest, base_model_id=args.base_model_id)
    with tempfile.TemporaryDirectory(prefix="trait-lora-group-") as scratch:
        code, line = _run_group(args, manifest, err, Path(scratch))
    text = json.dumps(line, sort_keys=True)
    if args.xcom_file:
        args.xcom_file.parent.mkdir(parents=True, exist_ok=True)
        args.xcom_file.write_text(text)
    print(text, flush=True)
    return code


def _run_group(
    args: argparse.Namespace, manifest: Manifest, err: TextIO, scratch: Path
) -> tuple[int, dict[str, Any]]:
    return run_group(
        manifest,
        err,
        scratch=scratch,
        load_kwargs={"device": args.device, "precision": args.precision},
        train_kwargs={
            "micro_batch": args.micro_batch,
            "max_steps": args.max_steps,
            "seed": args.seed,
            "max_length": args.max_length,
            "checkpoint_every": args.checkpoint_every,
        },
    )
