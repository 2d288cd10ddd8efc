"""The trigger form: DAG params with the seed's defaults and the ranges the core enforces.

Bad conf is refused when the run is created (Airflow validates params against these schemas), so an
unknown trait, a name with ``/`` or ``..``, or a learning rate of 3 never starts a run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from airflow.sdk import Param

from trait_lora import settings
from trait_lora.core.config import (
    CONFIG_FIELDS,
    DEFAULT_EVAL_FRACTION,
    KNOWN_MODULES,
    LOCAL_MODEL,
    MAX_EVAL_FRACTION,
    SCHEDULERS,
    TOGETHER_MODEL,
    TrainingConfig,
)
from trait_lora.core.shards.catalog import TRAIT_PATTERN, discover_shards
from trait_lora.core.storage.location import root_pattern
from trait_lora.provider.storage import default_conn_id, storage_roots


def default_dirs(project_dir: Path) -> tuple[Any, Any]:
    """As in the CLI: ``[trait_lora] shards_dir`` / ``output_dir``, else the project's dirs; absolute,
    because a run carries them in its conf to workers with another working directory. An
    object-storage URL stays as written."""
    shards, output = settings.default_dirs(project_dir)
    return tuple(d.resolve() if isinstance(d, Path) else d for d in (shards, output))  # type: ignore[return-value]


def available_traits(shards_dir: Path | str) -> list[str]:
    """The form's options: a directory listing (cheap enough for every DAG parse). A bucket is never
    listed while a DAG file is parsed: the form then offers free text, checked by discover."""
    if not isinstance(shards_dir, Path):
        return []
    try:
        return sorted(discover_shards(shards_dir).shards)
    except FileNotFoundError:
        return []


SELECTION, PATHS, TRAINING, BUDGET = "Selection", "Paths", "Training", "Budget"
EVALUATION, ADVANCED = "Evaluation", "Advanced"

# Airflow checks every param's schema against its metaschema at each parse; the 2020-12 metaschema
# (jsonschema's default) costs ~3x draft-07's (0.66 vs 0.22 ms per param, 18 params per DAG). Every
# keyword the form uses means the same in draft-07, and the UI ignores ``$schema``.
SCHEMA_DIALECT = "http://json-schema.org/draft-07/schema#"


JOB_ID_PATTERN = r"^ft-[A-Za-z0-9_-]{1,100}$"  # "A string that starts with ft-" (Together's spec)


def form_field(default: Any, **schema: Any) -> Param:
    """One form field, its schema checked under draft-07 (see SCHEMA_DIALECT)."""
    return Param(default, **{"$schema": SCHEMA_DIALECT}, **schema)


def roots_schema(roots: list[str]) -> tuple[str, str, str]:
    """The pattern a location in the conf must match (inside a root, with the root's connection), the
    schema's ``must`` text and the field's help."""
    conn = default_conn_id()
    # JSON schema has no error messages: a refusal prints the schema, so this key says what to do
    # (validators and the UI ignore keys they do not know)
    inside_help = (
        f"lie inside [trait_lora] storage_roots ({', '.join(roots)}), naming no connection, the one its "
        f"root names, or [trait_lora] storage_conn_id ({conn}); pick a location there, or ask an "
        "administrator to add it to that setting"
    )
    roots_help = (
        f" Must lie inside [trait_lora] storage_roots ({', '.join(roots)}); a location outside them, or one "
        "naming another Airflow connection than its root (s3://conn@bucket/...), refuses the run: ask an "
        "administrator to add it there."
    )
    return root_pattern(roots, conn), inside_help, roots_help


def build_params(project_dir: Path, backend: str) -> dict[str, Param]:
    """The form: every field titled, its range and default in its help (Airflow shows range errors
    only in a banner at the top), grouped in sections; only ``traits`` may be left empty (= all)."""
    shards_dir, output_dir = default_dirs(project_dir)
    traits = available_traits(shards_dir)
    roots = storage_roots(project_dir)
    inside, inside_help, roots_help = roots_schema(roots)
    d = TrainingConfig()
    item: dict[str, Any] = {"type": "string", "pattern": TRAIT_PATTERN}
    if traits:
        item["enum"] = traits
    model = TOGETHER_MODEL if backend == "together" else LOCAL_MODEL
    model_help = (
        "Together model name to fine-tune (as listed by Together's fine-tuning models)"
        if backend == "together"
        else "Hugging Face model id or a local model directory (never downloaded at run time)"
    )
    params: dict[str, Param] = {
        "traits": form_field(
            None,
            type=["null", "array"],
            items=item,
            uniqueItems=True,
            examples=traits,
            title="Traits",
            description="Traits to train, by shard name (e.g. wisdom_plus). Default: empty, which trains "
            "every shard found in the shards directory.",
            section=SELECTION,
        ),
        "force_retrain": form_field(
            False,
            type="boolean",
            title="Force retrain",
            description="Retrain even traits whose shard and settings are unchanged (pays for new jobs). "
            "Default: off.",
            section=SELECTION,
        ),
        "dry_run": form_field(
            False,
            type="boolean",
            title="Dry run",
            description="Plan only: validate and show what would run; no upload, job or training. "
            "Default: off.",
            section=SELECTION,
        ),
        "shards_dir": form_field(
            str(shards_dir),
            type="string",
            minLength=1,
            pattern=inside,
            must=inside_help,
            title="Shards directory",
            description=f"Folder of <trait>.jsonl shards. Default: {shards_dir}.{roots_help}",
            section=PATHS,
        ),
        "output_dir": form_field(
            str(output_dir),
            type="string",
            minLength=1,
            pattern=inside,
            must=inside_help,
            title="Output directory",
            description="Where adapters, ledgers, metrics, run summaries and hypernetwork_data.json are "
            f"written. Default: {output_dir}.{roots_help}",
            section=PATHS,
        ),
        "base_model": form_field(
            model,
            type="string",
            minLength=1,
            title="Base model",
            description=f"{model_help}. Default: {model}.",
            section=TRAINING,
        ),
        "lora_r": form_field(
            d.lora_r,
            type="integer",
            minimum=1,
            maximum=1024,
            title="LoRA rank (r)",
            description=f"Integer 1-1024 (Together caps it per model). Default: {d.lora_r}.",
            section=TRAINING,
        ),
        "lora_alpha": form_field(
            d.lora_alpha,
            type="integer",
            minimum=1,
            maximum=4096,
            title="LoRA alpha",
            description=f"Integer 1-4096; the adapter's scale is alpha / r. Default: {d.lora_alpha}.",
            section=TRAINING,
        ),
        "lora_dropout": form_field(
            d.lora_dropout,
            type="number",
            minimum=0,
            exclusiveMaximum=1,
            title="LoRA dropout",
            description=f"Number in [0, 1). Default: {d.lora_dropout}.",
            section=TRAINING,
        ),
        "target_modules": form_field(
            list(d.target_modules),
            type="array",
            items={"type": "string", "enum": list(KNOWN_MODULES)},
            minItems=1,
            uniqueItems=True,
            examples=list(KNOWN_MODULES),
            title="Target modules",
            description=f"Attention/MLP projections that get adapters, at least one. Default: "
            f"{', '.join(d.target_modules)}.",
            section=TRAINING,
        ),
        "n_epochs": form_field(
            d.n_epochs,
            type="integer",
            minimum=1,
            maximum=100,
            title="Epochs",
            description=f"Integer 1-100 (Together allows up to 20 for most models). Default: {d.n_epochs}.",
            section=TRAINING,
        ),
        "batch_size": form_field(
            d.batch_size,
            type="integer",
            minimum=1,
            maximum=4096,
            title="Batch size",
            description="Examples per optimizer step, integer 1-4096 (Together's range per model is "
            f"checked before any job is created, typically 8-128). Default: {d.batch_size}.",
            section=TRAINING,
        ),
        "learning_rate": form_field(
            d.learning_rate,
            type="number",
            exclusiveMinimum=0,
            exclusiveMaximum=1,
            title="Learning rate",
            description=f"Number in (0, 1). Default: {d.learning_rate:g}.",
            section=TRAINING,
        ),
        "lr_scheduler_type": form_field(
            d.lr_scheduler_type,
            type="string",
            enum=list(SCHEDULERS),
            title="Learning-rate schedule",
            description=f"One of {', '.join(SCHEDULERS)}. Default: {d.lr_scheduler_type}.",
            section=TRAINING,
        ),
        "warmup_ratio": form_field(
            d.warmup_ratio,
            type="number",
            minimum=0,
            exclusiveMaximum=1,
            title="Warmup ratio",
            description=f"Share of steps spent warming up, number in [0, 1). Default: {d.warmup_ratio}.",
            section=TRAINING,
        ),
    }
    # Together: off by default, because turning it on changes every trait's config hash (one paid
    # retrain each); locally a retrain costs nothing, so held-out figures are on.
    eval_default = DEFAULT_EVAL_FRACTION if backend == "local" else 0.0
    where = (
        "the held-out part is uploaded as Together's validation_file and evaluated n_evals times; "
        "Together reports the adapter's held-out loss, not the base model's"
        if backend == "together"
        else "measured against the base model (and the opposite pole)"
    )
    params["eval_fraction"] = form_field(
        eval_default,
        type="number",
        minimum=0,
        maximum=MAX_EVAL_FRACTION,
        title="Held-out fraction",
        description="Share of each shard held out (chosen by content, the same every run) to evaluate "
        f"the adapter on; {where}. Number in [0, 0.5]; 0 trains on everything; shards under 10 "
        f"examples train on everything. Changing it retrains. Default: {eval_default}.",
        section=EVALUATION,
    )
    if backend == "local":  # Together trains its own way: the base's precision is the local trainer's
        params["quantization"] = form_field(
            None,
            type=["null", "string"],
            enum=[None, "4bit"],
            title="Quantization",
            description="Empty: the base model in bf16/fp16 on a GPU (fp32 on a CPU); 4bit: QLoRA, the base "
            "in NF4 (Llama-3.1-8B then fits a 16 GB card: ~5.5 GB of weights instead of ~16). Recorded in "
            "the mapping entry; changing it retrains. Default: empty.",
            section=TRAINING,
        )
    if backend == "local":  # Together trains one job per trait on its own machines
        params["traits_per_process"] = form_field(
            1,
            type="integer",
            minimum=1,
            maximum=1024,
            title="Traits per process",
            description="How many traits one trainer process trains, one after the other, on one load of "
            "the base model (on a GPU: one group per GPU at once). Each trait is still verified, installed "
            "and reported by its own task, and fails alone. Not part of a trait's key: an adapter is the "
            "same whichever group trains it, so changing it retrains nothing. Integer >= 1. Default: 1, "
            "a process per trait.",
            section=TRAINING,
        )
    if backend == "local":  # Together reports no base-model loss to compare against
        params["min_eval_improvement"] = form_field(
            None,
            type=["null", "number"],
            title="Quality gate: minimum held-out improvement",
            description="Refuse to install an adapter whose held-out loss is not at least this much below "
            "the base model's (the trait fails with the figures; its previous adapter stays published), "
            "number (e.g. 0.01). Default: empty, no gate.",
            section=EVALUATION,
        )
    if backend == "together":
        params["download_job_ids"] = form_field(
            None,
            type=["null", "object"],
            propertyNames={"pattern": TRAIT_PATTERN},
            additionalProperties={"type": "string", "pattern": JOB_ID_PATTERN},
            title="Recover finished jobs",
            description='Trait -> Together job id, e.g. {"joy_plus": "ft-..."}: download that finished '
            "job's adapter instead of training (after a refused or lost download; no new job is paid "
            "for). The job must have been trained on the trait's current shard and settings. "
            "Default: empty.",
            section=SELECTION,
        )
        params.update(advanced_params(d))
        params["max_job_price_usd"] = form_field(
            None,
            type=["null", "number"],
            minimum=0,
            title="Per-job budget (USD)",
            description="Refuse to launch a job Together estimates above this, number >= 0. "
            "Default: empty, no limit.",
            section=BUDGET,
        )
        params["max_run_price_usd"] = form_field(
            None,
            type=["null", "number"],
            minimum=0,
            title="Per-run budget (USD)",
            description="Refuse launches once this run's estimated total would pass this, number >= 0. "
            "Default: empty, no limit.",
            section=BUDGET,
        )
    return params


def advanced_params(d: TrainingConfig) -> dict[str, Param]:
    """Together's settings that change the weights and were once left to its defaults: now sent
    explicitly. At these defaults they leave a trait's job key as it was, so upgrading retrains
    nothing; changing one retrains every trait it applies to (one paid job each)."""
    note = "Changing it retrains (one paid job per trait)."
    return {
        "random_seed": form_field(
            d.random_seed,
            type="integer",
            minimum=0,
            maximum=2**31 - 1,
            title="Random seed",
            description="Seed for data order and adapter init, integer >= 0. "
            f"{note} Default: {d.random_seed}.",
            section=ADVANCED,
        ),
        "gradient_accumulation_steps": form_field(
            d.gradient_accumulation_steps,
            type="integer",
            minimum=1,
            maximum=1024,
            title="Gradient accumulation steps",
            description="Batches summed per optimizer step, integer 1-1024 (the effective batch is batch "
            f"size x this). {note} Default: {d.gradient_accumulation_steps}.",
            section=ADVANCED,
        ),
        "max_seq_length": form_field(
            d.max_seq_length,
            type="integer",
            minimum=64,
            maximum=1_048_576,
            title="Maximum sequence length",
            description="Tokens per example before truncation, integer (Together's range per model is "
            f"checked before any job is created). {note} Default: {d.max_seq_length}.",
            section=ADVANCED,
        ),
        "max_grad_norm": form_field(
            d.max_grad_norm,
            type="number",
            minimum=0,
            title="Gradient clipping (max norm)",
            description=f"Number >= 0; 0 turns clipping off. {note} Default: {d.max_grad_norm}.",
            section=ADVANCED,
        ),
        "weight_decay": form_field(
            d.weight_decay,
            type="number",
            minimum=0,
            title="Weight decay",
            description=f"Number >= 0. {note} Default: {d.weight_decay}.",
            section=ADVANCED,
        ),
        "min_lr_ratio": form_field(
            d.min_lr_ratio,
            type="number",
            minimum=0,
            maximum=1,
            title="Final learning-rate ratio",
            description="Where the schedule ends, as a share of the learning rate, number in [0, 1]. "
            f"{note} Default: {d.min_lr_ratio}.",
            section=ADVANCED,
        ),
        "scheduler_num_cycles": form_field(
            d.scheduler_num_cycles,
            type="number",
            exclusiveMinimum=0,
            title="Cosine cycles",
            description="Cycles of the cosine schedule, number > 0 (read only with the cosine schedule). "
            f"{note} Default: {d.scheduler_num_cycles}.",
            section=ADVANCED,
        ),
    }


def config_values(params: dict[str, Any], backend: str) -> dict[str, Any]:
    """The training-config fields from a run's params (the model goes to the backend's field)."""
    values = {name: value for name, value in params.items() if name in CONFIG_FIELDS}
    values["backend"] = backend
    if params.get("base_model"):
        values["together_model" if backend == "together" else "local_model"] = params["base_model"]
    return values


def mapping_path_param(project_dir: Path) -> Param:
    """``hypernetwork_intake``'s manual mapping file: confined to the roots like ``output_dir``, because
    the intake writes ``hypernetwork_dataset/`` beside whatever mapping it reads."""
    inside, inside_help, roots_help = roots_schema(storage_roots(project_dir))
    return form_field(
        None,
        type=["null", "string"],
        pattern=inside,
        must=inside_help,
        title="Mapping file",
        description="For a manual run: the hypernetwork_data.json to read, as an absolute path or "
        "an s3://bucket/prefix/hypernetwork_data.json URL. "
        "Default: empty, which reads the file named by the Asset event that triggered the run." + roots_help,
        section=PATHS,
    )
