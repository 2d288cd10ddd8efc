"""# hypernetwork_intake: the stage-3 entry, a ready-to-train dataset from the published adapters

Runs by itself whenever a training DAG publishes a changed `hypernetwork_data.json`: it is scheduled on
the Asset alias `trait_lora_hypernetwork_data`, and each event names the mapping file its run wrote
(any output directory). To run it by hand, trigger it with *Mapping file* set to a
`hypernetwork_data.json`.

**What `intake` checks**, for every trait of the mapping: the adapter's sha256 is the one the mapping
published, its config has the mapping's base model, `r`, `lora_alpha` and target modules, every adapter
has the same tensors (names, dtypes, shapes), and every axis has both `_plus` and `_minus`. One bad
adapter fails the task, and its log names the trait, the file and what to do (usually: retrain it with
*Force retrain*, or restore the file). Nothing is written then; an earlier dataset stays as it was.

**Outputs**, next to the mapping in `hypernetwork_dataset/` (swapped in whole, never half-written):
`adapters.safetensors` holds each LoRA tensor stacked over traits (`[num_traits, *shape]`, rows in
sorted trait order) and `index.json` the rows (trait, axis, direction, adapter sha256, held-out eval
and training figures), the mapping's sha256, base model and LoRA settings.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from airflow.sdk import AssetAlias, dag, task

from trait_lora.provider.params import mapping_path_param
from trait_lora.provider.pipeline import HYPERNETWORK_ALIAS

PROJECT_DIR = Path(__file__).resolve().parent.parent


@dag(
    dag_id="hypernetwork_intake",
    # Airflow 3.3 resolves an alias to the Assets its events named when it evaluates the schedule, so
    # a mapping written under any output_dir triggers a run.
    schedule=[AssetAlias(HYPERNETWORK_ALIAS)],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # two intakes of one mapping would race for the same dataset directory
    # the mapping's folder, where the dataset is written, must lie in [trait_lora] storage_roots
    params={"mapping_path": mapping_path_param(PROJECT_DIR)},
    tags=["trait-lora", "stage-3"],
    description="Verify the published LoRA adapters and stack them into one ready-to-train dataset",
    doc_md=__doc__,
)
def hypernetwork_intake():
    # No retries: it only reads files; a retry would fail the same way.
    @task(task_id="intake", retries=0)
    def intake(params=None, triggering_asset_events=None, dag=None):
        from trait_lora.provider.intake import run_intake

        return run_intake(params, triggering_asset_events, dag=dag)

    intake()


hypernetwork_intake()
