"""Nothing left to Together's defaults: every ``fine_tuning.create`` parameter is either sent from our
config or left out for a stated reason, and the body on the wire carries each value we sent."""

from __future__ import annotations

import inspect

import pytest
import together

from tests.fake_together.test_fake_server import dataset
from trait_lora.core.config import TrainingConfig
from trait_lora.provider.hooks.together import TogetherHook

# Sent on every create, from TrainingConfig.together_create_kwargs() (plus the file and suffix).
SENT = {
    "training_file", "suffix", "model", "lora", "lora_r", "lora_alpha", "lora_dropout",
    "lora_trainable_modules", "n_epochs", "batch_size", "learning_rate", "lr_scheduler_type",
    "warmup_ratio", "packing", "train_on_inputs", "random_seed", "gradient_accumulation_steps",
    "max_seq_length", "max_grad_norm", "weight_decay", "min_lr_ratio", "scheduler_num_cycles",
    "n_checkpoints", "training_method", "train_vision", "early_stopping_enabled", "model_limits",
}  # fmt: skip
# Left out, each for a reason: they do not change the weights of an SFT LoRA job from a base model.
LEFT_OUT = {
    "validation_file": "sent only with a held-out split (with n_evals); evaluation does not train",
    "n_evals": "as validation_file",
    "wandb_api_key": "W&B logging, sent when [trait_lora] wandb_project is set",
    "wandb_base_url": "W&B logging, sent when [trait_lora] wandb_project is set",
    "wandb_project_name": "W&B logging, sent when [trait_lora] wandb_project is set",
    "wandb_name": "W&B logging, sent when [trait_lora] wandb_project is set",
    "wandb_entity": "W&B logging, sent when [trait_lora] wandb_project is set",
    "early_stopping_patience": "early stopping is off (early_stopping_enabled=False is sent)",
    "early_stopping_min_delta": "as early_stopping_patience",
    "early_stopping_warmup_evals": "as early_stopping_patience",
    "verbose": "client-side printing",
    "dpo_beta": "DPO only; we train SFT (training_method='sft' is sent)",
    "dpo_normalize_logratios_by_length": "DPO only",
    "rpo_alpha": "DPO only",
    "simpo_gamma": "DPO only",
    "from_checkpoint": "we train from the base model",
    "from_hf_model": "as from_checkpoint",
    "hf_model_revision": "as from_checkpoint",
    "hf_api_token": "Hugging Face upload/download only",
    "hf_output_repo_name": "as hf_api_token",
}
HTTP_OPTIONS = {"extra_headers", "extra_query", "extra_body", "timeout"}


def test_every_parameter_of_the_sdks_create_is_sent_or_left_out_for_a_reason():
    """An SDK upgrade that adds a parameter fails here until someone decides whether to send it."""
    create = together.Together(api_key="k", base_url="http://127.0.0.1:9").fine_tuning.create
    params = set(inspect.signature(create).parameters) - HTTP_OPTIONS
    assert params - SENT - set(LEFT_OUT) == set(), "new create parameters nobody classified"
    assert (SENT | set(LEFT_OUT)) - params == set(), "classified parameters the SDK no longer takes"
    sent_by_config = set(TrainingConfig().together_create_kwargs())
    assert sent_by_config == SENT - {"training_file", "suffix", "model_limits"}


@pytest.mark.parametrize("scheduler", ["linear", "cosine"])
def test_the_create_body_carries_every_value_we_set(together_conn, tmp_path, scheduler):
    fake = together_conn
    fake.file_polls = 0
    cfg = TrainingConfig(
        lr_scheduler_type=scheduler,
        random_seed=7,
        gradient_accumulation_steps=2,
        max_seq_length=4096,
        max_grad_norm=0.5,
        weight_decay=0.01,
        min_lr_ratio=0.1,
        scheduler_num_cycles=1.5,
    )
    hook = TogetherHook()
    file_id = hook.upload_file(dataset(tmp_path / "shard.jsonl"))["id"]
    limits = hook.model_limits(cfg.together_model)
    job = hook.create_job(
        training_file=file_id, suffix="body-check", model_limits=limits, **cfg.together_create_kwargs()
    )
    body = fake.jobs[job["id"]]["request"]
    args = {"min_lr_ratio": 0.1, **({"num_cycles": 1.5} if scheduler == "cosine" else {})}
    expected = {
        "training_file": file_id,
        "suffix": "body-check",
        "model": cfg.together_model,
        "n_epochs": 1,
        "batch_size": 32,
        "learning_rate": 2e-4,
        "warmup_ratio": 0.0,
        "packing": False,
        "random_seed": 7,
        "gradient_accumulation_steps": 2,
        "max_seq_length": 4096,
        "max_grad_norm": 0.5,
        "weight_decay": 0.01,
        "n_checkpoints": 1,
        "n_evals": 0,
        "early_stopping_enabled": False,
        "training_type": {
            "type": "Lora",
            "lora_r": 4,
            "lora_alpha": 16,
            "lora_dropout": 0.0,
            "lora_trainable_modules": "q_proj,v_proj",
        },
        "training_method": {"method": "sft", "train_on_inputs": False},
        "lr_scheduler": {"lr_scheduler_type": scheduler, "lr_scheduler_args": args},
    }
    assert {k: body.get(k) for k in expected} == expected
    unexpected = set(body) - set(expected) - {"validation_file", "dpo_normalize_logratios_by_length"}
    assert unexpected == set(), f"the SDK sent settings we did not choose: {sorted(unexpected)}"
