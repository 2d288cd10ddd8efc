"""A `dag.test` run of trait_lora_together with N traits (default 200) against the fake, jobs instant.

Usage: python bench/bench_dag_scale.py [--traits N]   (or BENCH_TRAITS=N; Airflow maps at most 1024)

Prints wall time, per-trait overhead and peak RSS of the run (Airflow in-process, SQLite), then the
same for a rerun where every trait is skipped. Figures only; no asserts.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.e2e.live import write_shards  # noqa: E402  (distinct small shards, shared with the e2e)

N = int(os.environ.get("BENCH_TRAITS", "200"))


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    shards, out = work / "shards", work / "out"
    write_shards(shards, N, salt="-bench-scale")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
        "AIRFLOW_HOME": str(work / "af"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__MAX_MAP_LENGTH": str(max(1024, N)),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR",
        "AIRFLOW__TRAIT_LORA__SHARDS_DIR": str(shards),
        "AIRFLOW__TRAIT_LORA__POLL_SECONDS": "0.01",
        "AIRFLOW__TRAIT_LORA__STAGGER_SECONDS": "0",
        "AIRFLOW__TRAIT_LORA__RETRY_DELAY_SECONDS": "1",
        # dag.test() runs one task at a time; the cap on jobs in flight is the live bench's to measure.
        "AIRFLOW__TRAIT_LORA__MAX_JOBS_IN_FLIGHT": str(max(6, N)),
    }
    subprocess.run(
        [str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
        env=env,
        check=True,
        capture_output=True,
    )
    for label in ("first run (all train)", "rerun (all skip)"):
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
    shutil.rmtree(work, ignore_errors=True)


def child(shards: str, out: str) -> None:
    sys.path.insert(0, str(REPO))
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
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
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
