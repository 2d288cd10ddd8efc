"""Local training backend: the trainer in a subprocess per trait, then the core's verify/install/ledger.

No Airflow import: the local DAG, the Kubernetes DAG's post-pod step and tests all call it.
"""
