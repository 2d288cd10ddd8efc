import json
from pathlib import Path

import pytest

from trait_lora.core.config import LOCAL_MODEL, TOGETHER_MODEL, TrainingConfig, from_mapping
from trait_lora.core.errors import ConfigError


def test_defaults_are_the_seed_hyperparameters():
    cfg = TrainingConfig()
    assert (cfg.together_model, cfg.local_model) == (TOGETHER_MODEL, LOCAL_MODEL)
    assert TOGETHER_MODEL == "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"
    assert (cfg.lora_r, cfg.lora_alpha, cfg.target_modules) == (4, 16, ("q_proj", "v_proj"))
    assert (cfg.n_epochs, cfg.batch_size, cfg.learning_rate) == (1, 32, 2e-4)


def test_together_kwargs_override_every_sdk_default_that_differs():
    kwargs = TrainingConfig().together_create_kwargs()
    # SDK 3.1.1 defaults: lora=None, lr 1e-5, all-linear, alpha 2r, batch "max", packing on, cosine.
    assert kwargs["lora"] is True
    assert kwargs["learning_rate"] == 2e-4
    assert kwargs["lora_trainable_modules"] == "q_proj,v_proj"
    assert kwargs["lora_alpha"] == 16 and kwargs["lora_r"] == 4
    assert kwargs["batch_size"] == 32
    assert kwargs["packing"] is False
    assert kwargs["lr_scheduler_type"] == "linear"
    assert kwargs["train_on_inputs"] is False
    assert kwargs["model"] == TOGETHER_MODEL


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("lora_r", 0, "lora_r must be a positive integer"),
        ("lora_r", 4.0, "lora_r"),
        ("lora_r", True, "lora_r"),
        ("learning_rate", 0, "learning_rate must be a number in (0, 1)"),
        ("learning_rate", 1.5, "learning_rate"),
        ("learning_rate", float("nan"), "learning_rate"),
        ("target_modules", ["q_proj", "qkv"], "unknown: ['qkv']"),
        ("target_modules", [], "target_modules"),
        ("batch_size", "32", "batch_size"),
        ("backend", "modal", "backend must be one of together, local"),
        ("lora_dropout", 1.0, "lora_dropout"),
        ("packing", "yes", "packing must be true or false"),
    ],
)
def test_bad_values_name_the_field(field, value, needle):
    with pytest.raises(ConfigError) as err:
        from_mapping({field: value}, source="conf")
    assert needle in str(err.value)
    assert str(err.value).startswith("conf: ")


def test_unknown_field_is_refused_with_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown training field\(s\) lora_rank; known: .*lora_r"):
        from_mapping({"lora_rank": 8})


def test_config_hash_changes_with_training_fields_only():
    base = TrainingConfig()
    assert base.config_hash() == TrainingConfig().config_hash()
    assert base.replace(learning_rate=1e-4).config_hash() != base.config_hash()
    assert base.replace(target_modules=["v_proj", "q_proj"]).config_hash() == base.config_hash()
    # The local model is not what the Together backend trains on: it must not change Together keys.
    assert base.replace(local_model="/tmp/tiny").config_hash() == base.config_hash()
    assert base.replace(backend="local").config_hash() != base.config_hash()


def test_comma_string_modules_are_accepted():
    assert from_mapping({"target_modules": "q_proj, v_proj"}).target_modules == ("q_proj", "v_proj")


def test_integer_zero_from_json_hashes_like_the_float_default():
    # JSON/CLI input often says 0 where the default is 0.0; a different hash would buy a retrain.
    assert (
        from_mapping({"lora_dropout": 0, "warmup_ratio": 0}).config_hash() == TrainingConfig().config_hash()
    )


COMPAT = json.loads((Path(__file__).parent / "data" / "config_hashes_06ddc2b.json").read_text())


@pytest.mark.parametrize("case", COMPAT["cases"], ids=lambda c: json.dumps(c["config"], sort_keys=True))
def test_an_upgrade_keeps_every_config_hash_written_before_the_advanced_settings(case):
    """Hashes recorded by the release before random_seed & co. existed: unchanged, so no paid retrain."""
    assert from_mapping(case["config"]).config_hash() == case["config_hash"]


def test_a_ledger_of_the_previous_release_still_skips_every_unchanged_trait(tmp_path):
    from tests.support.adapters import write_adapter_dir
    from tests.support.airflow import copy_shards
    from trait_lora.core.adapter import AdapterSpec, install_adapter
    from trait_lora.core.hashing import sha256_file
    from trait_lora.core.jobs.keys import job_key
    from trait_lora.core.jobs.ledger import Ledger
    from trait_lora.core.jobs.plan import plan_traits
    from trait_lora.core.shards.catalog import discover_shards

    traits = ["joy_plus", "joy_minus", "wisdom_plus"]
    shards = copy_shards(tmp_path / "shards", traits)
    out = tmp_path / "out"
    (old,) = [c for c in COMPAT["cases"] if c["config"] == {"backend": "together"}]
    cfg = from_mapping(old["config"])
    ledger = Ledger(out)
    for trait, shard in discover_shards(shards).shards.items():
        digest = sha256_file(shard.path)
        key = job_key(digest, old["config_hash"])  # what the previous release wrote
        _, info = install_adapter(
            write_adapter_dir(tmp_path / "src" / trait), out, trait, AdapterSpec.from_config(cfg)
        )
        ledger.record_adapter(
            trait,
            shard_sha256=digest,
            config_hash=old["config_hash"],
            job_key=key,
            adapter_sha256=info.sha256,
            job_id=f"ft-{trait}",
            backend="together",
            base_model=cfg.base_model,
            num_examples=1,
        )
    plans = plan_traits(shards, out, cfg)
    assert {p.trait: p.action for p in plans} == dict.fromkeys(traits, "skip")
    # ... while a changed advanced setting retrains (its own key, one paid job per trait).
    changed = plan_traits(shards, out, cfg.replace(random_seed=7))
    assert {p.action for p in changed} == {"train"}
    assert {p.reason for p in changed} == {"training config changed since the last adapter"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("random_seed", 7),
        ("gradient_accumulation_steps", 4),
        ("max_seq_length", 4096),
        ("max_grad_norm", 0.5),
        ("weight_decay", 0.01),
        ("min_lr_ratio", 0.1),
    ],
)
def test_each_advanced_setting_is_sent_and_changes_the_key_off_its_default(field, value):
    base = TrainingConfig()
    changed = base.replace(**{field: value})
    assert changed.together_create_kwargs()[field] == value
    assert changed.config_hash() != base.config_hash()
    # the local trainer honours them too (and keys them by the same rule), except the accumulation: its
    # micro-batch x accumulation always makes batch_size, so a local key does not claim that field
    local, local_base = changed.replace(backend="local"), base.replace(backend="local")
    assert (local.config_hash() != local_base.config_hash()) == (field != "gradient_accumulation_steps")


def test_quantization_keys_only_when_set_and_only_for_the_local_backend():
    local = TrainingConfig(backend="local")
    assert from_mapping({"backend": "local", "quantization": None}).config_hash() == local.config_hash()
    assert local.replace(quantization="4bit").config_hash() != local.config_hash()
    with pytest.raises(ConfigError, match=r'quantization must be null .* or "4bit"'):
        local.replace(quantization="8bit")
    with pytest.raises(ConfigError, match="quantization applies to the local backend only"):
        TrainingConfig(quantization="4bit")


def test_packing_is_refused_for_the_local_backend_with_what_to_do():
    assert TrainingConfig(packing=True).together_create_kwargs()["packing"] is True
    with pytest.raises(ConfigError, match=r"not supported by the local backend.*set packing to false"):
        TrainingConfig(backend="local", packing=True)


def test_cosine_cycles_count_only_with_the_cosine_schedule():
    linear = TrainingConfig(lr_scheduler_type="linear")
    assert linear.replace(scheduler_num_cycles=2.0).config_hash() == linear.config_hash()
    cosine = TrainingConfig(lr_scheduler_type="cosine")
    assert cosine.replace(scheduler_num_cycles=2.0).config_hash() != cosine.config_hash()
