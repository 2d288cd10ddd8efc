"""The trigger form a person fills in: every field titled and explained, grouped, and safe by pattern."""

from __future__ import annotations

import copy

import pytest
from airflow.sdk.exceptions import ParamValidationError

from tests.support.airflow import get_dag

DAGS = ("trait_lora_together", "trait_lora_local", "trait_lora_kubernetes")
SECTIONS = {"Selection", "Paths", "Training", "Evaluation", "Advanced", "Budget"}


@pytest.mark.parametrize("dag_id", DAGS)
def test_every_field_has_a_title_a_help_with_its_default_and_a_section(dag_id):
    params = get_dag(dag_id).params
    for name in params:
        param = params.get_param(name)
        schema = param.schema
        assert schema.get("title"), f"{dag_id}.{name} has no title"
        assert "Default" in (param.description or ""), f"{dag_id}.{name} help names no default"
        assert schema.get("section") in SECTIONS, f"{dag_id}.{name} is in no section"
    traits = params.get_param("traits").schema
    assert "null" in traits["type"]  # the form does not mark it required: empty = every shard
    assert ("Together model" in (params.get_param("base_model").description or "")) == (
        dag_id == "trait_lora_together"
    )


def test_the_trait_pattern_alone_refuses_paths_when_no_shard_exists_at_parse(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__SHARDS_DIR", str(empty))
    params = get_dag("trait_lora_together").params
    schema = params.get_param("traits").schema
    assert "enum" not in schema["items"]  # nothing to list: only the pattern stands guard
    param = params.get_param("traits")
    for bad in (["../etc_plus"], ["joy/plus"], ["a/../b_plus"]):
        with pytest.raises(ParamValidationError):
            copy.deepcopy(param).resolve(bad)
    for good in (["joy_plus"], [], None):
        assert copy.deepcopy(param).resolve(good) == good
