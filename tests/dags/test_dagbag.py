import pytest

from tests.support.airflow import REPO, get_dag


def test_dagbag_has_no_import_errors_and_the_expected_dags():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    assert {"trait_lora_together", "trait_lora_local", "hypernetwork_intake"} <= set(bag.dag_ids)


def test_together_dag_shape_schedule_and_form():
    dag = get_dag("trait_lora_together")
    assert {"discover", "trait.upload", "trait.launch", "trait.wait", "trait.download"} <= set(dag.task_ids)
    assert {"publish_mapping", "check"} <= set(dag.task_ids)
    assert dag.catchup is False and dag.max_active_runs == 1
    assert dag.timetable.expression == "0 3 * * 1"  # weekly by default
    params = dag.params
    traits = params.get_param("traits").schema
    assert traits["items"]["enum"][:2] == ["intellect_minus", "intellect_plus"]
    assert params["learning_rate"] == 2e-4 and params["lora_r"] == 4 and params["lora_alpha"] == 16
    # launch paces submissions in the pool and bounds jobs in flight by its cap; wait is the sensor.
    launch, wait = dag.get_task("trait.launch"), dag.get_task("trait.wait")
    assert launch.pool == "together_api"
    # The cap is read when launch runs ([trait_lora] max_jobs_in_flight, 6 by default), not at parse.
    assert launch.max_jobs_in_flight is None and launch.stagger_seconds is None
    assert wait.pool != "together_api" and wait.deferrable is True and wait.cancel_on_kill is True
    assert "{{ task.launch_result.trait" in wait.map_index_template


@pytest.mark.parametrize(
    "conf",
    [
        {"traits": ["nonexistent_plus"]},
        {"traits": ["../etc_plus"]},
        {"traits": ["joy/plus"]},
        {"traits": "joy_plus"},
        {"lora_r": "four"},
        {"learning_rate": 3},
        {"force_retrain": "yes"},
    ],
)
def test_bad_conf_is_refused_before_anything_runs(airflow_db, tmp_path, conf):
    from airflow.sdk.exceptions import ParamValidationError

    dag = get_dag("trait_lora_together")
    with pytest.raises(ParamValidationError):
        dag.test(run_conf={**conf, "output_dir": str(tmp_path / "out")})
    assert not (tmp_path / "out").exists()


# What a DAG file must not import while it is parsed (the DAG processor, and the worker of every task
# of the DAG, parse it): the training stack, the Together SDK, the object-store and Kubernetes clients.
HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "together", "boto3", "botocore")
HEAVY += ("kubernetes", "kubernetes_asyncio", "huggingface_hub")
PARSE_PROBE = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
print(json.dumps({
    "errors": {k: str(v)[-500:] for k, v in bag.import_errors.items()},
    "dags": sorted(bag.dag_ids),
    "heavy": sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY)),
    "providers": sorted(m for m in sys.modules if m.startswith("airflow.providers.cncf.kubernetes.")
                        and not m.endswith(("get_provider_info", "exceptions"))),
}))
""".replace("HEAVY", repr(HEAVY))


@pytest.mark.parametrize("dag_file", sorted(p.name for p in (REPO / "dags").glob("*.py")))
def test_parsing_a_dag_file_imports_nothing_heavy(dag_file, tmp_path):
    """A fresh interpreter, as a worker's task process: parsing the file imports none of HEAVY, and the
    Kubernetes DAG none of the pod operator's modules (its pod operator is built when its task runs)."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
    done = subprocess.run(
        [sys.executable, "-c", PARSE_PROBE, str(REPO / "dags" / dag_file)],
        capture_output=True,
        text=True,
        env={**env, "AIRFLOW_HOME": str(tmp_path)},
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["errors"] == {} and found["dags"], found
    assert (found["heavy"], found["providers"]) == ([], []), found
