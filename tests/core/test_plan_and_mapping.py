import json
import time

import pytest

from tests.support.adapters import write_adapter_dir
from tests.support.airflow import copy_shards
from trait_lora.core.adapter import AdapterSpec, install_adapter
from trait_lora.core.config import TrainingConfig
from trait_lora.core.errors import MappingError, TraitNameError
from trait_lora.core.handoff.mapping import MAPPING_FILE, build_mapping, validate_mapping, write_mapping
from trait_lora.core.jobs.ledger import Ledger
from trait_lora.core.jobs.plan import plan_traits

CFG = TrainingConfig()


def install(tmp_path, trait, plan, job_id="ft-1"):
    src = write_adapter_dir(tmp_path / "src" / trait)
    _, info = install_adapter(src, tmp_path / "out", trait, AdapterSpec.from_config(CFG))
    Ledger(tmp_path / "out").record_adapter(
        trait,
        shard_sha256=plan.shard_sha256,
        config_hash=plan.config_hash,
        job_key=plan.job_key,
        adapter_sha256=info.sha256,
        job_id=job_id,
        backend="together",
        base_model=CFG.base_model,
        num_examples=plan.num_examples,
    )


def by_trait(plans):
    return {p.trait: p for p in plans}


def test_plan_train_then_skip_then_retrain_on_change(tmp_path):
    shards = copy_shards(tmp_path / "shards", ["joy_plus", "joy_minus"])
    out = tmp_path / "out"
    first = by_trait(plan_traits(shards, out, CFG))
    assert {t: p.action for t, p in first.items()} == {"joy_plus": "train", "joy_minus": "train"}
    assert first["joy_plus"].reason == "no adapter trained yet"
    install(tmp_path, "joy_plus", first["joy_plus"])
    second = by_trait(plan_traits(shards, out, CFG))
    assert second["joy_plus"].action == "skip" and second["joy_minus"].action == "train"

    # A config change, a shard change and force each bring training back, with the reason.
    assert plan_traits(shards, out, CFG.replace(learning_rate=1e-4), traits=["joy_plus"])[0].reason == (
        "training config changed since the last adapter"
    )
    forced = plan_traits(shards, out, CFG, traits=["joy_plus"], force_retrain=True, run_nonce="run-9")[0]
    assert forced.action == "train" and forced.job_key != second["joy_plus"].job_key
    assert (
        forced.job_key
        == plan_traits(shards, out, CFG, traits=["joy_plus"], force_retrain=True, run_nonce="run-9")[
            0
        ].job_key
    )  # same run, same key: retries adopt
    with (shards / "joy_plus.jsonl").open("a") as fh:
        fh.write(
            json.dumps(
                {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}]}
            )
            + "\n"
        )
    assert (
        plan_traits(shards, out, CFG, traits=["joy_plus"])[0].reason == "shard changed since the last adapter"
    )


def test_plan_resumes_an_in_flight_job_and_retrains_after_a_failed_one(tmp_path):
    shards = copy_shards(tmp_path / "shards", ["joy_plus"])
    out = tmp_path / "out"
    plan = plan_traits(shards, out, CFG)[0]
    Ledger(out).update_job("joy_plus", job_key=plan.job_key, job_id="ft-7", status="running")
    resumed = plan_traits(shards, out, CFG)[0]
    assert (resumed.action, resumed.job_id) == ("resume", "ft-7")
    Ledger(out).update_job("joy_plus", status="error")
    assert plan_traits(shards, out, CFG)[0].action == "train"


def test_plan_reports_invalid_shards_and_refuses_unknown_traits(tmp_path):
    shards = copy_shards(tmp_path / "shards", ["joy_plus"])
    (shards / "bad_minus.jsonl").write_text('{"messages": [{"role": "user", "content": "x"}]}\n')
    plans = by_trait(plan_traits(shards, tmp_path / "out", CFG))
    assert plans["bad_minus"].action == "invalid"
    assert plans["bad_minus"].problems[0].startswith(f"{shards / 'bad_minus.jsonl'}:1:")
    with pytest.raises(TraitNameError, match="available: bad_minus, joy_plus"):
        plan_traits(shards, tmp_path / "out", CFG, traits=["wisdom_plus"])


def test_mapping_keeps_the_last_good_adapter_of_a_failed_trait_and_validates(tmp_path):
    shards = copy_shards(tmp_path / "shards", ["joy_plus", "joy_minus"])
    plans = by_trait(plan_traits(shards, tmp_path / "out", CFG))
    install(tmp_path, "joy_plus", plans["joy_plus"])
    path, data = write_mapping(
        tmp_path / "out", CFG, failed={"joy_plus": "launch: budget exceeded"}, run_id="r2"
    )
    assert path == tmp_path / "out" / MAPPING_FILE
    entry = data["traits"]["joy_plus"]
    assert (entry["axis"], entry["direction"], entry["adapter_path"]) == (
        "joy",
        1,
        "lora_checkpoints/joy_plus",
    )
    assert data["failed"] == {"joy_plus": "launch: budget exceeded"}
    assert data["version"] == 2 and data["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert json.loads(path.read_text()) == data
    # A recorded adapter whose files were removed by hand is never published.
    (tmp_path / "out" / "lora_checkpoints" / "joy_plus" / "adapter_model.safetensors").unlink()
    assert build_mapping(tmp_path / "out", CFG)["traits"] == {}


def test_schema_rejects_a_mapping_stage_3_could_not_use(tmp_path):
    data = build_mapping(tmp_path, CFG)
    data["traits"]["joy_plus"] = {"trait": "joy_plus", "adapter_path": "/etc/passwd"}
    with pytest.raises(MappingError, match="traits/joy_plus"):
        validate_mapping(data)


def test_every_run_of_a_forced_backfill_shares_one_key_and_pays_once(tmp_path):
    from trait_lora.core.jobs.plan import forced_nonce

    shards = copy_shards(tmp_path / "shards", ["joy_plus"])
    conf = {"traits": ["joy_plus"], "force_retrain": True}
    nonces = {forced_nonce(f"backfill__2026-11-2{d}T00:00:00+00:00", "backfill", conf) for d in (1, 2, 3)}
    assert len(nonces) == 1  # three runs of one backfill: one nonce
    assert forced_nonce("manual__1", "manual", conf) == "manual__1"  # other runs: their own id
    assert forced_nonce("b__1", "DagRunType.BACKFILL_JOB", {"other": 1}) != next(iter(nonces))

    nonce = next(iter(nonces))
    first = plan_traits(shards, tmp_path / "out", CFG, force_retrain=True, run_nonce=nonce)[0]
    assert first.action == "train"
    install(tmp_path, "joy_plus", first)
    # The backfill's next run: the forced adapter is already installed under this key, nothing to buy.
    second = plan_traits(shards, tmp_path / "out", CFG, force_retrain=True, run_nonce=nonce)[0]
    assert (second.action, second.job_key) == ("skip", first.job_key)
    assert "already force-retrained" in second.reason
    # A forced run outside the backfill still retrains.
    other = plan_traits(shards, tmp_path / "out", CFG, force_retrain=True, run_nonce="manual__2")[0]
    assert other.action == "train"


def test_planning_many_traits_reads_each_ledger_record_once(tmp_path, monkeypatch):
    """A thousand-trait plan re-reading the ledger per trait parsed O(N^2) bytes (9 s at 1,000
    traits); it reads each trait's records once, whatever the number of traits."""
    from tests.e2e.live import write_shards
    from trait_lora.core.storage.local import LocalStore

    traits = write_shards(tmp_path / "shards", 30)
    out = tmp_path / "out"
    for trait in traits:
        Ledger(out).update_job(trait, job_key="k" * 64, job_id=f"ft-{trait}", status="running")
    reads: list[str] = []
    real_read = LocalStore.read

    def counting_read(self, key):
        reads.append(key)
        return real_read(self, key)

    monkeypatch.setattr(LocalStore, "read", counting_read)
    plans = plan_traits(tmp_path / "shards", out, CFG)
    assert [p.action for p in plans] == ["train"] * len(traits)
    assert sorted(reads) == sorted(f"ledger/jobs/{t}.json" for t in traits), reads


def test_a_rerun_trusts_an_untouched_adapter_and_verifies_a_touched_one_in_full(tmp_path, monkeypatch):
    """Re-hashing every installed adapter made an all-skip rerun of 1,000 traits read gigabytes; an
    adapter untouched since it verified is trusted, and any write to it brings the full check back."""
    from trait_lora.core.adapter import install as install_module

    shards = copy_shards(tmp_path / "shards", ["joy_plus"])
    out = tmp_path / "out"
    install(tmp_path, "joy_plus", plan_traits(shards, out, CFG)[0])
    verified = []
    real = install_module.verify_adapter_dir

    def counting(directory, spec):
        verified.append(directory.name)
        return real(directory, spec)

    monkeypatch.setattr(install_module, "verify_adapter_dir", counting)
    assert plan_traits(shards, out, CFG)[0].action == "skip" and verified == []

    weights = out / "lora_checkpoints" / "joy_plus" / "adapter_model.safetensors"
    data = weights.read_bytes()
    time.sleep(0.02)  # past the kernel's timestamp tick (a few ms), so the rewrite's ctime differs
    weights.write_bytes(data)  # same bytes, rewritten: verified again, still the recorded adapter
    assert plan_traits(shards, out, CFG)[0].action == "skip" and verified == ["joy_plus"]

    time.sleep(0.02)
    with weights.open("r+b") as fh:  # one byte of a tensor flipped in place, size unchanged
        fh.seek(len(data) - 1)
        fh.write(bytes([data[-1] ^ 0xFF]))
    again = plan_traits(shards, out, CFG)[0]
    assert (again.action, again.reason) == ("train", "installed adapter differs from the recorded one")


def test_a_mapping_published_by_someone_else_meanwhile_is_replaced_by_swap_and_reported(
    tmp_path, monkeypatch
):
    """The CLI beside a DAG run: another mapping lands between this publisher's read and its write. The
    swap fails, the publisher reads again, and the digest it reports as replaced is the other one's."""
    from trait_lora.core.handoff.mapping import mapping_sha256, publish_mapping
    from trait_lora.core.storage.local import LocalStore

    shards = copy_shards(tmp_path / "shards", ["joy_plus"])
    out = tmp_path / "out"
    install(tmp_path, "joy_plus", plan_traits(shards, out, CFG)[0])
    _, first, before = publish_mapping(out, CFG, run_id="r1")
    assert before is None
    theirs = {**first, "run_id": "cli", "failed": {"joy_minus": "elsewhere"}, "extra": 1}
    real_replace = LocalStore.replace
    raced: list[bool] = []

    def replace_after_theirs(self, key, data, version):
        if key == MAPPING_FILE and not raced:
            raced.append(True)
            (out / MAPPING_FILE).write_text(json.dumps(theirs))  # the other publisher's write lands
        return real_replace(self, key, data, version)

    monkeypatch.setattr(LocalStore, "replace", replace_after_theirs)
    _, ours, before = publish_mapping(out, CFG, run_id="r2")
    assert raced and before == mapping_sha256(theirs)  # compared with what it really replaced
    assert json.loads((out / MAPPING_FILE).read_text()) == ours and ours["run_id"] == "r2"
