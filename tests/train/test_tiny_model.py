"""The offline tiny model: Llama-shaped (GQA), Llama-3 tokens and template, deterministic and cached."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.train.helpers import offline_env
from trait_lora.train.tiny_model import FINGERPRINT_FILE, build_tiny_model


def test_loads_offline_in_a_fresh_process_with_llama3_chat_format(tiny_model: Path) -> None:
    code = f"""
import json
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained({str(tiny_model)!r})
model = AutoModelForCausalLM.from_pretrained({str(tiny_model)!r})
attn = model.model.layers[0].self_attn
hi = [{{"role": "user", "content": "hi"}}]
text = tok.apply_chat_template(hi, tokenize=False, add_generation_prompt=True)
print(json.dumps({{"arch": type(model).__name__, "q": attn.q_proj.out_features, "v": attn.v_proj.out_features,
                  "layers": len(model.model.layers), "vocab": len(tok), "text": text,
                  "special": [tok.bos_token, tok.eos_token, tok.pad_token]}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=offline_env())
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.splitlines()[-1])
    assert (info["arch"], info["q"], info["v"], info["layers"]) == ("LlamaForCausalLM", 128, 64, 2)
    assert 256 < info["vocab"] <= 4096
    assert info["text"] == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert info["special"] == ["<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>"]


def test_same_inputs_are_reused_not_rebuilt(tiny_model: Path, shards_dir: Path) -> None:
    weights = tiny_model / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert build_tiny_model(shards_dir, tiny_model) == tiny_model
    assert weights.stat().st_mtime_ns == before
    assert json.loads((tiny_model / FINGERPRINT_FILE).read_text())["settings"]["hidden"] == 128


def test_build_is_deterministic_and_rebuilds_when_inputs_change(
    tiny_model: Path, shards_dir: Path, tmp_path: Path
) -> None:
    copy = build_tiny_model(shards_dir, tmp_path / "copy")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (copy / name).read_bytes() == (tiny_model / name).read_bytes(), name

    other = build_tiny_model(shards_dir, tmp_path / "copy", hidden=64, layers=1)
    config = json.loads((other / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"]) == (64, 1)
