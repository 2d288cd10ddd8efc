"""Adapter archives from Together are untrusted: a hostile or broken one is refused, writes nothing
outside the output dir, and never replaces the adapter a trait already has."""

from __future__ import annotations

import os
from pathlib import Path

from tests.provider.helpers import DAG_ID, conf_for, read_json, snapshot, suffix_part
from tests.support.airflow import run_dag

# trait -> (download kind, what the published failure reason must say)
KINDS = {
    "intellect_minus": ("truncated", ("truncated", "broke off")),
    "intellect_plus": ("hostile-traversal", ("'..' component",)),
    "joy_minus": ("hostile-symlink", ("is a link",)),
    "joy_plus": ("hostile-pickle", ("pickled",)),
    "neuroticism_minus": ("wrong-rank", ("rank", "shape")),
    "neuroticism_plus": ("garbage", ("not a .tar.zst",)),
}
ESCAPE_NAMES = ("trait_lora_escaped.txt", "trait_lora_absolute.txt", "trait_lora_through_link.txt")


def test_hostile_and_truncated_archives_are_refused_and_the_old_adapter_survives(
    airflow_db, together_conn, tmp_path
):
    fake = together_conn
    traits = sorted(KINDS)
    conf = conf_for(tmp_path, traits)
    out = Path(conf["output_dir"])

    assert str(run_dag(DAG_ID, conf).state) == "success"
    good = read_json(out / "hypernetwork_data.json")["traits"]
    assert sorted(good) == traits
    installed = snapshot(out / "lora_checkpoints")
    outside_before = {p: h for p, h in snapshot(tmp_path).items() if not p.startswith("out")}
    tmp_escapes_before = {name: os.path.lexists(f"/tmp/{name}") for name in ESCAPE_NAMES}

    for trait, (kind, _) in KINDS.items():
        fake.set_download(suffix_part(trait), kind)
    forced = run_dag(DAG_ID, {**conf, "force_retrain": True})

    assert str(forced.state) == "failed"
    assert fake.creates == 2 * len(traits)  # the new jobs did run; only their archives were refused
    mapping = read_json(out / "hypernetwork_data.json")
    assert sorted(mapping["failed"]) == traits
    for trait, (kind, words) in KINDS.items():
        reason = mapping["failed"][trait]
        assert any(w in reason for w in words), (kind, reason)
    # Every trait still publishes its previous, verified adapter, byte for byte.
    assert mapping["traits"] == good
    assert snapshot(out / "lora_checkpoints") == installed
    hashes = read_json(out / "file_hashes.json")
    assert {t: hashes[t]["adapter_sha256"] for t in traits} == {t: good[t]["adapter_sha256"] for t in traits}

    # Nothing landed outside the output dir, and nothing hostile inside it.
    after = snapshot(tmp_path)
    assert {p: h for p, h in after.items() if not p.startswith("out")} == outside_before
    assert not [p for p, h in after.items() if h.startswith("link ->")]
    assert not [p for p in after if Path(p).name in ESCAPE_NAMES or Path(p).name == "adapter_model.bin"]
    assert not [p for p in after if ".staging-" in p or p.endswith(".part")]
    for name in ESCAPE_NAMES:
        assert not os.path.lexists(tmp_path.parent / name)
        assert os.path.lexists(f"/tmp/{name}") == tmp_escapes_before[name]
