"""``python -m trait_lora.train`` end to end, with the argv a backend passes, offline.

One chat run (several epochs, so the loss has room to fall), a subprocess as a backend starts it, is
shared by the tests that inspect its output. The reruns with a seed and the other shard formats call
the same ``main()`` in this process (``train_here``): they are about what training produces, and each
fresh process would spend ~4 s importing torch, transformers and peft. The same seed in this process
and in the subprocess gives the same bytes. The other runs are capped with ``--max-steps``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.train.helpers import (
    HIDDEN,
    KV_DIM,
    config_json,
    last_json_line,
    offline_env,
    run_trainer,
    train_here,
)

pytestmark = pytest.mark.slow

BASE_ID = "meta-llama/Meta-Llama-3.1-8B-Instruct"
ADAPTER_FILES = {"adapter_model.safetensors", "adapter_config.json", "metrics.json", "result.json"}


@pytest.fixture(scope="module")
def chat_run(tiny_model: Path, shards_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """16 chat examples, batch 4, 4 epochs: 16 optimizer steps."""
    out = tmp_path_factory.mktemp("chat-run") / "wisdom_plus"
    argv = [
        "--shard", shards_dir / "wisdom_plus.jsonl",
        "--out", out,
        "--config-json", config_json(tiny_model, n_epochs=4),
        "--base-model-id", BASE_ID,
        "--seed", "7",
    ]
    proc = run_trainer(*argv)
    assert proc.returncode == 0, proc.stderr
    return {"out": out, "proc": proc, "argv": argv}


def test_success_prints_one_json_line_describing_the_adapter(chat_run: dict[str, Any]) -> None:
    import hashlib

    out: Path = chat_run["out"]
    result = last_json_line(chat_run["proc"].stdout)
    assert Path(result["adapter_dir"]) == out.resolve()
    assert result["sha256"] == hashlib.sha256((out / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert result["num_examples"] == 16
    assert result["final_loss"] == json.loads((out / "metrics.json").read_text())["final_loss"]
    assert json.loads((out / "result.json").read_text()) == result  # where a pod's install task reads it
    assert {p.name for p in out.iterdir()} == ADAPTER_FILES
    # Nothing but the result on stdout; progress goes to stderr.
    assert len([line for line in chat_run["proc"].stdout.splitlines() if line.strip()]) == 1
    assert "step 16/16 loss" in chat_run["proc"].stderr
    assert "tokens/s" in chat_run["proc"].stderr


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")  # peft 0.21 naming
def test_adapter_loads_with_peft_and_has_r4_q_v_shapes(chat_run: dict[str, Any], tiny_model: Path) -> None:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out: Path = chat_run["out"]
    tensors = load_file(out / "adapter_model.safetensors")
    expected = {}
    for layer in range(2):
        for module, out_dim in (("q_proj", HIDDEN), ("v_proj", KV_DIM)):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            expected[f"{prefix}.lora_A.weight"] = (4, HIDDEN)
            expected[f"{prefix}.lora_B.weight"] = (out_dim, 4)
    assert {name: tuple(t.shape) for name, t in tensors.items()} == expected
    assert all(t.dtype == torch.float32 for t in tensors.values())

    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == BASE_ID
    assert (config["r"], config["lora_alpha"]) == (4, 16)
    assert config["target_modules"] == ["q_proj", "v_proj"]

    base = AutoModelForCausalLM.from_pretrained(tiny_model, local_files_only=True)
    model = PeftModel.from_pretrained(base, out)
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(loaded) == len(expected)
    trained_b = tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    assert trained_b.abs().sum() > 0, "lora_B starts at zero; training must have moved it"
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        adapted = model(ids).logits
        with model.disable_adapter():
            plain = model(ids).logits
    assert not torch.allclose(adapted, plain), "the adapter must change the model's outputs"


def test_metrics_record_steps_throughput_and_batching(chat_run: dict[str, Any]) -> None:
    metrics = json.loads((chat_run["out"] / "metrics.json").read_text())
    assert [s["step"] for s in metrics["steps"]] == list(range(1, 17))
    assert all(set(s) == {"step", "loss", "learning_rate", "epoch"} for s in metrics["steps"])
    assert metrics["steps"][-1]["epoch"] == pytest.approx(4.0)
    assert metrics["tokens_per_second"] > 0
    assert metrics["real_tokens"] > 0 and metrics["wall_seconds"] > 0
    assert (metrics["num_examples"], metrics["micro_batch"], metrics["grad_accum"]) == (16, 4, 1)
    assert metrics["device"] == "cpu"
    assert metrics["final_loss"] == metrics["steps"][-1]["loss"]
    # The linear schedule decays from the configured learning rate.
    rates = [s["learning_rate"] for s in metrics["steps"]]
    assert rates[0] == pytest.approx(2e-3) and rates == sorted(rates, reverse=True)
    # Every setting it was trained with: the config's fields (the seed as overridden) and the hardware's.
    assert (metrics["precision"], metrics["quantization"]) == ("fp32", None)
    config = json.loads(chat_run["argv"][chat_run["argv"].index("--config-json") + 1])
    assert {name: metrics["settings"][name] for name in config} == {**config, "random_seed": 7}


def test_the_configs_random_seed_is_the_runs_seed(chat_run: dict[str, Any], tmp_path: Path) -> None:
    argv = [str(a) for a in chat_run["argv"]]
    config = json.loads(argv[argv.index("--config-json") + 1])
    argv[argv.index("--config-json") + 1] = json.dumps({**config, "random_seed": 7})
    argv[argv.index("--out") + 1] = str(tmp_path / "seeded")
    del argv[argv.index("--seed") : argv.index("--seed") + 2]
    proc = train_here(*argv)
    assert proc.returncode == 0, proc.stderr
    weights = "adapter_model.safetensors"
    assert (tmp_path / "seeded" / weights).read_bytes() == (chat_run["out"] / weights).read_bytes()


def test_schedule_clipping_decay_and_sequence_length_come_from_the_config(
    tiny_model: Path, shards_dir: Path, tokenizer: Any, tmp_path: Path
) -> None:
    from trait_lora.core.shards.validation import iter_examples
    from trait_lora.train.data import encode_records

    shard = shards_dir / "wisdom_plus.jsonl"
    settings = {
        "lr_scheduler_type": "cosine", "warmup_ratio": 0.25, "min_lr_ratio": 0.5, "max_seq_length": 64,
        "weight_decay": 0.1, "max_grad_norm": 0.5,
    }  # fmt: skip
    out = tmp_path / "adapter"
    proc = train_here("--shard", shard, "--out", out, "--config-json", config_json(tiny_model, **settings))
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    # 4 steps: one of warmup from 0, then half a cosine from 2e-3 down towards the 50% floor.
    rates = [s["learning_rate"] for s in metrics["steps"]]
    assert rates == pytest.approx([0.0, 2e-3, 1.75e-3, 1.25e-3])
    # Examples are cut to max_seq_length tokens, keeping their start (as Together truncates).
    full, _ = encode_records(tokenizer, iter_examples(shard), "chat", train_on_inputs=False, max_length=10**6)
    assert max(len(e.input_ids) for e in full) > 64
    assert metrics["real_tokens"] == sum(min(len(e.input_ids), 64) for e in full)
    assert {name: metrics["settings"][name] for name in settings} == settings


@pytest.mark.skipif("__import__('torch').cuda.is_available()", reason="this machine has a GPU")
@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--gpu"], "--device cuda (or --gpu) was given but torch sees no CUDA device"),
        (["--device", "cuda"], "--device cuda (or --gpu) was given but torch sees no CUDA device"),
        (["--precision", "bf16"], "--precision bf16 needs a CUDA device; the CPU trains in fp32"),
    ],
)
def test_asking_for_a_gpu_this_machine_lacks_exits_2(
    tiny_model: Path, shards_dir: Path, tmp_path: Path, flags: list[str], needle: str
) -> None:
    shard, out = shards_dir / "calm_minus.jsonl", tmp_path / "out"
    proc = train_here("--shard", shard, "--out", out, "--config-json", config_json(tiny_model), *flags)
    assert proc.returncode == 2 and needle in proc.stderr
    assert not out.exists()


def test_loss_falls_over_the_run(chat_run: dict[str, Any]) -> None:
    losses = [s["loss"] for s in json.loads((chat_run["out"] / "metrics.json").read_text())["steps"]]
    quarter = len(losses) // 4
    first, last = sum(losses[:quarter]) / quarter, sum(losses[-quarter:]) / quarter
    assert first > last, losses


def test_same_seed_gives_identical_adapter(chat_run: dict[str, Any], tmp_path: Path) -> None:
    argv = list(chat_run["argv"])
    argv[argv.index("--out") + 1] = tmp_path / "again"
    proc = train_here(*argv)
    assert proc.returncode == 0, proc.stderr
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (tmp_path / "again" / name).read_bytes() == (chat_run["out"] / name).read_bytes(), name
    assert last_json_line(proc.stdout)["sha256"] == last_json_line(chat_run["proc"].stdout)["sha256"]


def test_another_seed_gives_another_adapter(chat_run: dict[str, Any], tmp_path: Path) -> None:
    argv = list(chat_run["argv"])
    argv[argv.index("--out") + 1] = tmp_path / "seed8"
    argv[argv.index("--seed") + 1] = "8"
    proc = train_here(*argv)
    assert proc.returncode == 0, proc.stderr
    weights = "adapter_model.safetensors"
    assert (tmp_path / "seed8" / weights).read_bytes() != (chat_run["out"] / weights).read_bytes()
    assert last_json_line(proc.stdout)["sha256"] != last_json_line(chat_run["proc"].stdout)["sha256"]


@pytest.mark.parametrize(
    ("shard", "fmt"), [("calm_plus.jsonl", "prompt_completion"), ("calm_minus.jsonl", "text")]
)
def test_prompt_completion_and_text_shards_train_and_replace_an_existing_out_dir(
    tiny_model: Path, shards_dir: Path, tmp_path: Path, shard: str, fmt: str
) -> None:
    out = tmp_path / "adapter"
    out.mkdir()
    (out / "stale.txt").write_text("old")  # a previous attempt's leftovers: replaced, not merged
    proc = train_here(
        "--shard", shards_dir / shard, "--out", out,
        "--config-json", config_json(tiny_model, batch_size=6), "--micro-batch", "2", "--max-steps", "2",
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["format"] == fmt
    assert (metrics["micro_batch"], metrics["grad_accum"], len(metrics["steps"])) == (2, 3, 2)
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_model)
    assert last_json_line(proc.stdout)["num_examples"] == 12
    assert {p.name for p in out.iterdir()} == ADAPTER_FILES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no staging dir left behind


def test_bad_shard_exits_2_with_every_problem_and_writes_nothing(tiny_model: Path, tmp_path: Path) -> None:
    shard = tmp_path / "broken_plus.jsonl"
    shard.write_text(
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
        + "\nnot json\n"
        + json.dumps({"messages": [{"role": "user", "content": "no reply"}]})
        + "\n"
    )
    out = tmp_path / "out"
    proc = run_trainer("--shard", shard, "--out", out, "--config-json", config_json(tiny_model))
    assert proc.returncode == 2
    assert f"{shard}:2:" in proc.stderr and f"{shard}:3:" in proc.stderr
    assert proc.stdout == ""
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken_plus.jsonl"], "no temp dir left behind"


def test_missing_model_exits_3_and_keeps_the_previous_adapter(shards_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "adapter_model.safetensors").write_bytes(b"previous")
    missing = tmp_path / "no-such-model"
    # the CLI's main() as `python -m trait_lora.train` runs it, reporting whether torch got imported
    code = "import sys, trait_lora.train.cli as cli; c = cli.main(); print('torch' in sys.modules); exit(c)"
    argv = ["--shard", shards_dir / "wisdom_plus.jsonl", "--out", out, "--config-json", config_json(missing)]
    proc = subprocess.run(
        [sys.executable, "-c", code, *map(str, argv)], capture_output=True, text=True, env=offline_env()
    )
    assert proc.returncode == 3
    assert proc.stdout.strip() == "False", "a missing model is reported before torch loads (~4 s)"
    assert str(missing) in proc.stderr and "local" in proc.stderr and "never downloads" in proc.stderr
    assert (out / "adapter_model.safetensors").read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_bad_config_json_exits_2(shards_dir: Path, tmp_path: Path) -> None:
    proc = run_trainer(
        "--shard", shards_dir / "wisdom_plus.jsonl", "--out", tmp_path / "out",
        "--config-json", json.dumps({"lora_r": 0}),
    )
    assert proc.returncode == 2
    assert "lora_r" in proc.stderr


def test_importing_the_cli_does_not_import_torch() -> None:
    code = (
        "import sys, trait_lora.train, trait_lora.train.cli, trait_lora.train.data; "
        "heavy = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=offline_env())
    assert proc.returncode == 0, proc.stderr
