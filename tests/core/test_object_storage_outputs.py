"""Shards, adapters, quarantine and the mapping on S3 (moto on the wire): the same plan and the same
guarantees as in a folder, without a rename anywhere.

Adapters go to content-addressed folders written once; the ledger and the mapping point at them, so a
reader never meets half an adapter; the mapping names each adapter by its full URL.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator

import pytest

from tests.support.adapters import adapter_files, write_adapter_dir
from tests.support.airflow import copy_shards
from trait_lora.core.adapter import AdapterSpec
from trait_lora.core.adapter.content import content_folder, install_adapter_to_store
from trait_lora.core.adapter.quarantine import quarantine_archive
from trait_lora.core.config import TrainingConfig
from trait_lora.core.errors import AdapterError, TraitNameError
from trait_lora.core.handoff.mapping import MAPPING_FILE, publish_mapping
from trait_lora.core.jobs.ledger import Ledger
from trait_lora.core.jobs.plan import plan_traits
from trait_lora.core.shards.remote import shard_file
from trait_lora.core.storage import opener
from trait_lora.core.storage.location import Location
from trait_lora.core.storage.objects import S3Store

CFG = TrainingConfig()
SPEC = AdapterSpec.from_config(CFG)
TRAITS = ["joy_plus", "joy_minus", "wisdom_plus"]


@pytest.fixture
def s3(s3_server, s3_bucket) -> Iterator[str]:
    """s3:// URLs open on the test server (as the provider's opener does with a connection)."""

    def open_s3(loc: Location) -> S3Store:
        return S3Store(s3_server.client(), loc.bucket, loc.prefix, location=loc.url)

    before = dict(opener._OPENERS)
    opener.register_opener("s3", open_s3)
    try:
        yield f"s3://{s3_bucket}"
    finally:
        opener._OPENERS.clear()
        opener._OPENERS.update(before)


def upload_shards(tmp_path, root: str, traits: list[str], extra: dict[str, bytes] | None = None) -> str:
    store = opener.open_location(f"{root}/shards")
    for path in sorted(copy_shards(tmp_path / "src-shards", traits).iterdir()):
        store.put(path.name, path.read_bytes())
    for key, data in (extra or {}).items():
        store.put(key, data)
    return f"{root}/shards"


def install_and_record(store, trait: str, plan, tmp_path, **kw) -> str:
    src = write_adapter_dir(tmp_path / "src" / trait, **kw)
    folder, info = install_adapter_to_store(src, store, trait, SPEC)
    Ledger(store).record_planned_adapter(
        plan.to_dict(),
        adapter_sha256=info.sha256,
        job_id="ft-1",
        backend="together",
        base_model=CFG.base_model,
        adapter_path=folder,
    )
    return folder


def test_a_plan_reads_shards_from_the_bucket_and_names_them_by_url(s3, tmp_path):
    bad = b'{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n'
    shards = upload_shards(
        tmp_path, s3, TRAITS, {"broken_minus.jsonl": bad, "notes.txt": b"x", "nested/deep_plus.jsonl": b"{}"}
    )
    plans = {p.trait: p for p in plan_traits(shards, f"{s3}/out", CFG)}
    assert sorted(plans) == sorted([*TRAITS, "broken_minus"])  # not the nested one, not notes.txt
    joy = plans["joy_plus"]
    assert joy.action == "train" and joy.shard_location == shards and joy.shard_key == "joy_plus.jsonl"
    # another worker copies the object again; the bytes are the ones planned
    copy = shard_file(joy.to_dict())
    assert copy.read_bytes() == opener.open_location(shards).read("joy_plus.jsonl").data
    broken = plans["broken_minus"]
    assert broken.action == "invalid"
    assert any(f"{shards}/broken_minus.jsonl" in line for line in broken.problems), broken.problems
    assert not any(str(copy.parent) in line for line in broken.problems)
    with pytest.raises(
        TraitNameError, match=rf"calm_plus in {s3}/shards; available: broken_minus, joy_minus"
    ):
        plan_traits(shards, f"{s3}/out", CFG, traits=["calm_plus"])


def test_adapters_install_at_content_addressed_keys_and_the_mapping_names_their_urls(s3, tmp_path):
    shards = upload_shards(tmp_path, s3, TRAITS)
    out = opener.open_location(f"{s3}/team/out")
    plans = {p.trait: p for p in plan_traits(shards, out.location, CFG)}
    folders = {t: install_and_record(out, t, plans[t], tmp_path) for t in ("joy_plus", "wisdom_plus")}
    for trait, folder in folders.items():
        assert folder.startswith(f"lora_checkpoints/{trait}/") and len(folder.rsplit("/", 1)[1]) == 64
        assert sorted(k for k in out.list(folder)) == [
            f"{folder}/adapter_config.json",
            f"{folder}/adapter_model.safetensors",
        ]

    url, mapping, before = publish_mapping(out, CFG, run_id="r1")
    assert before is None and url == f"{s3}/team/out/{MAPPING_FILE}"
    assert sorted(mapping["traits"]) == ["joy_plus", "wisdom_plus"]
    entry = mapping["traits"]["joy_plus"]
    assert entry["adapter_path"] == folders["joy_plus"]
    assert entry["adapter_url"] == f"{s3}/team/out/{folders['joy_plus']}"
    assert out.read(f"{entry['adapter_path']}/adapter_model.safetensors") is not None

    # the next plan skips what is installed, from one listing, and trains the rest
    again = {p.trait: p for p in plan_traits(shards, out.location, CFG)}
    assert {t: p.action for t, p in again.items()} == {
        "joy_plus": "skip",
        "wisdom_plus": "skip",
        "joy_minus": "train",
    }
    # weights removed by hand: never published, and the trait trains again
    out.delete(f"{folders['wisdom_plus']}/adapter_model.safetensors")
    _, mapping, _ = publish_mapping(out, CFG, run_id="r2")
    assert sorted(mapping["traits"]) == ["joy_plus"]
    assert (
        next(p for p in plan_traits(shards, out.location, CFG) if p.trait == "wisdom_plus").action == "train"
    )


def test_a_refused_adapter_writes_nothing_and_a_rewrite_of_other_bytes_is_refused(s3, tmp_path):
    out = opener.open_location(f"{s3}/out")
    wrong_rank = write_adapter_dir(tmp_path / "r8", r=8)
    with pytest.raises(AdapterError, match="r8"):
        install_adapter_to_store(wrong_rank, out, "joy_plus", SPEC)
    assert out.list("") == []
    good = write_adapter_dir(tmp_path / "good")
    folder, info = install_adapter_to_store(good, out, "joy_plus", SPEC)
    assert install_adapter_to_store(good, out, "joy_plus", SPEC) == (folder, info)  # a retry: same keys
    assert folder == content_folder("joy_plus", info.sha256)
    out.delete(f"{folder}/adapter_config.json")
    out.put(f"{folder}/adapter_config.json", b'{"r": "someone else"}')
    with pytest.raises(AdapterError, match=r"holds other bytes than this adapter's"):
        install_adapter_to_store(good, out, "joy_plus", SPEC)


def test_a_refused_archive_is_kept_in_quarantine_on_the_bucket(s3, tmp_path):
    out = opener.open_location(f"{s3}/out")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in adapter_files(r=8).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    part = tmp_path / "joy_plus-ft-9.part"
    part.write_bytes(buf.getvalue())
    with pytest.raises(AdapterError) as refused:
        install_adapter_to_store(part, out, "joy_plus", SPEC)
    kept = quarantine_archive(out, "joy_plus", "ft-9", part, str(refused.value))
    assert kept == f"{s3}/out/quarantine/joy_plus/ft-9"
    assert out.read("quarantine/joy_plus/ft-9/adapter-archive").data == buf.getvalue()
    reason = out.read("quarantine/joy_plus/ft-9/reason.txt").data.decode()
    assert "trait-lora download joy_plus --job-id ft-9" in reason and str(refused.value) in reason
    assert not part.exists()
    assert not [k for k in out.list("") if k.startswith("lora_checkpoints/")]


def test_the_dashboard_report_reads_the_bucket(s3, tmp_path):
    from trait_lora.core.handoff import runs
    from trait_lora.core.handoff.report import run_view, traits_view
    from trait_lora.core.handoff.summary import build_summary, write_summary
    from trait_lora.core.storage.store import encode_json

    shards = upload_shards(tmp_path, s3, TRAITS)
    out = opener.open_location(f"s3://team_s3@{s3.removeprefix('s3://')}/out")
    plans = {p.trait: p for p in plan_traits(shards, out.location, CFG)}
    install_and_record(out, "joy_plus", plans["joy_plus"], tmp_path)
    out.put(
        "metrics/joy_plus.json", encode_json({"steps": [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]})
    )
    runs.record_failure(out, "r1", "wisdom_plus", "launch", "launch: budget exceeded")
    runs.write_run_plan(out, "r1", {"plans": [p.to_dict() for p in plans.values()]})
    summary = build_summary(
        run_id="r1",
        backend="together",
        plans=[p.to_dict() for p in plans.values()],
        results={"joy_plus": {"trait": "joy_plus", "action": "trained", "job_id": "ft-1"}},
        failures=runs.read_failures(out, "r1"),
        dry_run=False,
    )
    paths = write_summary(out, summary)
    assert paths["loss_plot"] == f"{s3}/out/runs/r1/loss_curves.png"  # no connection id in records
    assert out.read("runs/r1/loss_curves.png").data[:4] == b"\x89PNG"
    publish_mapping(out, CFG, failed=summary["failed"], run_id="r1")

    view = traits_view(out.location)
    assert view["output_dir"] == f"{s3}/out"  # shown without the connection id
    rows = {r["trait"]: r for r in view["traits"]}
    assert rows["joy_plus"]["state"] == "trained" and rows["joy_plus"]["curve"] == [[1, 2.0], [2, 1.5]]
    assert rows["wisdom_plus"]["state"] == "failed" and "budget exceeded" in rows["wisdom_plus"]["reason"]
    assert sorted(view["mapping"]["traits"]) == ["joy_plus"]
    run = run_view(out.location, "r1")
    assert run["state"] == "finished" and run["mapping"]["run_id"] == "r1"
    assert {p["trait"] for p in run["planned"]} == set(TRAITS)
    assert run["curves"] == {"joy_plus": [[1, 2.0], [2, 1.5]]}


def test_stage3_intake_reads_the_bucket_and_publishes_the_dataset_behind_a_pointer(s3, tmp_path):
    from trait_lora.core.errors import IntakeError
    from trait_lora.core.handoff.intake_objects import POINTER, build_intake_at

    shards = upload_shards(tmp_path, s3, TRAITS)
    out = opener.open_location(f"{s3}/out")
    plans = {p.trait: p for p in plan_traits(shards, out.location, CFG)}
    for seed, trait in enumerate(("joy_plus", "joy_minus")):
        install_and_record(out, trait, plans[trait], tmp_path / str(seed), seed=seed)
    url, mapping, _ = publish_mapping(out, CFG, run_id="r1")

    result = build_intake_at(url)
    assert result["traits"] == ["joy_minus", "joy_plus"] and result["mapping_path"] == url
    folder = f"hypernetwork_dataset/{result['mapping_sha256']}"
    assert result["dataset_dir"] == f"{s3}/out/{folder}"
    pointer = out.read(POINTER).json()
    assert pointer["dataset"] == folder and pointer["traits"] == ["joy_minus", "joy_plus"]
    index = out.read(f"{folder}/index.json").json()
    assert [r["trait"] for r in index["traits"]] == ["joy_minus", "joy_plus"]
    assert out.read(f"{folder}/adapters.safetensors").data[:8]  # the stacked tensors, written once
    assert build_intake_at(url)["mapping_sha256"] == result["mapping_sha256"]  # again: same keys, fine

    # a damaged adapter in the bucket is refused by name, and the pointer stays on the good dataset
    weights = f"{mapping['traits']['joy_plus']['adapter_path']}/adapter_model.safetensors"
    out.delete(weights)
    out.put(weights, b"not safetensors")
    with pytest.raises(IntakeError, match="joy_plus"):
        build_intake_at(url)
    assert out.read(POINTER).json() == pointer
