"""A whole `trait-lora train --backend together` run of N traits (default 40) with shards and outputs
in a local folder, then in a bucket on an S3 API (moto on loopback), wall time side by side.

Usage: python bench/bench_s3_dag.py [N]

What a user waits for: the embedded Airflow (`dag.test`, one task at a time) against the fake
Together server with instant jobs, so the figure is orchestration: Airflow's task overhead plus our
storage. Each run gets a fresh Airflow home (its DB migration, ~15-20 s, is in both figures) and is
followed by a rerun with nothing changed. The issue-21 goal: S3 at most 1.5x the local run. Figures
only. moto serves from this process on the same cores, so the S3 run also pays the server's CPU.
"""

# ruff: noqa: E402
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
N = int(sys.argv[1]) if len(sys.argv) > 1 else 40

from moto.server import ThreadedMotoServer

from tests.e2e.shards import write_shards
from tests.fake_together.server import FakeTogether
from tests.support.airflow import train_together_argv
from tests.support.s3 import S3Server


def train(work: Path, shards: str, out: str, env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        train_together_argv(work, shards, out),
        capture_output=True,
        text=True,
        env=env,
        cwd=work,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return wall


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-s3-dag-"))
    write_shards(root / "shards", N, salt="-bench-s3-dag")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    s3 = S3Server(f"http://{host}:{port}")
    client = s3.client()
    client.create_bucket(Bucket="bench")
    for path in sorted((root / "shards").iterdir()):
        client.put_object(Bucket="bench", Key=f"shards/{path.name}", Body=path.read_bytes())
    figures = {}
    with FakeTogether() as fake:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env.update(
            {
                "AIRFLOW_CONN_TOGETHER_DEFAULT": json.dumps(
                    {"conn_type": "together", "host": fake.base_url, "password": fake.api_key}
                ),
                "AIRFLOW_CONN_AWS_DEFAULT": s3.connection_json(),
                "AIRFLOW__CORE__MAX_MAP_LENGTH": str(max(1024, N)),
                "AIRFLOW__TRAIT_LORA__POLL_SECONDS": "0.01",
                "AIRFLOW__TRAIT_LORA__STAGGER_SECONDS": "0",
                "AIRFLOW__TRAIT_LORA__RETRY_DELAY_SECONDS": "1",
                "AIRFLOW__TRAIT_LORA__MAX_JOBS_IN_FLIGHT": str(max(6, N)),
            }
        )
        for name, shards, out in (
            ("local", str(root / "shards"), str(root / "out")),
            ("s3", "s3://bench/shards", "s3://bench/out"),
        ):
            work = root / name
            work.mkdir()
            figures[name] = (train(work, shards, out, env), train(work, shards, out, env))
    server.stop()
    print(f"{N} traits, trait-lora train --backend together (embedded dag.test, fake Together)")
    print(f"{'':<10}{'first run s':>14}{'rerun s':>10}")
    for name, (first, rerun) in figures.items():
        print(f"{name:<10}{first:>14.1f}{rerun:>10.1f}")
    (lf, lr), (sf, sr) = figures["local"], figures["s3"]
    print(f"{'s3/local':<10}{sf / lf:>14.2f}{sr / lr:>10.2f}   (goal: <= 1.5)")


if __name__ == "__main__":
    main()
