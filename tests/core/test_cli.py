"""The `trait-lora` CLI's core commands, run as a user runs them (a subprocess), and the conf `train`
hands its DAG run (in this process, the run replaced: whole runs are in tests/dags)."""

import json
import subprocess
import sys
from pathlib import Path

from tests.support.airflow import SAMPLE_SHARDS, copy_shards

CLI = Path(sys.executable).with_name("trait-lora")


def run(*args):
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=120)


def test_list_shows_every_sample_shard_and_the_ignored_readme():
    done = run("list", "--shards-dir", str(SAMPLE_SHARDS), "--json")
    assert done.returncode == 0
    data = json.loads(done.stdout)
    assert len(data["shards"]) == 8 and all(s["examples"] >= 30 for s in data["shards"])
    wisdom = next(s for s in data["shards"] if s["trait"] == "wisdom_minus")
    assert (wisdom["axis"], wisdom["direction"], len(wisdom["sha256"])) == ("wisdom", -1, 64)
    assert [Path(i["path"]).name for i in data["ignored"]] == ["README.md"]
    assert "ignored (1), never trained" in run("list", "--shards-dir", str(SAMPLE_SHARDS)).stdout


def test_validate_exits_1_with_every_problem_as_path_line_message(tmp_path):
    shards = copy_shards(tmp_path, ["joy_plus"])
    bad = shards / "joy_minus.jsonl"
    bad.write_bytes(b'{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n\xff\n')
    done = run("validate", "--shards-dir", str(shards))
    assert done.returncode == 1
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith(str(bad))]
    assert [ln.split(":")[1] for ln in lines] == ["1", "2", "3"]
    assert run("validate", str(shards / "joy_plus.jsonl")).returncode == 0


def test_plan_says_what_a_run_would_do(tmp_path):
    shards = copy_shards(tmp_path / "s", ["joy_plus", "joy_minus"])
    done = run(
        "plan", "--shards-dir", str(shards), "--output-dir", str(tmp_path / "out"), "joy_plus", "--json"
    )
    assert done.returncode == 0
    [plan] = json.loads(done.stdout)
    assert (plan["trait"], plan["action"], len(plan["suffix"]) <= 40) == ("joy_plus", "train", True)
    unknown = run("plan", "--shards-dir", str(shards), "--output-dir", str(tmp_path / "out"), "nope_plus")
    assert unknown.returncode == 2 and "available: joy_minus, joy_plus" in unknown.stderr
    assert not (tmp_path / "out").exists()  # planning writes nothing


def test_train_hands_the_run_its_traits_force_retrain_and_config(tmp_path, monkeypatch):
    """What `trait-lora train` puts in the DAG run's conf (the run itself is checked in tests/dags)."""
    from trait_lora import cli, embedded

    runs = []
    monkeypatch.setattr(embedded, "run_training", lambda **kwargs: runs.append(kwargs) or 0)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"eval_fraction": 0.2, "batch_size": 8}))
    common = ["--shards-dir", str(tmp_path / "shards"), "--output-dir", str(tmp_path / "out")]
    argv = ["train", "--backend", "local", "--force-retrain", "joy_plus", "calm_minus", *common]
    assert cli.main([*argv, "--config", str(config)]) == 0
    conf = runs[0]["conf"]
    assert (conf["traits"], conf["force_retrain"]) == (["joy_plus", "calm_minus"], True)
    assert conf["dry_run"] is False
    assert (conf["eval_fraction"], conf["batch_size"]) == (0.2, 8)
    assert conf["output_dir"] == str((tmp_path / "out").resolve()) and runs[0]["backend"] == "local"

    assert cli.main(["train", "--backend", "local", "--all", *common]) == 0
    assert (runs[1]["conf"]["traits"], runs[1]["conf"]["force_retrain"]) == ([], False)
    assert cli.main(["train", "--backend", "local", "--all", "joy_plus", *common]) == 2  # one or the other
    assert len(runs) == 2
