"""Benchmark the live deployment: orchestration overhead per trait and worker slots used while waiting.

A real Airflow on loopback (PostgreSQL, api-server, scheduler, dag-processor, triggerer; the launcher
of ``make e2e``, tests/e2e/live.py) runs ``trait_lora_together`` against the fake Together server, once
per executor, side by side in one invocation: LocalExecutor, and CeleryExecutor with Redis and two
``airflow celery worker`` processes as two machines sharing only the outputs (each with half the
slots). Every fake job takes exactly T seconds. A run of N traits (N small generated shards
``axis<i>_plus``, the pool large enough for all of them) would ideally take T + one poll interval: all
jobs start together, the triggerer notices the end within one poll. Everything above that is
orchestration: scheduling, task start-up, upload, launch, download, publish.

Figures per N:
* wall: run created -> run ended (the API's ``queued_at``/``end_date``), and the ideal T + poll;
* overhead per trait = (wall - ideal) / N.                Goal <= 1.5 s at N = 32, for each executor;
* worker slots held while Together trains: queued/running task instances of traits whose job has been
  in flight >= 8 s and has not ended (sampled every 0.5 s from the metadata DB). Goal 0 (a deferred
  task holds none; a poke-mode sensor would hold one per job);
* also: peak tasks deferred at once (vs. the executor's slots), peak jobs in flight, launch spread
  (first to last job created), tail (last job ended -> run ended).

Prints PASS/MISS against the goals; never fails on timing. Needs PostgreSQL (installed with apt-get when
missing and root). Run from the repository root:

    .venv/bin/python bench/bench_live_deployment.py [--n 8 32] [--job-seconds 30] [--parallelism 8]
        [--executors local celery]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.e2e.live import (  # noqa: E402  (the repo root must be on sys.path first)
    MID_TRAINING_AFTER,
    LiveDeployment,
    describe,
    log,
    watch_run,
    write_shards,
)

OVERHEAD_GOAL_S = 1.5  # per trait, at the largest N
CELERY_WORKERS = ("machine-a", "machine-b")
SLOTS_GOAL = 0


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def run_once(dep: LiveDeployment, n: int, workdir: Path, args: argparse.Namespace) -> dict:
    shards = workdir / f"shards_{n}"
    write_shards(shards, n, salt=f"-bench-n{n}-{time.time_ns()}")
    out = workdir / f"outputs_{n}"
    run_id = f"bench_n{n}_{int(time.time())}"
    creates_before = dep.fake.state()["creates"]
    cpu_before = dep.cpu_seconds()
    response = dep.trigger({"shards_dir": str(shards), "output_dir": str(out)}, run_id=run_id)
    response.raise_for_status()
    log(f"N={n}: triggered {run_id}")
    last = [0.0]

    def progress(sample):
        if sample.t - last[0] >= 10:
            last[0] = sample.t
            log(describe(sample))

    watch = watch_run(dep, run_id, timeout=args.run_timeout, on_sample=progress)
    cpu_after = dep.cpu_seconds()
    cpu = {name: cpu_after[name] - cpu_before.get(name, 0.0) for name in cpu_after}
    run = watch.api
    wall = (parse_time(run["end_date"]) - parse_time(run["queued_at"])).total_seconds()
    ideal = args.job_seconds + args.poll_seconds
    state = dep.fake.state()
    jobs = state["jobs"][creates_before:]
    ages = sorted(job["age_s"] for job in jobs)  # age now; created = now - age
    spread = (ages[-1] - ages[0]) if ages else float("nan")
    mid = watch.mid_training
    slots = [s.mid_training_slots for s in mid]
    worst = max(mid, key=lambda s: s.mid_training_slots or 0, default=None)
    last_end = min(ages) - args.job_seconds if ages else 0.0  # seconds ago the last job ended
    end_lag = (time.monotonic() - watch.triggered_at) - watch.wall_s
    return {
        "n": n,
        "state": watch.state,
        "new_jobs": len(jobs),
        "wall": wall,
        "ideal": ideal,
        "overhead_per_trait": (wall - ideal) / n,
        "spread": spread,
        "tail": max(0.0, last_end - end_lag),
        "max_deferred": watch.max_deferred,
        "max_in_flight": watch.max_fake_active,
        "mid_samples": len(mid),
        "slots_max": max(slots) if slots else None,
        "slots_mean": sum(slots) / len(slots) if slots else None,
        "jobs_mid_max": max((s.mid_training_jobs for s in mid), default=0),
        "slots_worst": dict(worst.mid_training_by_task) if worst is not None else {},
        "cpu": cpu,
    }


def _held(by_task: dict[str, int]) -> str:
    return ", ".join(f"{key.removeprefix('trait.')} {n}" for key, n in sorted(by_task.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[8, 32], help="traits per run")
    parser.add_argument("--job-seconds", type=float, default=30.0, help="T: every fake job's duration")
    parser.add_argument("--poll-seconds", type=float, default=1.0, help="the triggers' poll interval")
    parser.add_argument(
        "--parallelism", type=int, default=8, help="worker slots (Celery: split over 2 workers)"
    )
    parser.add_argument("--executors", nargs="+", choices=["local", "celery"], default=["local", "celery"])
    parser.add_argument(
        "--tuning",
        nargs="+",
        choices=["tuned", "defaults"],
        default=["tuned"],
        help="tuned: the shipped worker settings (e2e airflow_env.WORKER_TUNING*); defaults: Airflow's",
    )
    parser.add_argument("--pool-slots", type=int, default=0, help="together_api size (0: the largest N)")
    parser.add_argument("--run-timeout", type=float, default=900.0)
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, outputs)")
    args = parser.parse_args()

    pool = args.pool_slots or max(args.n)
    results: list[dict] = []
    startups: dict[str, float] = {}
    started = time.monotonic()
    setups = [(executor, tuning) for tuning in args.tuning for executor in args.executors]
    for executor, tuning in setups:
        setup = executor if tuning == "tuned" else f"{executor}/{tuning}"
        workdir = Path(tempfile.mkdtemp(prefix=f"trait-lora-bench-live-{executor}-{tuning}-"))
        try:
            first_shards = workdir / "shards_default"
            write_shards(first_shards, 1, salt="-default")
            celery = executor == "celery"
            with LiveDeployment(
                workdir,
                job_seconds=args.job_seconds,
                pool_slots=pool,
                parallelism=args.parallelism,
                shards_dir=first_shards,
                output_dir=workdir / "outputs_default",
                poll_seconds=args.poll_seconds,
                extra_env={"AIRFLOW__TRAIT_LORA__MAX_JOBS_IN_FLIGHT": str(pool)},  # the cap never binds here
                celery_workers=CELERY_WORKERS if celery else (),
                worker_concurrency=max(1, args.parallelism // len(CELERY_WORKERS)),
                worker_tuning=tuning == "tuned",
            ) as dep:
                try:
                    for n in args.n:
                        results.append({"executor": setup, **run_once(dep, n, workdir, args)})
                except BaseException:
                    dep.print_log_tails()
                    raise
                startups[setup] = dep.timings.marks.get("deployment start (total)", float("nan"))
        finally:
            if args.keep:
                print(f"work dir kept: {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(
        f"== live deployment: T = {args.job_seconds:g} s per job, poll {args.poll_seconds:g} s, "
        f"{args.parallelism} worker slots (Celery: {len(CELERY_WORKERS)} workers), "
        f"together_api pool {pool} =="
    )
    ups = ", ".join(f"{name} {secs:.1f} s" for name, secs in startups.items())
    print(f"deployment start-up: {ups}; whole benchmark {time.monotonic() - started:.0f} s")
    header = (
        f"{'executor':<15}  {'N':>3}  {'state':<7} {'jobs':>4}  {'wall s':>7}  {'ideal s':>7}  "
        f"{'ovh/trait s':>11}  "
        f"{'spread s':>8}  {'tail s':>6}  {'deferred':>8}  {'in flight':>9}  {'slots mid-training':>18}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        slots = (
            f"max {r['slots_max']} mean {r['slots_mean']:.2f}" if r["slots_max"] is not None else "no sample"
        )
        print(
            f"{r['executor']:<15}  {r['n']:>3}  {r['state']:<7} {r['new_jobs']:>4}  {r['wall']:>7.1f}  "
            f"{r['ideal']:>7.1f}  "
            f"{r['overhead_per_trait']:>11.2f}  {r['spread']:>8.1f}  {r['tail']:>6.1f}  "
            f"{r['max_deferred']:>8}  {r['max_in_flight']:>9}  {slots:>18}"
        )
    print()
    print("CPU seconds used during each run, by process tree (task processes count for the scheduler):")
    for r in results:
        ranked = sorted(r["cpu"].items(), key=lambda item: -item[1])
        parts = ", ".join(f"{name} {secs:.0f}" for name, secs in ranked)
        total = sum(r["cpu"].values())
        print(
            f"  {r['executor']} N={r['n']}: {total:.0f} s in {r['wall']:.0f} s of wall "
            f"({total / r['wall']:.2f} cores busy; "
            f"{os.cpu_count()} cores): {parts}"
        )
    print()
    for executor in startups:
        largest = max((r for r in results if r["executor"] == executor), key=lambda r: r["n"])
        ok_overhead = largest["overhead_per_trait"] <= OVERHEAD_GOAL_S
        print(
            f"{'PASS' if ok_overhead else 'MISS'}  {executor}: orchestration overhead at N={largest['n']}: "
            f"{largest['overhead_per_trait']:.2f} s per trait (goal <= {OVERHEAD_GOAL_S:g} s)"
        )
    for r in results:
        ok = r["slots_max"] is not None and r["slots_max"] <= SLOTS_GOAL
        print(
            f"{'PASS' if ok else 'MISS'}  {r['executor']}: worker slots held by traits mid-training (job in "
            f"flight >= {MID_TRAINING_AFTER:g} s) at N={r['n']}: max {r['slots_max']} "
            f"over {r['mid_samples']} "
            f"samples with up to {r['jobs_mid_max']} jobs mid-training (goal {SLOTS_GOAL})"
            + (f"; at the max: {_held(r['slots_worst'])}" if r["slots_worst"] else "")
        )
    for r in results:
        if r["state"] != "success" or r["new_jobs"] != r["n"]:
            print(
                f"NOTE  {r['executor']} N={r['n']}: run {r['state']} with {r['new_jobs']} new jobs "
                f"(expected {r['n']})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
