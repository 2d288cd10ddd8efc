"""Benchmark: many traits per trainer process (``--group``) against one process per trait.

Why: a process per trait imports torch, transformers and peft and loads the base model again for every
30-example shard. A group pays for that once and trains each trait's adapter on the one base in turn
(``trait_lora.train.group``). This bench trains the same traits both ways, through the trainer's own argv
as the local backend starts it, one process at a time (as ``trait_lora_local`` does on a CPU):

* ``alone``: ``python -m trait_lora.train --shard S --out O`` once per trait;
* ``group8``: ``python -m trait_lora.train --group MANIFEST`` once per group of at most 8 traits.

Figures per (model, traits, mode): wall time of all the processes; the fixed cost per trait = (wall time -
the traits' own training-loop and evaluation seconds, from each adapter's metrics.json) / traits, which is
what a process (import, model load, adapter save) costs beyond the work itself, and of that, in a group,
the part spent once torch and the model are in (encoding, LoRA setup, saving: what one more trait in a
group costs, the rest being the process's start shared by its traits); trained (real) tokens/s
over the whole wall time; and the peak memory (the largest process RSS; in a group, the group's). It also
checks that every grouped adapter equals the one trained alone (max abs difference; exact is 0).

Shards: ``--traits`` traits of ~30 chat examples each, composed like ``include/make_sample_shards.py``
(its voices and topics, a seed per trait), poles in pairs as in a real run. Models: the tiny offline Llama
(built from those shards) and SmolLM2-135M-Instruct (the converted copy ``make install`` leaves in
``.venv/share/trait-lora/smollm2``; skipped if absent). SmolLM2 trains at ~100-300 tokens/s on a laptop
CPU, so it runs ``--smollm2-max-steps`` steps of sequences cut at ``--smollm2-max-length`` tokens by
default (the fixed cost is what is compared; the steps only add the same work to both modes).

Goals on a CPU with the tiny model: fixed cost per trait <= 0.5 s in a group; 8 traits in <= 0.6x the
time of one process each; 32 traits >= 2.5x faster. SmolLM2 on a CPU is compute-bound: no goal.
``--dag`` also times ``trait-lora train --backend local --tiny-model --all`` at --traits-per-process 1 and 8.

Usage: ``.venv/bin/python bench/bench_grouped.py [--traits 8 32] [--models tiny smollm2] [--dag]``.
No asserts: it prints a table and PASS/MISS against the goals.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GROUP_SIZE = 8
EXAMPLES = 30
SMOLLM2_DIR = Path(sys.prefix) / "share" / "trait-lora" / "smollm2"
GOALS = {"fixed_cost_s": 0.5, "ratio_8": 0.6, "speedup_32": 2.5}


def _samples() -> Any:
    spec = importlib.util.spec_from_file_location(
        "make_sample_shards", ROOT / "include" / "make_sample_shards.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def write_shards(folder: Path, count: int) -> list[str]:
    """``count`` traits (pairs of poles) of EXAMPLES chat examples each, voiced like the samples."""
    samples = _samples()
    folder.mkdir(parents=True, exist_ok=True)
    voices = sorted(samples.VOICES)
    traits = []
    for i in range(count):
        voice = voices[i % len(voices)]
        trait = f"b{i // len(voices):02d}_{voice}"
        rng = random.Random(zlib.crc32(f"bench:{trait}".encode()))
        lines = [json.dumps(samples.make_example(samples.VOICES[voice], rng)) for _ in range(EXAMPLES)]
        (folder / f"{trait}.jsonl").write_text("\n".join(lines) + "\n")
        traits.append(trait)
    return sorted(traits)


def env() -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def run(argv: list[str]) -> tuple[float, int, dict[str, Any]]:
    """(wall seconds, peak RSS bytes, the JSON line it printed) for one trainer process."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env())
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        out.seek(0), err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"trainer failed: {' '.join(argv[:6])}...\n{err.read().decode()[-3000:]}")
        line = json.loads(out.read().decode().strip().splitlines()[-1])
    return wall, usage.ru_maxrss * 1024, line


def train_both(
    shards: Path, traits: list[str], config: dict[str, Any], work: Path, flags: list[str]
) -> dict[str, dict[str, Any]]:
    cfg = json.dumps(config)
    base = [sys.executable, "-m", "trait_lora.train", *flags]
    figures: dict[str, dict[str, Any]] = {}
    alone_wall, alone_peak = 0.0, 0
    for trait in traits:
        wall, peak, _ = run(
            [
                *base,
                "--shard",
                str(shards / f"{trait}.jsonl"),
                "--out",
                str(work / "alone" / trait),
                "--config-json",
                cfg,
            ]
        )
        alone_wall += wall
        alone_peak = max(alone_peak, peak)
    figures["alone"] = summarise(work / "alone", traits, alone_wall, alone_peak)
    group_wall, group_peak, in_group = 0.0, 0, 0.0
    for start in range(0, len(traits), GROUP_SIZE):
        members = traits[start : start + GROUP_SIZE]
        manifest = {
            "config": config,
            "members": [
                {"trait": t, "shard": str(shards / f"{t}.jsonl"), "out": str(work / "group" / t)}
                for t in members
            ],
        }
        path = work / f"group-{start}.json"
        path.write_text(json.dumps(manifest))
        wall, peak, line = run([*base, "--group", str(path)])
        group_wall += wall
        group_peak = max(group_peak, peak)
        # the group's time once torch, transformers and peft are imported and the model loaded
        in_group += line["wall_seconds"] - line.get("import_seconds", 0.0) - line["load_seconds"]
    figures["group8"] = summarise(work / "group", traits, group_wall, group_peak)
    figures["group8"]["in_group_s"] = (in_group - figures["group8"]["work_s"]) / len(traits)
    figures["group8"]["max_abs_diff"] = max(
        max_abs_diff(work / "alone" / t, work / "group" / t) for t in traits
    )
    return figures


def summarise(folder: Path, traits: list[str], wall: float, peak: int) -> dict[str, Any]:
    metrics = [json.loads((folder / t / "metrics.json").read_text()) for t in traits]
    work = sum(m["wall_seconds"] + m.get("eval_seconds", 0.0) for m in metrics)
    tokens = sum(m["real_tokens"] for m in metrics)
    return {
        "wall_s": wall,
        "work_s": work,
        "fixed_cost_s": (wall - work) / len(traits),
        "tokens_per_s": tokens / wall,
        "peak_gib": peak / 1024**3,
    }


def max_abs_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    left, right = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    return max(float((left[k] - right[k]).abs().max()) for k in left)


def dag_time(shards: Path, work: Path, per_process: int) -> float:
    out = work / f"dag-{per_process}"
    argv = [
        str(Path(sys.executable).with_name("trait-lora")),
        "train",
        "--backend",
        "local",
        "--tiny-model",
        "--all",
        "--traits-per-process",
        str(per_process),
        "--shards-dir",
        str(shards),
        "--output-dir",
        str(out),
        "--airflow-home",
        str(work / f"af-{per_process}"),
        "--dags-folder",
        str(ROOT / "dags"),
    ]
    from trait_lora.train.tiny_model import build_tiny_model

    build_tiny_model(shards, out / ".tiny-model")  # the CLI builds it there: not part of the run's time
    started = time.perf_counter()
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env={k: v for k, v in env().items() if not k.startswith("AIRFLOW")},
    )
    if done.returncode != 0:
        raise SystemExit(f"trait-lora train failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traits", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--models", nargs="+", default=["tiny", "smollm2"], choices=["tiny", "smollm2"])
    parser.add_argument("--smollm2-traits", type=int, nargs="+", default=[8], help="trait counts for SmolLM2")
    parser.add_argument("--smollm2-max-steps", type=int, default=2)
    parser.add_argument("--smollm2-max-length", type=int, default=128)
    parser.add_argument("--dag", action="store_true", help="also time the whole DAG (tiny model)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-grouped-") as tmp:
        root = Path(tmp)
        for count in sorted(set(args.traits) | set(args.smollm2_traits if "smollm2" in args.models else [])):
            shards = root / f"shards-{count}"
            traits = write_shards(shards, count)
            for model in args.models:
                if model == "smollm2" and (count not in args.smollm2_traits or not SMOLLM2_DIR.is_dir()):
                    continue
                if model == "tiny" and count not in args.traits:
                    continue
                work = root / f"{model}-{count}"
                if model == "tiny":
                    from trait_lora.train.tiny_model import build_tiny_model

                    path, flags = build_tiny_model(shards, root / f"tiny-{count}"), []
                else:
                    path = SMOLLM2_DIR
                    flags = [
                        "--max-steps",
                        str(args.smollm2_max_steps),
                        "--max-length",
                        str(args.smollm2_max_length),
                    ]
                config = {"backend": "local", "local_model": str(path), "eval_fraction": 0.2}
                print(f"{model}, {count} traits ...", file=sys.stderr, flush=True)
                figures = train_both(shards, traits, config, work, flags)
                for mode, f in figures.items():
                    rows.append({"model": model, "traits": count, "mode": mode, **f})
                shutil.rmtree(work, ignore_errors=True)
            if args.dag and count in args.traits:
                for per_process in (1, GROUP_SIZE):
                    wall = dag_time(shards, root, per_process)
                    rows.append(
                        {"model": "tiny", "traits": count, "mode": f"DAG x{per_process}", "wall_s": wall}
                    )
    print_table(rows)
    return 0


def print_table(rows: list[dict[str, Any]]) -> None:
    columns = (
        "model",
        "traits",
        "mode",
        "wall s",
        "vs alone",
        "fixed s/trait",
        "of which in-group",
        "tokens/s",
        "peak GiB",
        "max diff",
    )
    print(" | ".join(columns))
    print(" | ".join("---" for _ in columns))
    alone = {
        (r["model"], r["traits"], r["mode"].startswith("DAG")): r["wall_s"]
        for r in rows
        if r["mode"] in ("alone", "DAG x1")
    }
    for r in rows:
        base = alone.get((r["model"], r["traits"], r["mode"].startswith("DAG")))
        cells = [
            r["model"],
            str(r["traits"]),
            r["mode"],
            f"{r['wall_s']:.1f}",
            f"{r['wall_s'] / base:.2f}x" if base else "-",
            f"{r['fixed_cost_s']:.2f}" if "fixed_cost_s" in r else "-",
            f"{r['in_group_s']:.2f}" if "in_group_s" in r else "-",
            f"{r['tokens_per_s']:.0f}" if "tokens_per_s" in r else "-",
            f"{r['peak_gib']:.2f}" if "peak_gib" in r else "-",
            f"{r['max_abs_diff']:.1e}" if "max_abs_diff" in r else "-",
        ]
        print(" | ".join(cells))
    print()
    for r in rows:
        if r["model"] != "tiny" or r["mode"] != "group8":
            continue
        base, fixed = alone[("tiny", r["traits"], False)], r["fixed_cost_s"]
        verdict = "PASS" if fixed <= GOALS["fixed_cost_s"] else "MISS"
        print(
            f"tiny, {r['traits']} traits: fixed cost per trait in a group {fixed:.2f} s (<= 0.5): {verdict}"
        )
        if r["traits"] == 8:
            ratio = r["wall_s"] / base
            verdict = "PASS" if ratio <= GOALS["ratio_8"] else "MISS"
            print(f"tiny, 8 traits: {ratio:.2f}x the time of one process each (goal <= 0.6x): {verdict}")
        if r["traits"] == 32:
            speedup = base / r["wall_s"]
            verdict = "PASS" if speedup >= GOALS["speedup_32"] else "MISS"
            print(f"tiny, 32 traits: {speedup:.2f}x faster (goal >= 2.5x): {verdict}")


if __name__ == "__main__":
    sys.exit(main())
