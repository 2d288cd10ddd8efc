"""Train one trait locally and install its adapter under the same contract as the Together path.

The trainer runs as ``python -m trait_lora.train`` in a child process: torch never loads into the
Airflow worker (or scheduler, or DAG processor), and all of its memory goes back when the trait is done.
The child writes into a staging directory; only after the core verifies the adapter is it installed
atomically and recorded in the ledger, exactly as a downloaded Together adapter is.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trait_lora.core.adapter import AdapterSpec
from trait_lora.core.adapter.content import install_adapter_at
from trait_lora.core.config import from_mapping
from trait_lora.core.errors import TraitLoraError
from trait_lora.core.handoff.summary import METRICS_DIR
from trait_lora.core.jobs.ledger import Ledger
from trait_lora.core.shards.catalog import check_trait_name
from trait_lora.core.shards.remote import opposite_shard_file, shard_file, shard_source
from trait_lora.core.storage.opener import is_url, scratch_dir
from trait_lora.core.storage.records import as_store
from trait_lora.core.storage.store import encode_json

EXIT_MEANINGS = {
    1: "the trainer crashed (see the log above)",
    2: "bad shard, config or arguments",
    3: "base model missing or unusable: pass a local model path (base_model) or pre-download it",
    4: "out of memory even at micro-batch 1: set quantization to 4bit, lower max_seq_length, or use a "
    "GPU with more memory",
}
STAGING_DIR = ".staging-train"


class LocalTrainingError(TraitLoraError):
    """The trainer exited non-zero; the message carries its exit meaning and its last stderr lines."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def trainer_argv(
    plan: dict[str, Any],
    out: str | Path,
    *,
    python: str = sys.executable,
    gpu: bool = False,
    micro_batch: int | None = None,
    max_steps: int | None = None,
    model_dir: str | Path | None = None,
    checkpoint_every: int = 0,
) -> list[str]:
    """The trainer's argv as a list (never a shell string); the trait is re-validated first.

    ``model_dir`` is this machine's copy of a pinned Hub or S3 model: the trainer loads it from there
    (offline) and records the model's id, not the cache path, in the adapter's config."""
    check_trait_name(plan["trait"])
    config = from_mapping({**plan["config"], "backend": "local"})
    base_id = base_model_record(plan)["base_model"]
    if model_dir is not None:
        config = from_mapping({**config.to_dict(), "local_model": str(model_dir)})
    argv = [
        python,
        "-m",
        "trait_lora.train",
        "--shard",
        str(plan["shard_path"]),
        "--out",
        str(out),
        "--config-json",
        json.dumps(config.to_dict(), sort_keys=True),
    ]
    if model_dir is not None:
        argv += ["--base-model-id", base_id]
    return argv + trainer_flags(
        gpu=gpu, micro_batch=micro_batch, max_steps=max_steps, checkpoint_every=checkpoint_every
    )


def trainer_flags(
    *,
    gpu: bool = False,
    micro_batch: int | None = None,
    max_steps: int | None = None,
    checkpoint_every: int = 0,
) -> list[str]:
    """The flags that say how to train rather than what: the same for one trait and for a group."""
    argv: list[str] = []
    if gpu:
        argv.append("--gpu")
    if micro_batch:
        argv += ["--micro-batch", str(int(micro_batch))]
    if max_steps:
        argv += ["--max-steps", str(int(max_steps))]
    if checkpoint_every:  # beside the staging folder, which a retry on this machine finds again
        argv += ["--checkpoint-every", str(int(checkpoint_every))]
    return argv


def base_model_record(plan: dict[str, Any]) -> dict[str, Any]:
    """Which base the plan's adapter trains on, as the ledger and the mapping record it: the model id,
    its source, the pinned revision (``discover``'s ``base_model_pin``) and the quantization."""
    config = plan["config"]
    pin = plan.get("base_model_pin")
    if pin:
        from trait_lora.models import PinnedModel

        record: dict[str, Any] = PinnedModel.from_dict(pin).record()
    else:
        record = {
            "base_model": config.get("local_model"),
            "base_model_source": "local",
            "base_model_revision": None,
        }
    record["quantization"] = config.get("quantization")
    return record


def staging_path(output_dir: str | Path, plan: dict[str, Any]) -> Path:
    return Path(output_dir) / STAGING_DIR / f"{check_trait_name(plan['trait'])}-{plan['job_key'][:16]}"


def staging_dir(plan: dict[str, Any], output_dir: str | Path | None = None) -> Path:
    """Where the trainer writes this trait's adapter before it is verified: beside the output folder,
    or in this worker's scratch folder for an output on object storage (the same path for the group
    that trains it and the trait's own task that installs it, on one machine)."""
    location = str(output_dir or plan["output_dir"])
    return scratch_dir(location, STAGING_DIR) / staging_path("", plan).name


def with_local_shard(plan: dict[str, Any]) -> dict[str, Any]:
    """The plan with ``shard_path`` on this machine: a shard on object storage is copied here first
    (its sha256 is checked against the plan's by ``install_trained``), with its opposite pole when
    the held-out evaluation scores it."""
    if not plan.get("shard_key"):
        return plan
    plan = {**plan, "shard_path": str(shard_file(plan))}
    if float(plan["config"].get("eval_fraction") or 0) > 0:
        opposite_shard_file(plan)
    return plan


STOP_GRACE_SECONDS = 10.0


def _stop(proc: subprocess.Popen[str], grace: float = STOP_GRACE_SECONDS) -> None:
    """Interrupt the trainer (it exits 130 writing nothing; its checkpoint stays), then kill it."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_trainer(
    argv: list[str],
    *,
    log: Callable[[str], None] = print,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run the trainer, relay its progress lines, return its final JSON line.

    Both pipes are drained at once (stdout by a thread), so a child that fills one pipe while we read
    the other cannot deadlock the two. The child stays in the task's process group, which Airflow's
    supervisor signals when the task is killed; when the task itself is interrupted (its
    ``execution_timeout``, an exception) the child is stopped here before the error goes on, so no
    trainer outlives its task holding a GPU."""
    child_env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), **(env or {})}
    tail: deque[str] = deque(maxlen=40)
    out_chunks: list[str] = []
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env, bufsize=1
    ) as proc:
        assert proc.stderr is not None and proc.stdout is not None
        stdout_pipe = proc.stdout
        reader = threading.Thread(target=lambda: out_chunks.extend(stdout_pipe), daemon=True)
        reader.start()
        # A trainer that hangs keeps its stderr open: the limit is a timer, not a wait after the pipe ends.
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            _stop(proc)

        watchdog = threading.Timer(timeout, expire) if timeout else None
        if watchdog is not None:
            watchdog.daemon = True
            watchdog.start()
        try:
            for line in proc.stderr:
                line = line.rstrip()
                tail.append(line)
                log(line)
            code = proc.wait()
        except BaseException:
            _stop(proc)
            raise
        finally:
            if watchdog is not None:
                watchdog.cancel()
            reader.join(timeout=5)
    stdout = "".join(out_chunks)
    if expired.is_set() and code != 0:
        raise LocalTrainingError(
            f"trainer stopped after {timeout:.0f} s, its time limit ([trait_lora] local_timeout_minutes "
            "per trait); a retry resumes from its last checkpoint:\n" + "\n".join(tail),
            1,
        )
    if code != 0:
        meaning = EXIT_MEANINGS.get(code, f"exit code {code}")
        detail = "\n".join(tail)
        raise LocalTrainingError(f"trainer failed ({meaning}):\n{detail}", code)
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        raise LocalTrainingError(
            f"trainer exited 0 but printed no result line: {stdout[-500:]!r}", 1
        ) from None


def install_trained(plan: dict[str, Any], adapter_src: str | Path, output_dir: str | Path) -> dict[str, Any]:
    """Verify and install a locally trained adapter, record it, keep its loss curve for the summary.

    Shared by the in-process backend and the Kubernetes DAG (whose pod wrote ``adapter_src`` on the PVC).
    """
    trait = check_trait_name(plan["trait"])
    config = from_mapping({**plan["config"], "backend": "local"})
    src = Path(adapter_src)
    metrics: dict[str, Any] = {}
    if (src / "metrics.json").is_file():
        metrics = json.loads((src / "metrics.json").read_text())
    if metrics.get("shard_sha256") not in (None, plan["shard_sha256"]):
        raise LocalTrainingError(
            f"{trait}: the shard changed while it trained (sha256 {plan['shard_sha256'][:12]} -> "
            f"{metrics['shard_sha256'][:12]}); trigger a new run",
            2,
        )
    evaluation = metrics.get("eval") if isinstance(metrics.get("eval"), dict) else None
    check_quality_gate(trait, evaluation, plan.get("min_eval_improvement"))
    store = as_store(str(output_dir))
    where, info, folder = install_adapter_at(src, store, trait, AdapterSpec.from_config(config))
    steps = [{"step": s["step"], "loss": s["loss"]} for s in metrics.get("steps", []) if "loss" in s]
    store.put(
        f"{METRICS_DIR}/{trait}.json",
        encode_json(
            {
                "job_id": None,
                "steps": steps,
                "eval": evaluation,
                **{
                    k: metrics[k]
                    for k in (
                        "tokens_per_second",
                        "wall_seconds",
                        "real_tokens",
                        "device",
                        "precision",
                        "quantization",
                        "peak_memory_bytes",
                    )
                    if k in metrics
                },
            }
        ),
    )
    base = base_model_record(plan)
    record = Ledger(store).record_planned_adapter(
        plan,
        adapter_sha256=info.sha256,
        job_id=None,
        backend="local",
        base_model=base.pop("base_model") or config.local_model,
        evaluation=evaluation,
        adapter_path=folder,
        base=base,
    )
    return {
        "trait": trait,
        "action": "trained",
        "job_id": None,
        "adapter_path": where,
        "adapter_sha256": info.sha256,
        "final_loss": metrics.get("final_loss"),
        "duration_s": metrics.get("wall_seconds"),
        "tokens_per_second": metrics.get("tokens_per_second"),
        "eval": evaluation,
        "trained_at": record["trained_at"],
        "base_model_revision": record.get("base_model_revision"),
    }


def check_quality_gate(trait: str, evaluation: dict[str, Any] | None, threshold: Any) -> None:
    """Refuse to install an adapter that does not beat the base model's held-out loss by ``threshold``.

    Raised before anything is installed, so the previous adapter stays published; exit code 2 means
    "do not retry": the same data and settings would train the same adapter.
    """
    if threshold is None:
        return
    if not evaluation or evaluation.get("improvement") is None:
        raise LocalTrainingError(
            f"{trait}: min_eval_improvement is {threshold} but there are no held-out figures (eval_fraction "
            "is 0 or the shard has fewer than 10 examples); set eval_fraction or clear the gate",
            2,
        )
    gain = float(evaluation["improvement"])
    if gain < float(threshold):
        raise LocalTrainingError(
            f"{trait}: adapter not installed: held-out loss {evaluation['adapter_loss']:.4f} vs base "
            f"{evaluation['base_loss']:.4f} (improvement {gain:.4f} < min_eval_improvement {threshold}); "
            "the previous adapter stays published. Train longer, raise the learning rate or check the shard",
            2,
        )


def train_trait(
    plan: dict[str, Any],
    *,
    output_dir: str | Path | None = None,
    device: str = "cpu",
    gpus: list[str] | None = None,
    slot: int = 0,
    micro_batch: int | None = None,
    model_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train, verify, install, record one trait; the staging directory never outlives the call.

    With an output on object storage the trainer writes to this worker's scratch folder and the
    adapter is installed at its content-addressed key; a shard on object storage is copied here first
    (its sha256 is checked against the plan's by ``install_trained``). On ``cuda`` with GPUs visible
    the trainer gets one of them to itself (``devices.gpu_claim``; ``slot`` spreads the first tries)."""
    from trait_lora.local.devices import gpu_claim

    if device == "cuda" and gpus:
        with gpu_claim(gpus, first=slot, log=log) as gpu:
            log(f"{plan['trait']}: training on GPU {gpu}")
            env = {"CUDA_VISIBLE_DEVICES": gpu}
            return _train_and_install(
                plan, output_dir, True, micro_batch, model_dir, checkpoint_every, log, env
            )
    return _train_and_install(
        plan, output_dir, device == "cuda", micro_batch, model_dir, checkpoint_every, log, {}
    )


def _train_and_install(
    plan: dict[str, Any],
    output_dir: str | Path | None,
    gpu: bool,
    micro_batch: int | None,
    model_dir: str | Path | None,
    checkpoint_every: int,
    log: Callable[[str], None],
    env: dict[str, str],
) -> dict[str, Any]:
    location = str(output_dir or plan["output_dir"])
    out: str | Path = location if is_url(location) else Path(location)
    staging = staging_dir(plan, location)
    try:
        shown = shard_source(plan)
        plan = with_local_shard(plan)
        argv = trainer_argv(
            plan,
            staging,
            gpu=gpu,
            micro_batch=micro_batch,
            model_dir=model_dir,
            checkpoint_every=checkpoint_every,
        )
        log(f"{plan['trait']}: training {shown} ({plan['num_examples']} examples)")
        run_trainer(argv, log=log, env=env)
        return install_trained(plan, staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
