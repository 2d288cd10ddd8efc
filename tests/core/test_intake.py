"""Stage-3 intake on real installed adapters: stacked rows equal the adapters; bad ones fail by name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from tests.support.published import CFG, TRAITS, install, publish, weights
from trait_lora.core.adapter import read_safetensors_header
from trait_lora.core.errors import IntakeError
from trait_lora.core.handoff import intake as intake_module
from trait_lora.core.handoff.intake import DATASET_DIR, INDEX_FILE, STACK_FILE, build_intake
from trait_lora.core.handoff.mapping import mapping_sha256, write_mapping


def snapshot(out: Path) -> dict[str, bytes]:
    """The dataset's files and every hidden intake leftover beside it."""
    files = {p.name: p.read_bytes() for p in (out / DATASET_DIR).iterdir()}
    leftovers = sorted(p.name for p in out.iterdir() if p.name.startswith(f".{DATASET_DIR}"))
    return {**files, "leftovers": json.dumps(leftovers).encode()}


def test_stacked_rows_equal_the_installed_adapters_in_sorted_trait_order(tmp_path):
    out = tmp_path / "out"
    path = publish(out)
    (out / "metrics").mkdir()
    (out / "metrics" / "joy_plus.json").write_text(
        json.dumps({"job_id": "ft-joy_plus", "steps": [{"step": 1, "loss": 2.5}, {"step": 2, "loss": 1.25}]})
    )
    (out / "metrics" / "calm_plus.json").write_text(json.dumps({"job_id": "ft-other", "steps": []}))

    result = build_intake(path)

    order = sorted(TRAITS)
    assert result.traits == tuple(order) and result.dataset_dir == out / DATASET_DIR
    stacked = load_file(result.adapters_path)
    for row, trait in enumerate(order):
        installed = load_file(weights(out, trait))
        assert set(stacked) == set(installed)
        for name, tensor in installed.items():
            assert stacked[name].shape == (len(order), *tensor.shape)
            assert stacked[name].dtype == tensor.dtype
            np.testing.assert_array_equal(stacked[name][row], tensor)
    assert len(read_safetensors_header(result.adapters_path)) == len(stacked) == result.num_tensors
    mapping = json.loads(path.read_text())
    with safe_open(result.adapters_path, framework="np") as fh:
        assert fh.metadata() == {
            "format": "pt",
            "mapping_sha256": mapping_sha256(mapping),
            "traits": ",".join(order),
        }

    index = json.loads(result.index_path.read_text())
    assert index["mapping_sha256"] == result.mapping_sha256 == mapping_sha256(mapping)
    assert (index["base_model"], index["lora"], index["num_traits"]) == (CFG.base_model, mapping["lora"], 4)
    assert [(t["row"], t["trait"], t["axis"], t["direction"]) for t in index["traits"]] == [
        (0, "calm_minus", "calm", -1),
        (1, "calm_plus", "calm", 1),
        (2, "joy_minus", "joy", -1),
        (3, "joy_plus", "joy", 1),
    ]
    assert [t["adapter_sha256"] for t in index["traits"]] == [
        mapping["traits"][t]["adapter_sha256"] for t in order
    ]
    training = {t["trait"]: t["training"] for t in index["traits"]}
    assert training["joy_plus"] == {"final_loss": 1.25, "steps": 2}
    assert training["calm_plus"] is None  # another job's figures are not this adapter's
    assert training["joy_minus"] is None
    assert [t["eval"] for t in index["traits"]] == [mapping["traits"][t].get("eval") for t in order]
    name = next(iter(stacked))
    assert index["tensors"][name] == {"dtype": "F32", "shape": list(stacked[name].shape)}
    assert result.to_dict()["num_traits"] == 4

    # A rerun rewrites the same dataset, byte for byte, and leaves nothing beside it.
    before = snapshot(out)
    build_intake(path)
    assert snapshot(out) == before
    assert json.loads(before["leftovers"]) == []


def assert_fails_and_keeps_the_old_dataset(out: Path, path: Path, before: dict[str, bytes]) -> IntakeError:
    with pytest.raises(IntakeError) as caught:
        build_intake(path)
    assert snapshot(out) == before  # the previous dataset is untouched, no temp file is left
    return caught.value


def test_a_corrupted_adapter_fails_the_intake_by_name_and_keeps_the_old_dataset(tmp_path):
    out = tmp_path / "out"
    path = publish(out)
    build_intake(path)
    before = snapshot(out)
    target = weights(out, "joy_minus")
    data = bytearray(target.read_bytes())
    data[-5] ^= 0xFF  # one flipped bit pattern in the tensor data: the header still parses
    target.write_bytes(bytes(data))

    error = assert_fails_and_keeps_the_old_dataset(out, path, before)
    message = str(error)
    assert message.startswith(f"joy_minus ({target}): sha256 ")
    assert "force_retrain" in message and "restore the file" in message
    assert error.traits == ["joy_minus"]

    target.unlink()
    error = assert_fails_and_keeps_the_old_dataset(out, path, before)
    assert str(error).startswith(f"joy_minus ({target}): cannot open the adapter")


def test_an_adapter_with_other_shapes_or_rank_fails_by_name(tmp_path):
    out = tmp_path / "out"
    path = publish(out)
    build_intake(path)
    before = snapshot(out)

    install(out, "calm_minus", 7, layers=3)  # a consistent mapping, but one adapter has an extra layer
    write_mapping(out, CFG)
    error = assert_fails_and_keeps_the_old_dataset(out, path, before)
    assert str(error).startswith(f"calm_minus ({weights(out, 'calm_minus')}): has extra tensor ")
    assert "(unlike 3 of 4 adapters)" in str(error) and error.traits == ["calm_minus"]

    install(out, "calm_minus", 0, shapes={"q_proj": (40, 40), "v_proj": (48, 24)})
    write_mapping(out, CFG)
    error = assert_fails_and_keeps_the_old_dataset(out, path, before)
    assert str(error).startswith(
        f"calm_minus ({weights(out, 'calm_minus')}): tensor base_model.model.model.layers.0.self_attn."
        "q_proj.lora_A.weight is F32[4, 40], not F32[4, 48] (unlike 3 of 4 adapters)"
    )

    install(out, "calm_minus", 0, base="another/model")
    write_mapping(out, CFG)
    error = assert_fails_and_keeps_the_old_dataset(out, path, before)
    assert str(error).startswith("calm_minus (")
    assert "names base model 'another/model', but 3 of 4 adapters name" in str(error)

    install(out, "calm_minus", 0)
    install(out, "joy_plus", 8, cfg=CFG.replace(lora_r=8))  # trained with r=8, mapping says r=4
    write_mapping(out, CFG)
    error = assert_fails_and_keeps_the_old_dataset(out, path, before)
    assert str(error).startswith(f"joy_plus ({out / 'lora_checkpoints' / 'joy_plus'}): ")
    assert "r is 8 but the training config has lora_r=4" in str(error)
    assert error.traits == ["joy_plus"]


def test_a_missing_pole_fails_naming_the_axis(tmp_path):
    out = tmp_path / "out"
    path = publish(out, ["joy_plus", "joy_minus", "calm_plus"], failed={"calm_minus": "loss is NaN"})
    with pytest.raises(IntakeError) as caught:
        build_intake(path)
    message = str(caught.value)
    assert message.startswith(f"calm ({path}): axis calm has calm_plus but not calm_minus")
    assert "it failed in the last run: loss is NaN" in message and caught.value.traits == ["calm_minus"]
    assert not (out / DATASET_DIR).exists()
    assert not [p for p in out.iterdir() if p.name.startswith(f".{DATASET_DIR}")]


def test_mapping_level_problems_name_the_mapping(tmp_path):
    with pytest.raises(IntakeError, match="no mapping here"):
        build_intake(tmp_path / "hypernetwork_data.json")
    out = tmp_path / "out"
    path = publish(out, ["joy_plus", "joy_minus"])
    data = json.loads(path.read_text())
    data["traits"]["joy_plus"]["adapter_path"] = "../../etc"
    path.write_text(json.dumps(data))
    with pytest.raises(IntakeError, match="adapter_path"):
        build_intake(path)
    path.write_text(json.dumps({**data, "traits": {}}))
    with pytest.raises(IntakeError, match="names no adapters"):
        build_intake(path)


def test_a_failure_while_writing_leaves_the_old_dataset_and_no_temp_files(tmp_path, monkeypatch):
    out = tmp_path / "out"
    path = publish(out, ["joy_plus", "joy_minus"])
    build_intake(path)
    before = snapshot(out)
    install(out, "joy_plus", 9)  # new content, so a completed write would change the dataset
    write_mapping(out, CFG)

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(intake_module, "write_stacked", broken)
    with pytest.raises(OSError, match="No space left"):
        build_intake(path)
    assert snapshot(out) == before
    monkeypatch.undo()
    build_intake(path)
    assert snapshot(out)[STACK_FILE] != before[STACK_FILE]


def test_a_dataset_parked_by_a_crashed_swap_is_put_back(tmp_path):
    out = tmp_path / "out"
    path = publish(out, ["joy_plus", "joy_minus"])
    build_intake(path)
    index = (out / DATASET_DIR / INDEX_FILE).read_bytes()
    (out / DATASET_DIR).rename(out / f".{DATASET_DIR}.previous-dead")  # died between the two renames
    intake_module._recover(out)
    assert (out / DATASET_DIR / INDEX_FILE).read_bytes() == index
    assert json.loads(snapshot(out)["leftovers"]) == []
