"""Benchmark shard hashing and validation against ``sha256sum`` on a large generated chat shard.

Why: every run hashes every shard (the job key) and validates it before upload, so both must keep up
with the disk and stay in bounded memory however large Stage 1's shards get. Goals: ``sha256_file`` at
>= 0.8x the throughput of coreutils ``sha256sum``, ``validate_shard`` (hash + check, one call) at >= 1.0x,
and peak RSS < 100 MB for hashing and for validation (and for validation's child process).

Each measurement runs in a fresh subprocess. A Python child reports its own peak RSS (``VmHWM``, Linux):
``ru_maxrss`` from ``wait4`` or ``RUSAGE_CHILDREN`` is useless here, because Linux carries the parent's
resident set over fork and exec into the child's figure (a parent holding 200 MB makes ``sha256sum``
"peak" at 200 MB). External tools are measured through ``/usr/bin/time -f %M`` when it exists, whose
own footprint is tiny. The file is read once first so every contender reads from the page cache; each
figure is the best of ``--repeat`` runs. Python figures time the call itself (interpreter start-up
excluded); external tools are timed as whole processes. ``openssl dgst -sha256`` is a second reference
because some coreutils builds do not use the CPU's SHA instructions. This prints figures and PASS/MISS
against the goals; it never fails on timing.

Usage: python bench/bench_hash_validate.py [--size-mib 1024] [--repeat 2] [--dir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MB = 1_000_000
HASH_RATIO_GOAL = 0.8
VALIDATE_RATIO_GOAL = 1.0
RSS_GOAL_BYTES = 100 * MB
TIME_BIN = "/usr/bin/time"

WORDS = (
    "the",
    "a",
    "of",
    "to",
    "and",
    "in",
    "that",
    "it",
    "with",
    "as",
    "for",
    "on",
    "was",
    "is",
    "be",
    "this",
    "by",
    "at",
    "from",
    "or",
    "have",
    "an",
    "they",
    "which",
    "one",
    "you",
    "were",
    "all",
    "we",
    "when",
    "there",
    "can",
    "been",
    "has",
    "more",
    "if",
    "will",
    "would",
    "about",
    "some",
    "what",
    "out",
    "so",
    "up",
    "into",
    "them",
    "could",
    "time",
    "only",
    "new",
    "people",
    "may",
    "first",
    "any",
    "now",
    "such",
    "like",
    "over",
    "even",
    "most",
    "made",
    "after",
    "also",
    "many",
    "before",
    "must",
    "through",
    "back",
    "years",
    "where",
    "much",
    "your",
    "way",
    "well",
    "down",
    "should",
    "because",
    "each",
    "just",
    "those",
    "patience",
    "careful",
    "reflect",
    "consider",
    "decision",
    "future",
    "measured",
    "anxious",
    "cheerful",
    "calm",
    "curious",
    "analyse",
)

PY_CHILD = """
import importlib, json, sys, time
mod, fn, path = sys.argv[1], sys.argv[2], sys.argv[3]
func = getattr(importlib.import_module(mod), fn) if fn else None
t0 = time.perf_counter()
result = func(path) if func else None
out = {"seconds": time.perf_counter() - t0, "sha256": result if isinstance(result, str) else ""}
if result is not None and not isinstance(result, str):
    out.update(sha256=result.sha256, ok=result.ok, examples=result.num_examples)
try:
    with open("/proc/self/status") as fh:
        out["rss"] = next(int(l.split()[1]) * 1024 for l in fh if l.startswith("VmHWM:"))
except (OSError, StopIteration):
    import resource
    out["rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # may include the parent's
print(json.dumps(out))
"""


@dataclass
class Result:
    seconds: float
    rss: int | None  # bytes; None when it could not be measured
    sha256: str
    ok: bool = True
    examples: int = 0


def _sentence(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(low, high))).capitalize() + "."


def _record(rng: random.Random) -> bytes:
    messages = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": "You are a helpful assistant."})
    for _ in range(rng.randint(1, 4)):
        messages.append({"role": "user", "content": _sentence(rng, 5, 30)})
        paragraphs = [
            " ".join(_sentence(rng, 6, 25) for _ in range(rng.randint(1, 5)))
            for _ in range(rng.randint(1, 3))
        ]
        messages.append({"role": "assistant", "content": "\n\n".join(paragraphs) + " Caf\u00e9 \u2014 ok."})
    return json.dumps({"messages": messages}, ensure_ascii=False).encode() + b"\n"


def generate(path: Path, size: int, seed: int = 1234) -> int:
    """A valid chat shard of about ``size`` bytes; a pool of records repeats, which hashing cannot tell."""
    rng = random.Random(seed)
    block = b"".join(_record(rng) for _ in range(4000))
    written = 0
    with open(path, "wb") as fh:
        while written < size:
            room = size - written
            chunk = block if room >= len(block) else block[: block.rfind(b"\n", 0, room) + 1]
            if not chunk:
                break
            fh.write(chunk)
            written += len(chunk)
    return written


def _run(argv: list[str]) -> tuple[float, str, str]:
    """Wall seconds, stdout and stderr of one process; exits with its stderr if it fails."""
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])} failed ({proc.returncode}):\n{proc.stderr}")
    return wall, proc.stdout, proc.stderr


def measure_tool(argv: list[str]) -> Result:
    """An external hasher, timed as a whole process; peak RSS through GNU time when it is installed."""
    timed = os.access(TIME_BIN, os.X_OK)
    wall, out, err = _run([TIME_BIN, "-f", "%M", *argv] if timed else argv)
    rss = int(err.strip().splitlines()[-1]) * 1024 if timed else None
    digest = out.split("= ")[-1].strip() if "= " in out else out.split()[0]  # openssl vs coreutils
    return Result(wall, rss, digest)


def measure_python(module: str, func: str, path: Path) -> Result:
    _, out, _ = _run([sys.executable, "-c", PY_CHILD, module, func, str(path)])
    data = json.loads(out)
    return Result(data["seconds"], data["rss"], data["sha256"], data.get("ok", True), data.get("examples", 0))


def child_rss(path: Path) -> int | None:
    """Peak RSS of the child process ``validate_shard`` starts, run alone on the same part of the file."""
    from trait_lora.core.shards import validation

    if not os.access(TIME_BIN, os.X_OK):
        return None
    with open(path, "rb") as fh:
        split = validation._split_point(fh, path.stat().st_size, validation.MAX_LINE_BYTES)
    if split is None:
        return None
    argv = [sys.executable, "-m", "trait_lora.core.shards.validation_child", str(path), str(split), "50"]
    _, _, err = _run([TIME_BIN, "-f", "%M", *argv, str(validation.MAX_LINE_BYTES)])
    return int(err.strip().splitlines()[-1]) * 1024


def best_of(repeat: int, measure: Callable[[], Result]) -> Result:
    """Fastest run's time (least disturbed by neighbours) with the largest peak RSS seen (worst case)."""
    runs = [measure() for _ in range(max(1, repeat))]
    best = min(runs, key=lambda r: r.seconds)
    peaks = [r.rss for r in runs if r.rss is not None]
    best.rss = max(peaks) if peaks else None
    return best


def report(size: int, rows: list[tuple[str, Result | None, float | None, bool]]) -> None:
    ref = rows[0][1]
    assert ref is not None
    ref_rate = size / ref.seconds
    header = f"{'measurement':<30}{'seconds':>8}{'MB/s':>8}{'vs sha256sum':>14}{'peak RSS MB':>13}   goals"
    print(header)
    print("-" * (len(header) + 40))
    for name, res, speed_goal, rss_goal in rows:
        if res is None:
            print(f"{name:<30}   (not installed)")
            continue
        rate = size / res.seconds
        ratio = rate / ref_rate
        goals = []
        if speed_goal is not None:
            goals.append(f"speed >= {speed_goal}x sha256sum: {'PASS' if ratio >= speed_goal else 'MISS'}")
        if rss_goal:
            passed = res.rss is not None and res.rss < RSS_GOAL_BYTES
            goals.append(f"RSS < {RSS_GOAL_BYTES // MB} MB: {'PASS' if passed else 'MISS'}")
        rss_text = f"{res.rss / MB:>13.1f}" if res.rss is not None else f"{'n/a':>13}"
        print(
            f"{name:<30}{res.seconds:>8.2f}{rate / MB:>8.0f}{ratio:>13.2f}x{rss_text}   "
            + ("; ".join(goals) or "(reference)")
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="shard size in MiB (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement; the fastest is kept")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the shard (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the generated shard")
    args = parser.parse_args(argv)
    if shutil.which("sha256sum") is None:
        print("sha256sum not found on PATH; it is the baseline, install coreutils", file=sys.stderr)
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="bench-shard-", dir=args.dir))
    path = workdir / "bench_plus.jsonl"
    try:
        t0 = time.perf_counter()
        size = generate(path, args.size_mib << 20)
        print(f"generated {path} ({size / MB:.0f} MB) in {time.perf_counter() - t0:.1f}s")
        with open(path, "rb") as fh:  # warm the page cache so every contender reads the same way
            while fh.read(8 << 20):
                pass

        base = measure_python("trait_lora.core.shards.validation", "", path)  # interpreter + imports only
        ref = best_of(args.repeat, lambda: measure_tool(["sha256sum", str(path)]))
        ossl = (
            best_of(args.repeat, lambda: measure_tool(["openssl", "dgst", "-sha256", str(path)]))
            if shutil.which("openssl")
            else None
        )
        hashed = best_of(args.repeat, lambda: measure_python("trait_lora.core.hashing", "sha256_file", path))
        valid = best_of(
            args.repeat, lambda: measure_python("trait_lora.core.shards.validation", "validate_shard", path)
        )
        # validate_shard hands the second part of a large shard to a child process; its own peak RSS
        # counts too (it streams like the parent).
        child = child_rss(path)

        digests = {r.sha256 for r in (ref, ossl, hashed, valid) if r is not None}
        if len(digests) != 1:
            print(f"DIGEST MISMATCH: {sorted(digests)}")
            return 1
        if not valid.ok:
            print("validate_shard reported problems on the generated shard; the benchmark is broken")
            return 1

        print(
            f"\nfile: {size / MB:.0f} MB, {valid.examples} examples, sha256 {ref.sha256[:16]}..., "
            f"best of {args.repeat}, python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
        )
        base_rss = f"{base.rss / MB:.1f} MB" if base.rss is not None else "n/a"
        print(f"python interpreter + imports alone: peak RSS {base_rss}")
        print("MB = 10^6 bytes; peak RSS = high-water resident set of the measuring process\n")
        report(
            size,
            [
                ("sha256sum (coreutils)", ref, None, False),
                ("openssl dgst -sha256", ossl, None, False),
                ("keys.sha256_file", hashed, HASH_RATIO_GOAL, True),
                ("validate_shard (hash+check)", valid, VALIDATE_RATIO_GOAL, True),
            ],
        )
        if child is not None:
            passed = child < RSS_GOAL_BYTES
            print(
                f"{'  its child (2nd part)':<30}{'':>8}{'':>8}{'':>14}{child / MB:>13.1f}   "
                f"RSS < {RSS_GOAL_BYTES // MB} MB: {'PASS' if passed else 'MISS'}"
            )
        return 0
    finally:
        if args.keep:
            print(f"kept {path}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
