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
