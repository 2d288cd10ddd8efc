"""Memory that fits the card: the chunked loss, the micro-batch that halves on OOM, the 4-bit base.

An OOM cannot be caused for real on a CI machine without making it swap, so it is injected where a GPU
raises it: in the forward, as ``torch.OutOfMemoryError``, for micro-batches above a size. Everything
else is the real trainer on the tiny model, in this process (``train_here``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.train.helpers import config_json, last_json_line, train_here

pytestmark = pytest.mark.slow


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")  # peft 0.21 naming
def test_the_chunked_loss_and_its_gradients_equal_the_models_own(tiny_model: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from trait_lora.train.loss import label_loss_sum

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, local_files_only=True, dtype=torch.float32)
    lora = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(base, lora)
    ids = torch.randint(0, 200, (3, 40))
    mask = torch.ones_like(ids)
    mask[1, 30:], mask[2, 22:] = 0, 0  # right padding, as the collator pads
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :9] = -100  # a prompt that carries no loss

    reference = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    reference.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    summed, count = label_loss_sum(model, ids, mask, labels, chunk_tokens=7)  # 7 chunks and a remainder
    (summed / count).backward()

    assert count == int((labels[:, 1:] != -100).sum())
    assert (summed / count).item() == pytest.approx(reference.item(), abs=1e-5)
    for name, grad in expected.items():
        assert torch.allclose(dict(model.named_parameters())[name].grad, grad, atol=1e-6), name


@pytest.fixture
def oom_above(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``oom_above(k)``: from the second forward on, micro-batches of more than k examples raise
    torch's OOM, as a card too small for them would (the first one succeeds, so gradients are half
    accumulated when the step fails: the retry must start the step over)."""
    import torch

    from trait_lora.train import loss

    real = loss.label_loss_sum
    calls: list[int] = []

    def install(k: int) -> list[int]:
        def forward(model: Any, input_ids: Any, *args: Any, **kwargs: Any) -> Any:
            calls.append(input_ids.shape[0])
            if input_ids.shape[0] > k and (len(calls) > 1 or k == 0):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.")
            return real(model, input_ids, *args, **kwargs)

        monkeypatch.setattr(loss, "label_loss_sum", forward)
        return calls

    return install


def _train(out: Path, model: Path, shards: Path, *extra: str, **config: Any) -> Any:
    """12 short text examples (the cheapest shard), batch 8: a full step and a partial one."""
    return train_here(
        "--shard", shards / "calm_minus.jsonl", "--out", out,
        "--config-json", config_json(model, batch_size=8, **config), *extra,
    )  # fmt: skip


def test_an_oom_halves_the_micro_batch_and_gives_the_adapter_of_the_smaller_one(
    tiny_model: Path, shards_dir: Path, tmp_path: Path, oom_above: Any
) -> None:
    from safetensors.torch import load_file

    direct = _train(tmp_path / "direct", tiny_model, shards_dir, "--micro-batch", "2")
    assert direct.returncode == 0, direct.stderr
    calls = oom_above(2)
    backed_off = _train(tmp_path / "backed-off", tiny_model, shards_dir, "--micro-batch", "4")
    assert backed_off.returncode == 0, backed_off.stderr
    assert calls[:3] == [4, 4, 2], "the step failed on its second micro-batch and was redone from its first"
    assert "out of memory at micro-batch 4; redoing this step with micro-batch 2" in backed_off.stderr

    metrics = json.loads((tmp_path / "backed-off" / "metrics.json").read_text())
    assert (metrics["micro_batch"], metrics["grad_accum"], len(metrics["steps"])) == (2, 4, 2)
    assert [(b["micro_batch"], b["to"]) for b in metrics["oom_backoffs"]] == [(4, 2)]
    expected = json.loads((tmp_path / "direct" / "metrics.json").read_text())
    assert [s["loss"] for s in metrics["steps"]] == pytest.approx(
        [s["loss"] for s in expected["steps"]], abs=1e-5
    )
    got = load_file(tmp_path / "backed-off" / "adapter_model.safetensors")
    want = load_file(tmp_path / "direct" / "adapter_model.safetensors")
    assert max(float((got[k] - want[k]).abs().max()) for k in want) <= 1e-5


def test_an_oom_at_micro_batch_1_exits_4_saying_what_the_step_needed(
    tiny_model: Path, shards_dir: Path, tmp_path: Path, oom_above: Any
) -> None:
    from trait_lora.train import EXIT_OOM

    oom_above(0)
    done = _train(tmp_path / "out", tiny_model, shards_dir, "--micro-batch", "2")
    assert done.returncode == EXIT_OOM
    assert "out of memory at micro-batch 2; redoing this step with micro-batch 1" in done.stderr
    assert "out of memory on the CPU even at micro-batch 1: one step needs more than" in done.stderr
    assert 'set quantization to "4bit", lower max_seq_length' in done.stderr
    assert done.stdout == "" and not (tmp_path / "out").exists()


def test_a_4bit_config_trains_on_this_cpu_and_says_so(
    tiny_model: Path, shards_dir: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "adapter"
    done = _train(out, tiny_model, shards_dir, "--max-steps", "2", quantization="4bit", eval_fraction=0.25)
    assert done.returncode == 0, done.stderr
    assert "in fp32 with a 4bit base" in done.stderr
    result = last_json_line(done.stdout)
    assert (result["quantization"], result["precision"], result["device"]) == ("4bit", "fp32", "cpu")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["quantization"] == metrics["settings"]["quantization"] == "4bit"
    assert metrics["eval"]["adapter_loss"] < metrics["eval"]["base_loss"]  # evaluated on the 4-bit base too
    tensors = load_file(out / "adapter_model.safetensors")  # LoRA weights stay full precision
    assert tensors and all(str(t.dtype) == "torch.float32" for t in tensors.values())
