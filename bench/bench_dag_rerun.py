"""The all-skip rerun of trait_lora_together at N traits, without the first run.

Usage: python bench/bench_dag_rerun.py [N]   (default 1000)

``bench_dag_scale.py --traits 1000`` needs a 40-minute first run on a 2-core host before its rerun
can be measured; this builds the state a first run leaves (every adapter installed and recorded
through the core, under the DAG's default settings) in about a minute, then times two all-skip runs
with ``bench_dag_scale``'s child (``dag.test``, fake Together). Figures only. Its metadata DB holds
no earlier run, so it reads slightly faster than a rerun after a real first run.
"""

# ruff: noqa: E402
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
from bench_dag_scale import bench_env

from tests.e2e.live import write_shards
from tests.support.adapters import write_adapter_dir

work = Path(tempfile.mkdtemp(prefix="synth-rerun-"))
shards, out = work / "shards", work / "out"
write_shards(shards, N, salt="-bench-scale")
env = bench_env(work, shards, N)
os.environ.update(env)
subprocess.run(
    [str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
    env=env,
    check=True,
    capture_output=True,
)
from airflow.dag_processing.dagbag import DagBag

from trait_lora.core.adapter import AdapterSpec, install_adapter
from trait_lora.core.config import from_mapping
from trait_lora.core.jobs.ledger import Ledger
from trait_lora.core.jobs.plan import plan_traits
from trait_lora.provider.params import config_values

dag = DagBag(dag_folder=str(REPO / "dags" / "trait_lora_together.py")).dags["trait_lora_together"]
params = {k: dag.params[k] for k in dag.params}
cfg = from_mapping(config_values(params, "together"), source="DAG params")
t0 = time.perf_counter()
src = write_adapter_dir(work / "src")
for p in plan_traits(shards, out, cfg):
    _, info = install_adapter(src, out, p.trait, AdapterSpec.from_config(cfg))
    Ledger(out).record_planned_adapter(
        p.to_dict(),
        adapter_sha256=info.sha256,
        job_id=f"ft-{p.trait}",
        backend="together",
        base_model=cfg.together_model,
    )
print(f"state built for {N} traits in {time.perf_counter() - t0:.1f} s", flush=True)
for label in ("rerun 1", "rerun 2"):
    t0 = time.perf_counter()
    d = subprocess.run(
        [sys.executable, str(REPO / "bench/bench_dag_scale.py"), "--child", str(shards), str(out)],
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if d.returncode:
        print(d.stderr[-3000:])
        break
    c = json.loads(d.stdout.strip().splitlines()[-1])
    print(
        f"{label}: {N} traits, state {c['state']}, wall {wall:.1f} s (dag.test {c['run_s']:.1f} s), "
        f"creates {c['creates']}, uploads {c['uploads']}, calls {c['calls']}, "
        f"peak RSS {c['peak_rss_mb']:.0f} MB",
        flush=True,
    )
summary = json.loads((out / "run_summary.json").read_text())
print(
    "actions",
    {a: sum(r["action"] == a for r in summary["traits"]) for a in {r["action"] for r in summary["traits"]}},
)
shutil.rmtree(work, ignore_errors=True)
