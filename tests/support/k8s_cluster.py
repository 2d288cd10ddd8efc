"""What the Kubernetes DAG tests set up around the fake API server: a GPU node pool as the settings
expect it, the deployment's ``[trait_lora] k8s_*`` settings, trainer images, and clocks on the pods.

Two images stand for the trainer image. The real one (``warm_python``): ``python -m trait_lora.train``
on the pod's argv, env and volumes. A stub for the fault tests: a few lines that, seen from the DAG,
behave like the trainer (log steps, write the adapter and ``result.json`` beside it, or print an
``error:`` line and exit with the trainer's code), chosen per trait by a JSON file, in ~50 ms a pod;
given a group's ``--group`` manifest, it trains each member in turn and writes its record beside it.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.fake_kubernetes import FakeKubernetes
from tests.support.airflow import copy_shards

NAMESPACE = "airflow"  # [trait_lora] k8s_namespace's default
GPU_LABELS = {"nvidia.com/gpu.present": "true"}  # k8s_node_selector's default
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}  # tolerated by default
REAL_IMAGE = "registry.example/trait-lora-trainer:0.1.0"
STUB_IMAGE = "registry.example/trait-lora-trainer:stub"

STUB = """#!{python}
import json, os, shutil, sys, time
args = sys.argv[3:]  # after "-m trait_lora.train": the pod's arguments


def value(flag):
    return args[args.index(flag) + 1] if flag in args else None


plans = json.load(open(os.environ["STUB_PLAN"]))
micro_batch = int(value("--micro-batch"))


def train(trait, out):
    plan = plans.get(trait, {{}})
    print(f"training {{trait}} at micro-batch {{micro_batch}}", flush=True)
    if "exit" in plan:
        print(plan["error"], file=sys.stderr, flush=True)
        sys.exit(plan["exit"])
    for step in range(1, plan.get("steps", 2) + 1):
        time.sleep(plan.get("step_seconds", 0.05))
        print(f"step {{step}} loss 1.0", flush=True)
    shutil.copytree(os.environ["STUB_ADAPTER"], out, dirs_exist_ok=True)
    result = {{"adapter_dir": out, "final_loss": 1.0, "micro_batch": micro_batch}}
    open(os.path.join(out, "result.json"), "w").write(json.dumps(result) + "\\n")
    print(json.dumps(result), flush=True)
    return result


if value("--group"):  # a group's pod: each member in turn, its record beside its adapter (train.group)
    manifest = json.loads(value("--group"))
    for member in manifest["members"]:
        result = train(member["trait"], member["out"])
        record = {{"trait": member["trait"], "run_id": manifest.get("run_id"), "status": "trained",
                  "exit_code": 0, "error": None, "result": result}}
        open(member["out"].rstrip("/") + ".result.json", "w").write(json.dumps(record) + "\\n")
else:
    train(value("--shard").rsplit("/", 1)[-1].rsplit(".", 1)[0], value("--out"))
"""


def settings_env(data: Path, **overrides: Any) -> dict[str, str]:
    """The deployment's settings for these tests: the PVC mounted at its host folder (``data``: no
    path is rewritten), fast polls and retries, two pods at most."""
    values = {
        "k8s_mount_path": str(data),
        "k8s_max_pods": "2",
        "k8s_poll_seconds": "0.2",
        "k8s_retry_delay_seconds": "0",
        "k8s_logging_interval_seconds": "0",
        "trainer_image": REAL_IMAGE,
        **{k: str(v) for k, v in overrides.items()},
    }
    return {f"AIRFLOW__TRAIT_LORA__{k.upper()}": v for k, v in values.items()}


def gpu_cluster(fake: FakeKubernetes, data: Path, gpus: int = 4) -> None:
    """The namespace, the data PVC and a GPU node as the default node selector and tolerations
    expect it, beside the fake's default CPU node."""
    fake.add_namespace(NAMESPACE)
    fake.add_pvc("trait-lora-data", data, namespace=NAMESPACE)
    fake.add_node("gpu-1", cpu="32", memory="256Gi", gpus=gpus, labels=GPU_LABELS, taints=[GPU_TAINT])


def stub_image(fake: FakeKubernetes, folder: Path, plan: dict[str, dict[str, Any]]) -> Path:
    """The stub trainer image (``STUB_IMAGE``): ``folder/bin/python`` on its PATH, a small adapter
    matching the default LoRA settings, ``plan``: trait -> {"exit", "error"} or {"steps",
    "step_seconds"}. Returns the plan file (rewrite it to change what the next pods do)."""
    from tests.support.adapters import write_adapter_dir
    from trait_lora.core.config import TrainingConfig

    config = TrainingConfig()
    adapter = write_adapter_dir(
        folder / "adapter",
        r=config.lora_r,
        alpha=config.lora_alpha,
        modules=tuple(config.target_modules),
        layers=2,
        shapes={m: (64, 64) for m in config.target_modules},
    )
    (folder / "bin").mkdir(parents=True, exist_ok=True)
    python = folder / "bin" / "python"
    python.write_text(STUB.format(python=sys.executable))
    python.chmod(0o755)
    plan_file = folder / "plan.json"
    plan_file.write_text(json.dumps(plan))
    fake.images.add(
        STUB_IMAGE,
        env={
            "PATH": f"{python.parent}:/usr/bin:/bin",
            "STUB_PLAN": str(plan_file),
            "STUB_ADAPTER": str(adapter),
        },
    )
    return plan_file


@dataclass
class PodClock:
    """When each pod ran (first seen Running -> finished or gone), by trait label, watched as the
    fake's store changes; ``first_running`` is the moment the first pod of the test ran."""

    fake: FakeKubernetes
    started: dict[str, tuple[str, float]] = field(default_factory=dict)  # uid -> (trait, t)
    ended: dict[str, float] = field(default_factory=dict)
    stop: bool = False

    def watch(self) -> None:
        store = self.fake.store
        with store.lock:
            while not self.stop:
                now = time.monotonic()
                pods = {p["metadata"]["uid"]: p for p in store.list("pods")}
                for uid, pod in pods.items():
                    if pod["status"].get("phase") == "Running" and uid not in self.started:
                        self.started[uid] = (pod["metadata"]["labels"].get("trait", ""), now)
                for uid in self.started:
                    gone = uid not in pods or pods[uid]["status"].get("phase") in ("Succeeded", "Failed")
                    if gone and uid not in self.ended:
                        self.ended[uid] = now
                store.changed.wait(0.05)

    @property
    def first_running(self) -> float:
        return min(t for _, t in self.started.values())

    def running_seconds(self) -> float:
        return sum(self.ended.get(uid, time.monotonic()) - t for uid, (_, t) in self.started.items())


@contextmanager
def pod_clock(fake: FakeKubernetes) -> Iterator[PodClock]:
    clock = PodClock(fake)
    thread = threading.Thread(target=clock.watch, daemon=True, name="pod-clock")
    thread.start()
    try:
        yield clock
    finally:
        clock.stop = True
        fake.store.touch()
        thread.join(5)


def most_running_per_trait(fake: FakeKubernetes) -> Counter[str]:
    """The most pods of one trait in phase Running at the same moment, from the API's own history of
    changes (every write, in order): a replacement that overlapped its predecessor shows as 2."""
    running: dict[str, set[str]] = {}
    most: Counter[str] = Counter()
    with fake.store.lock:
        history = [e for e in fake.store.history if e.resource == "pods"]
    for event in history:
        meta = event.obj["metadata"]
        trait = (meta.get("labels") or {}).get("trait", "")
        pods = running.setdefault(trait, set())
        if event.type != "DELETED" and event.obj["status"].get("phase") == "Running":
            pods.add(meta["uid"])
        else:
            pods.discard(meta["uid"])
        most[trait] = max(most[trait], len(pods))
    return most


def pod_args(pod: dict[str, Any]) -> list[str]:
    return list(pod["spec"]["containers"][0].get("args") or [])


def label(trait: str) -> str:
    return trait.replace("_", "-")


def real_image(fake: Any, warm_trainer: Path) -> None:
    """The trainer image: its ``python`` is the warm one; uid 1000 as in Dockerfile.trainer."""
    fake.images.add(
        REAL_IMAGE, env={"PATH": f"{warm_trainer}:/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}, user=1000
    )


def use(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def figures(run: str, **seconds: float) -> None:
    """What ``pytest -s`` shows: seconds from trigger to the first pod running, the DAG's seconds
    per trait besides the pods' own, a rerun's seconds (dag.test(): one task at a time)."""
    print(f"\n{run}: " + ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items()))


def summary_rows(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["trait"]: row for row in summary["traits"]}


def stub_conf(data: Path, traits: list[str]) -> dict[str, Any]:
    """A run's conf on the PVC for ``traits`` (their sample shards copied there)."""
    copy_shards(data / "shards", traits)
    return {
        "shards_dir": str(data / "shards"),
        "output_dir": str(data / "out"),
        "traits": traits,
        "base_model": "/models/llama-3.1-8b",  # in the model cache: the pod needs no Hub token
    }


def failures_of(data: Path, run: Any) -> dict[str, dict[str, Any]]:
    from trait_lora.core.handoff import runs

    return runs.read_failures(data / "out", run.run_id)


def pod_status(**status: Any) -> dict[str, Any]:
    """A pod as the API answers it, with only ``status`` filled in."""
    return {"metadata": {"namespace": NAMESPACE, "name": "trait-lora-joy-plus-x"}, "status": status}


def stub_cluster(
    fake: FakeKubernetes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **settings: Any
) -> Path:
    """A GPU node, the data PVC at ``tmp_path/data`` and the stub image, on which joy_plus trains
    for 2.5 s; ``settings`` on top of ``settings_env``'s. Returns the PVC's folder."""
    data = tmp_path / "data"
    gpu_cluster(fake, data)
    stub_image(fake, tmp_path / "image", {"joy_plus": {"steps": 25, "step_seconds": 0.1}})
    use(monkeypatch, settings_env(data, **{"trainer_image": STUB_IMAGE, **settings}))
    return data
