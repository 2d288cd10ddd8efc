"""A `dag.test` run of trait_lora_together with N traits (default 200) against the fake, jobs instant.

Usage: python bench/bench_dag_scale.py [--traits N]   (or BENCH_TRAITS=N; Airflow maps at most 1024)

Prints wall time, per-trait overhead and peak RSS of the run (Airflow in-process, SQLite), then the
same for a rerun where every trait is skipped. Figures only; no asserts. Also, per run:

* metadata rows written: the row count of every table of the SQLite metadata DB, before and after;
* our file writes by kind (ledger, mapping, run summary, metrics, ...): atomic writes, bytes, seconds,
  and the ledger reads (each read parses the whole file), so what grows faster than the traits shows;
* peak RSS of every process: ``dag.test`` runs tasks and triggers inline in the one child process (the
  fake Together server is a thread in it); any process it starts is reported as its children's peak.

Compare runs at two sizes (``--traits 200`` and ``--traits 1000``): a per-trait figure that grows with
N is the quadratic part.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.e2e.live import write_shards  # noqa: E402  (distinct small shards, shared with the e2e)

N = int(os.environ.get("BENCH_TRAITS", "200"))


def bench_env(work: Path, shards: Path, n: int) -> dict[str, str]:
    """The environment of a bench deployment under ``work`` (Airflow home, settings), shared with
    bench_dag_rerun.py."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
        "AIRFLOW_HOME": str(work / "af"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__MAX_MAP_LENGTH": str(max(1024, n)),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR",
        "AIRFLOW__TRAIT_LORA__SHARDS_DIR": str(shards),
        "AIRFLOW__TRAIT_LORA__POLL_SECONDS": "0.01",
        "AIRFLOW__TRAIT_LORA__STAGGER_SECONDS": "0",
        "AIRFLOW__TRAIT_LORA__RETRY_DELAY_SECONDS": "1",
        # dag.test() runs one task at a time; the cap on jobs in flight is the live bench's to measure.
        "AIRFLOW__TRAIT_LORA__MAX_JOBS_IN_FLIGHT": str(max(6, n)),
    }


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    shards, out = work / "shards", work / "out"
    write_shards(shards, N, salt="-bench-scale")
    env = bench_env(work, shards, N)
    subprocess.run(
        [str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
        env=env,
        check=True,
        capture_output=True,
    )
    db = work / "af" / "airflow.db"
    for label in ("first run (all train)", "rerun (all skip)"):
        rows_before = table_rows(db)
        t0 = time.perf_counter()
        done = subprocess.run(
            [sys.executable, __file__, "--child", str(shards), str(out)],
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            raise SystemExit(done.stderr[-3000:])
        child = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"{label}: {N} traits, state {child['state']}, wall {wall:.1f} s "
            f"(dag.test {child['run_s']:.1f} s, {child['run_s'] / N * 1000:.0f} ms/trait), "
            f"creates {child['creates']}, uploads {child['uploads']}, API calls {child['calls']}, "
            f"peak RSS {child['peak_rss_mb']:.0f} MB"
        )
        print(
            f"  processes: the dag.test process peak RSS {child['peak_rss_mb']:.0f} MB (tasks, triggers and "
            f"the fake run in it); its child processes peak {child['children_rss_mb']:.0f} MB"
        )
        rows_after = table_rows(db)
        grown = {t: rows_after[t] - rows_before.get(t, 0) for t in rows_after}
        grown = {t: n for t, n in sorted(grown.items(), key=lambda kv: -kv[1]) if n}
        total = sum(grown.values())
        top = ", ".join(f"{t} {n}" for t, n in list(grown.items())[:8])
        print(f"  metadata rows written: {total} ({total / N:.1f} per trait): {top}")
        for kind, (calls, size, secs) in sorted(child["writes"].items()):
            print(
                f"  writes {kind:<14} {calls:>6} ({calls / N:.2f}/trait), {size / 1e6:>9.2f} MB "
                f"({size / N / 1e3:.1f} kB/trait), {secs:6.2f} s"
            )
        calls, size, secs = child["ledger_reads"]
        print(
            f"  reads  {'ledger':<14} {calls:>6} ({calls / N:.2f}/trait), {size / 1e6:>9.2f} MB "
            f"({size / N / 1e3:.1f} kB/trait), {secs:6.2f} s"
        )
    shutil.rmtree(work, ignore_errors=True)


def table_rows(db: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}


def write_kind(path: Path, out: Path) -> str:
    name = path.name
    if name in ("lora_job_ids.json", "file_hashes.json"):
        return "ledger snapshot"
    if name == "hypernetwork_data.json":
        return "mapping"
    parts = path.relative_to(out).parts if path.is_relative_to(out) else ()
    if parts[:1] and parts[0].startswith(".ledger."):
        return "ledger import"  # the layout staged once, then renamed in as ledger/
    if parts[:1] == ("ledger",):
        return "ledger index" if name == "in_flight.json" or parts[1:2] == ("files",) else "ledger record"
    if parts[:1] == ("runs",):
        return "run summary"
    if parts[:1] == ("metrics",):
        return "metrics"
    return parts[0] if parts else "elsewhere"


def count_io(out: Path) -> tuple[dict[str, list[float]], list[float]]:
    """Count our atomic writes (every file the pipeline writes goes through ``atomic_writer``) and
    the ledger reads (records, indexes, seed-format files), in this process."""
    from trait_lora.core.jobs import ledger
    from trait_lora.core.storage import atomic

    writes: dict[str, list[float]] = {}
    reads = [0, 0, 0.0]
    real_writer = atomic.atomic_writer

    @contextlib.contextmanager
    def writer(path, mode="wb"):
        t0 = time.perf_counter()
        with real_writer(path, mode) as fh:
            yield fh
        entry = writes.setdefault(write_kind(Path(path), out), [0, 0, 0.0])
        entry[0] += 1
        entry[1] += Path(path).stat().st_size
        entry[2] += time.perf_counter() - t0

    def counted(real_read):
        def read(path, *, what):
            t0 = time.perf_counter()
            try:
                return real_read(path, what=what)
            finally:
                reads[0] += 1
                reads[1] += path.stat().st_size if path.exists() else 0
                reads[2] += time.perf_counter() - t0

        return read

    atomic.atomic_writer = writer
    ledger.read_json_object = counted(ledger.read_json_object)
    ledger.read_record = counted(ledger.read_record)
    return writes, reads


def peak_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024


def child(shards: str, out: str) -> None:
    sys.path.insert(0, str(REPO))
    writes, reads = count_io(Path(out))
    from tests.fake_together.server import FakeTogether

    fake = FakeTogether(job_polls=0).start()
    os.environ["AIRFLOW_CONN_TOGETHER_DEFAULT"] = json.dumps(
        {"conn_type": "together", "host": fake.base_url, "password": fake.api_key}
    )
    state_file = Path(out) / ".bench-state.json"
    before = json.loads(state_file.read_text()) if state_file.exists() else {"creates": 0, "uploads": 0}
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(REPO / "dags" / "trait_lora_together.py")).dags["trait_lora_together"]
    t0 = time.perf_counter()
    dr = dag.test(run_conf={"shards_dir": shards, "output_dir": out})
    run_s = time.perf_counter() - t0
    fake.stop()
    state_file.write_text(json.dumps({"creates": fake.creates, "uploads": fake.uploads}))
    print(
        json.dumps(
            {
                "state": str(dr.state),
                "run_s": run_s,
                "creates": fake.creates,
                "uploads": fake.uploads,
                "calls": len(fake.calls),
                "before": before,
                "peak_rss_mb": peak_rss_mb(),
                "children_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                "writes": writes,
                "ledger_reads": reads,
            }
        )
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
    else:
        if len(sys.argv) > 2 and sys.argv[1] == "--traits":
            N = int(sys.argv[2])
        main()
