"""DAG parse cost: each DAG file against a trivial DAG, in fresh processes, as `airflow dags report` does.

Prints the median wall time of importing Airflow + parsing the file (DagBag on that one file) over
fresh interpreters, the ratio to a trivial DAG measured in the same run (goal <= 2x), and which heavy
modules parsing imported (goal: none of torch, transformers, peft, together, kubernetes, boto3; the
Kubernetes DAG holds ``training_pod.TrainingPod``, which imports the pod operator when its task runs).

Like the DAG processor, each probe first imports the ``airflow.*`` modules the file names in a
top-level import (``[dag_processor] parsing_pre_import_modules``, on by default): the manager does that
once and forks every parse from it, so it counts in "total" (a fresh process: a worker's task try) and
not in "parse" (what each parse costs the DAG processor).

Bytecode is cached as in a deployment (an image's packages are compiled at install; the DAG processor
writes ``__pycache__``): the bench keeps its own cache (``PYTHONPYCACHEPREFIX``), warmed by one
unmeasured parse per file, even where ``PYTHONDONTWRITEBYTECODE`` is set. This sandbox sets it, which
made every parse compile our modules from source (trait_lora_together: 0.181 s instead of 0.134 s)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "peft", "together", "kubernetes", "boto3")
RUNS = int(os.environ.get("BENCH_RUNS", "7"))

PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
from airflow.dag_processing.dagbag import DagBag
from airflow.utils.file import iter_airflow_imports
for name in iter_airflow_imports(sys.argv[1]):  # the DAG processor's manager does this once, before
    __import__(name)                              # it forks each parse (parsing_pre_import_modules)
t1 = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
t2 = time.perf_counter()
assert not bag.import_errors, bag.import_errors
heavy = [m for m in HEAVY if m in sys.modules]
print(json.dumps({"total": t2 - t0, "parse": t2 - t1, "dags": len(bag.dags), "heavy": heavy}))
""".replace("HEAVY", repr(HEAVY))

TRIVIAL = """
from datetime import datetime
from airflow.sdk import dag, task

@dag(dag_id="trivial", schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
def trivial():
    @task
    def hello():
        return 1
    hello()

trivial()
"""


def measure(path: Path, env: dict[str, str]) -> dict[str, float | list[str]]:
    totals, parses, heavy = [], [], []
    for run in range(RUNS + 1):  # run 0 warms the bytecode cache and is not counted
        out = subprocess.run(
            [sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, env=env
        )
        if out.returncode != 0:
            raise SystemExit(f"{path}: parse failed:\n{out.stderr[-2000:]}")
        data = json.loads(out.stdout.strip().splitlines()[-1])
        if run == 0:
            continue
        totals.append(data["total"])
        parses.append(data["parse"])
        heavy = data["heavy"]
    return {"total": statistics.median(totals), "parse": statistics.median(parses), "heavy": heavy}


def main() -> None:
    home = tempfile.mkdtemp(prefix="bench-parse-")
    env = {
        **os.environ,
        "AIRFLOW_HOME": home,
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR",
        "PYTHONPYCACHEPREFIX": str(Path(home) / "pycache"),
    }
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    trivial = Path(home) / "trivial_dag.py"
    trivial.write_text(TRIVIAL)
    base = measure(trivial, env)
    print(f"fresh-process median over {RUNS} runs (import airflow + DagBag of one file), bytecode cached")
    print("total = import airflow + parse; parse = DagBag on the file (what `airflow dags report` shows)")
    print(f"{'file':<28} {'total s':>8} {'parse s':>8} {'x total':>8} {'x parse':>8}  heavy imports")
    print(f"{'trivial_dag.py':<28} {base['total']:8.3f} {base['parse']:8.3f} {1.0:8.2f} {1.0:8.2f}  -")
    for path in sorted((REPO / "dags").glob("*.py")):
        m = measure(path, env)
        total_ratio = m["total"] / base["total"]
        parse_ratio = m["parse"] / base["parse"]
        allowed = {"kubernetes"} if path.name == "trait_lora_kubernetes.py" else set()
        unexpected = set(m["heavy"]) - allowed
        verdict = "PASS" if parse_ratio <= 2.0 and not unexpected else "MISS"
        heavy = ",".join(m["heavy"]) or "-"
        print(
            f"{path.name:<28} {m['total']:8.3f} {m['parse']:8.3f} {total_ratio:8.2f} {parse_ratio:8.2f}"
            f"  {heavy}  {verdict} (goal: parse <= 2x trivial, no heavy import)"
        )


if __name__ == "__main__":
    main()
