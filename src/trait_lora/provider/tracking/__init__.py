"""Where the runs show up outside our own dashboard: OpenLineage events and MLflow runs.

Both are optional at run time: without ``apache-airflow-providers-openlineage`` (or with it
unconfigured) and without ``[trait_lora] mlflow_tracking_uri``, nothing here imports anything heavy and
no task behaves differently.
"""
