"""trait-lora: one LoRA adapter per personality-trait shard, orchestrated by Airflow 3.

Layers (each importable without the one above it):

* ``trait_lora.core``     -- pure rules: shards, config, keys, ledger, adapters, mapping (no Airflow).
* ``trait_lora.provider`` -- Airflow integration: hook, triggers, operators, links, provider info.
* ``dags/``               -- thin DAG files that only wire tasks.
"""

__version__ = "0.1.0"
