"""OpenLineage pieces a run cannot show here: the training pod's datasets (no cluster), the dataset
names a lineage reader joins on, and that nothing is collected while OpenLineage is not configured
(the suite's own state). The events of whole runs are checked in tests/dags/test_local_dag.py
(local) and test_together_on_s3.py (Together, object storage)."""

from __future__ import annotations

from trait_lora.provider.pod_operator import TrainingPodOperator
from trait_lora.provider.tracking import lineage


def test_dataset_names_follow_the_openlineage_spec(tmp_path):
    shard = tmp_path / "shards" / "joy_plus.jsonl"
    assert lineage.dataset_id(shard) == ("file", str(shard.resolve()))
    # the connection id is how a worker opens the bucket, not part of the data's name
    assert lineage.dataset_id("s3://team_s3@bucket/stage2/hypernetwork_data.json") == (
        "s3://bucket",
        "stage2/hypernetwork_data.json",
    )
    assert lineage.dataset_uri("s3://team_s3@bucket/a/b") == "s3://bucket/a/b"
    assert lineage.together_id("https://api.together.xyz/v1/", "fine-tunes", "ft-1") == (
        "https://api.together.xyz",
        "fine-tunes/ft-1",
    )


def test_the_training_pod_names_the_shard_it_read_and_the_staging_it_wrote():
    pod = TrainingPodOperator(
        task_id="train_pod",
        name="trait-lora-joy-plus",
        arguments=[
            "--shard",
            "s3://team-bucket/shards/joy_plus.jsonl",
            "--out",
            "s3://team-bucket/out/.staging-train/joy_plus-1",
        ],
        labels={"app": "trait-lora", "trait": "joy-plus"},
    )
    found = pod.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in found.inputs] == [("s3://team-bucket", "shards/joy_plus.jsonl")]
    assert [(d.namespace, d.name) for d in found.outputs] == [
        ("s3://team-bucket", "out/.staging-train/joy_plus-1")
    ]
    facet = found.run_facets[lineage.FACET_NAME]
    assert (facet.trait, facet.backend) == ("joy_plus", "kubernetes")


def test_without_an_openlineage_transport_nothing_is_collected(tmp_path):
    from airflow.sdk.lineage import get_hook_lineage_collector

    assert not lineage.enabled()  # the suite configures no transport: the provider disables itself
    ti = type("TI", (), {"dag_id": "d", "task_id": "t", "run_id": "r", "map_index": -1})()
    lineage.report({"ti": ti}, inputs=[tmp_path / "a"], outputs=[tmp_path / "b"], facet={"trait": "x"})
    assert lineage.trait_run_facets(ti, None) == {}
    assert not get_hook_lineage_collector().collected_assets.inputs
