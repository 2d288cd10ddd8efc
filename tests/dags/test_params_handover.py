"""The form's params live on the DAG once, not copied into every task, and a run sees the same params.

Airflow copies a DAG's params into each operator it builds (once per ``__init__`` level); the training
DAGs build their tasks inside ``params_handed_over_once(dag)`` to skip that, which halves their parse time.
"""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from tests.support.airflow import get_dag

DAGS = ("trait_lora_together", "trait_lora_local", "trait_lora_kubernetes")


@pytest.mark.parametrize("dag_id", DAGS)
def test_the_serialized_dag_stores_the_form_once_and_no_task_a_copy(dag_id):
    from airflow.serialization.serialized_objects import DagSerialization

    dag = get_dag(dag_id)
    assert {"traits", "lora_r", "learning_rate", "output_dir"} <= set(dag.params)
    assert all(not task.params for task in dag.tasks), [t.task_id for t in dag.tasks if t.params]

    stored = DagSerialization.to_dict(dag)["dag"]
    assert [name for name, _ in stored["params"]] == list(dag.params)
    assert all("params" not in task["__var"] for task in stored["tasks"])
    back = DagSerialization.from_dict(json.loads(json.dumps(DagSerialization.to_dict(dag))))
    assert back.params.get_param("lora_r").schema == dag.params.get_param("lora_r").schema
    assert back.params["lora_r"] == 4


def test_a_task_sees_the_dags_params_its_own_and_the_conf():
    """What ``params_handed_over_once`` must not change: a running task's params (``process_params``,
    as the task runner builds them) are the DAG's, then the task's own ``params=``, then the run's
    conf, and a bad conf is refused. Whole runs of the real DAGs with conf go through the same path in
    tests/provider and tests/local."""
    from airflow.sdk import DAG, Param, task
    from airflow.sdk.definitions.param import process_params
    from airflow.sdk.exceptions import ParamValidationError

    from trait_lora.provider.deployment import params_handed_over_once
    from trait_lora.provider.params import form_field

    with (
        DAG(
            dag_id="params_handover_probe",
            schedule=None,
            start_date=datetime(2026, 1, 1),
            params={
                "lora_r": form_field(4, type="integer", minimum=1),
                "note": form_field("dag", type="string"),
            },
        ) as built,
        params_handed_over_once(built),
    ):

        @task(params={"note": Param("task", type="string"), "own": Param(7, type="integer")})
        def show(params=None):
            return params

        show()

    assert set(built.params) == {"lora_r", "note"}  # put back untouched
    show = built.get_task("show")
    assert set(show.params) == {"note", "own"}  # the task's own params only

    def run_params(conf):
        return process_params(built, show, conf, suppress_exception=False)

    # (a conf overwrites the DAG's Param values in place, Airflow's way: a task runs once per process)
    assert run_params(None) == {"lora_r": 4, "note": "task", "own": 7}
    assert run_params({"lora_r": 8}) == {"lora_r": 8, "note": "task", "own": 7}
    with pytest.raises(ParamValidationError):
        run_params({"lora_r": 0})


def test_handing_over_something_else_than_a_dag_says_what_it_takes():
    from trait_lora.provider.deployment import params_handed_over_once

    expected = r"with DAG\(\.\.\.\) as dag, params_handed_over_once\(dag\)"
    with pytest.raises(TypeError, match=expected), params_handed_over_once("trait_lora_together"):
        pass
