"""How many Together API calls one job costs us, and what the waiting costs in CPU.

Why: Together rate-limits per account, and a triggerer waits on every job in flight on one event loop.
The wait (``TogetherFineTuneTrigger``) must poll the job and little else: goal <= N + 8 API calls for
a job that lasts N poll intervals (one retrieve per interval, events read from the job itself, a
bounded number of extras). Also reported: every call of one whole per-trait cycle
(upload -> launch -> wait -> download, through the real DAG with ``dag.test()``), and the trigger's CPU
time per 1,000 polls (``time.process_time()`` is the whole process, the in-process fake server's
threads included; ``time.thread_time()`` is the event loop's thread alone, i.e. the trigger and the
SDK client).

Everything runs against the fake Together server (``tests/fake_together``) started in this process, on
loopback, with the real ``together`` SDK. Prints figures and PASS/MISS; never fails on them.

Also: the time a duplicate upload takes to resolve to the file Together already holds. Together answers
a known checksum with 409 and no retry hint, which the SDK retries like a 429 (~50 s over 8 retries);
``TogetherHook.upload_file`` must resolve it at once (goal < 2 s), shown beside the SDK's own upload.

And the duplicate-job guard on an account with a history (``--past-jobs N``, default 5,000): before any
create, a launch looks for a job already paid for under its key among the account's jobs. Together's
list has no paging, and its entries need not carry a suffix or output name (the spec promises only id,
status and timestamps): the fake lists them that way. Reported per launch, for a first run, a forced
rerun and a plain rerun of the Together DAG: lists, whole-job reads of past jobs (goal: each past job
read whole at most once ever, so ~0 per launch after the first), and every Together request.

Usage: python bench/bench_together_api.py [--polls 10 50 200] [--cpu-polls 1000] [--no-cycle] [--sdk-409]
       [--past-jobs 5000] [--guard-traits 4] [--only-guard]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# Before anything imports Airflow: a private AIRFLOW_HOME, the repo's dags, fast polls and retries.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="bench-together-airflow-"))
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO / "dags"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")
os.environ.setdefault("AIRFLOW__TRAIT_LORA__POLL_SECONDS", "0.01")
os.environ.setdefault("AIRFLOW__TRAIT_LORA__RETRY_DELAY_SECONDS", "0.5")
# The runs' shards and outputs live in temporary folders: let the runs' conf name them.
os.environ.setdefault("AIRFLOW__TRAIT_LORA__STORAGE_ROOTS", json.dumps([tempfile.gettempdir(), str(REPO)]))
os.environ.pop("TOGETHER_API_KEY", None)
os.environ.pop("TOGETHER_BASE_URL", None)

CALL_GOAL_EXTRA = 8
POLL_INTERVAL = 0.0005


def use_fake(fake) -> None:
    """Point ``together_default`` at the fake, as a deployment would by env."""
    os.environ["AIRFLOW_CONN_TOGETHER_DEFAULT"] = json.dumps(
        {"conn_type": "together", "host": fake.base_url, "password": fake.api_key}
    )


async def run_trigger(job_id: str) -> list[dict]:
    from trait_lora.provider.triggers.together import TogetherFineTuneTrigger

    trigger = TogetherFineTuneTrigger(job_id=job_id, trait="joy_plus", poll_interval=POLL_INTERVAL)
    return [event.payload async for event in trigger.run()]


def calls_for(fake, job_id: str) -> collections.Counter:
    return collections.Counter(f"{m} {p}" for m, p in fake.calls if job_id in p)


def bench_trigger_calls(polls: list[int]) -> None:
    from tests.fake_together.server import FakeTogether

    print(f"Trigger API calls for a job lasting N poll intervals (goal <= N + {CALL_GOAL_EXTRA})")
    print(f"  {'N':>5}  {'calls':>6}  {'goal':>5}  {'result':<6}  {'status':<10}  breakdown")
    for n in polls:
        with FakeTogether(job_polls=n) as fake:
            use_fake(fake)
            job_id = fake.add_job(suffix="joy-plus-0123456789abcdef")
            events = asyncio.run(run_trigger(job_id))
            counts = calls_for(fake, job_id)
            total = sum(counts.values())
            goal = n + CALL_GOAL_EXTRA
            verdict = "PASS" if total <= goal else "MISS"
            status = events[-1]["status"] if events else "none"
            detail = ", ".join(f"{k.replace(job_id, '{id}')}: {v}" for k, v in sorted(counts.items()))
            print(f"  {n:>5}  {total:>6}  {goal:>5}  {verdict:<6}  {status:<10}  {detail}")


def bench_trigger_cpu(polls: int) -> None:
    from tests.fake_together.server import FakeTogether

    with FakeTogether(job_polls=polls) as fake:
        use_fake(fake)
        job_id = fake.add_job(suffix="joy-plus-0123456789abcdef")
        fake.job_polls = 3
        asyncio.run(run_trigger(fake.add_job(suffix="joy-minus-0123456789abcdef")))  # warm imports
        wall0, cpu0, thread0 = time.perf_counter(), time.process_time(), time.thread_time()
        events = asyncio.run(run_trigger(job_id))
        wall, cpu, thread = (
            time.perf_counter() - wall0,
            time.process_time() - cpu0,
            time.thread_time() - thread0,
        )
        done = fake.count("GET", rf"^/v1/fine-tunes/{job_id}$")
    scale = 1000 / max(1, done)
    print(f"\nTrigger CPU for {done} polls (job ended {events[-1]['status']}), per 1,000 polls:")
    print(f"  process_time (trigger + SDK + in-process fake server): {cpu * scale:.3f} s")
    print(f"  thread_time  (event-loop thread: trigger + SDK only):  {thread * scale:.3f} s")
    print(f"  wall, at a {POLL_INTERVAL * 1000:.1f} ms poll interval:                   {wall * scale:.3f} s")


def bench_duplicate_upload(with_sdk: bool) -> None:
    from tests.fake_together.server import FakeTogether
    from trait_lora.provider.hooks.together import TogetherHook

    shard = REPO / "include" / "sample_shards" / "joy_plus.jsonl"
    with FakeTogether() as fake:
        use_fake(fake)
        hook = TogetherHook()
        hook.upload_file(shard)
        posts = fake.count("POST", r"^/v1/files$")
        t0 = time.perf_counter()
        hook.upload_file(shard)
        ours = time.perf_counter() - t0
        ours_posts = fake.count("POST", r"^/v1/files$") - posts
        print("\nDuplicate upload (Together answers 409 with no retry hint), goal < 2 s:")
        verdict = "PASS" if ours < 2.0 else "MISS"
        print(f"  TogetherHook.upload_file: {ours:.2f} s, {ours_posts} POST /v1/files  {verdict}")
        if with_sdk:
            posts = fake.count("POST", r"^/v1/files$")
            t0 = time.perf_counter()
            hook.client.files.upload(file=shard, purpose="fine-tune", check=True)
            sdk = time.perf_counter() - t0
            sdk_posts = fake.count("POST", r"^/v1/files$") - posts
            print(f"  SDK files.upload (8 retries): {sdk:.2f} s, {sdk_posts} POST /v1/files")


def bench_cycle() -> None:
    import shutil

    from tests.fake_together.server import FakeTogether

    migrate_once()
    from tests.support.airflow import run_dag

    work = Path(tempfile.mkdtemp(prefix="bench-together-cycle-"))
    shards = work / "shards"
    shards.mkdir()
    shutil.copy(REPO / "include" / "sample_shards" / "joy_plus.jsonl", shards)
    with FakeTogether(job_polls=3) as fake:
        use_fake(fake)
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            t0 = time.perf_counter()
            dagrun = run_dag(
                "trait_lora_together",
                {"shards_dir": str(shards), "output_dir": str(work / "out"), "traits": ["joy_plus"]},
            )
            wall = time.perf_counter() - t0
        ids = {**dict.fromkeys(fake.jobs, "{job}"), **dict.fromkeys(fake.files, "{file}")}
        counts = collections.Counter()
        for method, path in fake.calls:
            for real, placeholder in ids.items():
                path = path.replace(real, placeholder)
            counts[f"{method} {path}"] += 1
    storage = sum(v for k, v in counts.items() if "/storage/" in k)
    counts = collections.Counter({k: v for k, v in counts.items() if "/storage/" not in k})
    if storage:
        counts["PUT /storage/... (upload bytes)"] = storage
    print(
        f"\nOne full cycle for one trait, job of 3 polls (upload -> launch -> wait -> download), "
        f"run {dagrun.state}, {wall:.1f} s wall through dag.test():"
    )
    print(f"  total API calls: {sum(counts.values())}")
    for key, value in sorted(counts.items()):
        print(f"    {value:>3}  {key}")
    shutil.rmtree(work, ignore_errors=True)


GUARD_TRAITS = ("joy_plus", "joy_minus", "wisdom_plus", "wisdom_minus", "intellect_plus", "intellect_minus")


def migrate_once() -> None:
    home = Path(os.environ["AIRFLOW_HOME"])
    if not (home / ".migrated").exists():
        airflow = Path(sys.executable).with_name("airflow")
        subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True)
        (home / ".migrated").touch()


def bench_guard(past_jobs: int, n_traits: int) -> None:
    """Requests per launch with ``past_jobs`` finished jobs listed without suffix or output name."""
    import contextlib
    import io
    import shutil

    from tests.fake_together.server import FakeTogether

    migrate_once()
    from tests.support.airflow import run_dag

    traits = list(GUARD_TRAITS[:n_traits])
    work = Path(tempfile.mkdtemp(prefix="bench-together-guard-"))
    shards = work / "shards"
    shards.mkdir()
    for trait in traits:
        shutil.copy(REPO / "include" / "sample_shards" / f"{trait}.jsonl", shards)
    conf = {"shards_dir": str(shards), "output_dir": str(work / "out"), "traits": traits}
    print(
        f"\nDuplicate-job guard: {past_jobs:,} past jobs listed without suffix or output name, "
        f"{len(traits)} traits (one launch each per run)"
    )
    print(f"  {'run':<14} {'state':<8} {'lists/launch':>12} {'past reads/launch':>17} {'(in all)':>8} "
          f"{'read twice':>10} {'requests/launch':>15} {'wall s':>7}")  # fmt: skip
    with FakeTogether(job_polls=0) as fake:
        use_fake(fake)
        fake.list_shows_names = False
        past = set(fake.add_past_jobs(past_jobs))
        reads_ever: collections.Counter[str] = collections.Counter()
        for label, extra in (("first run", {}), ("forced rerun", {"force_retrain": True}), ("rerun", {})):
            before = len(fake.calls)
            creates = fake.creates
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                dagrun = run_dag("trait_lora_together", {**conf, **extra})
            wall = time.perf_counter() - t0
            calls = [(m, p) for m, p in fake.calls[before:] if not p.startswith("/storage/")]
            lists = sum(1 for m, p in calls if m == "GET" and p == "/v1/fine-tunes")
            past_reads = [
                p.rsplit("/", 1)[-1] for m, p in calls if m == "GET" and p.rsplit("/", 1)[-1] in past
            ]
            reads_ever.update(past_reads)
            twice = sum(1 for n in reads_ever.values() if n > 1)
            launches = fake.creates - creates or len(traits)
            print(
                f"  {label:<14} {dagrun.state!s:<8} {lists / launches:>12.1f} "
                f"{len(past_reads) / launches:>17.1f} {len(past_reads):>8} {twice:>10} "
                f"{len(calls) / launches:>15.1f} {wall:>7.1f}"
            )
    shutil.rmtree(work, ignore_errors=True)
    print("  launches: the jobs created, else one per trait (a plain rerun launches none).")
    print("  read twice: past jobs read whole more than once so far, over all runs (goal 0).")
    print("  requests/launch: every Together request of the run (upload, launch, wait, download).")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--polls", type=int, nargs="+", default=[10, 50, 200])
    parser.add_argument("--cpu-polls", type=int, default=1000)
    parser.add_argument("--no-cycle", action="store_true", help="skip the whole-DAG cycle (needs a DB)")
    parser.add_argument("--sdk-409", action="store_true", help="also time the SDK's own upload (~50 s)")
    parser.add_argument("--past-jobs", type=int, default=5000, help="account history for the guard (0: skip)")
    parser.add_argument("--guard-traits", type=int, default=4, choices=range(1, len(GUARD_TRAITS) + 1))
    parser.add_argument("--only-guard", action="store_true", help="run only the duplicate-job guard bench")
    args = parser.parse_args()
    if args.only_guard:
        bench_guard(args.past_jobs, args.guard_traits)
        return
    bench_trigger_calls(args.polls)
    bench_trigger_cpu(args.cpu_polls)
    bench_duplicate_upload(args.sdk_409)
    if not args.no_cycle:
        bench_cycle()
        if args.past_jobs:
            bench_guard(args.past_jobs, args.guard_traits)


if __name__ == "__main__":
    main()
