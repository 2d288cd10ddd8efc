"""Weights & Biases logging of Together jobs: what ``fine_tuning.create`` needs to log a job to the
team's W&B project, read when the launch runs.

Logging never changes the weights, so none of it is part of the job key (turning W&B on or off never
retrains a trait). The API key comes from an Airflow connection (its password) and is masked in task
logs the moment it is read; it goes only into the create request, never into XCom, the ledger or a
message.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from trait_lora import settings


def wandb_create_kwargs(trait: str, job_key: str) -> dict[str, Any]:
    """The W&B arguments of one create; empty when ``[trait_lora] wandb_project`` is not set."""
    project = settings.get_str("wandb_project")
    if not project:
        return {}
    conn_id = settings.get_str("wandb_conn_id")
    from airflow.sdk import BaseHook
    from airflow.sdk.log import mask_secret

    try:
        key = BaseHook.get_connection(conn_id).password or ""
    except Exception:  # a missing connection: say which, never fall back to logging nowhere silently
        key = ""
    if not key:
        raise AirflowFailException(
            f"{trait}: [trait_lora] wandb_project is {project!r} but connection {conn_id!r} has no W&B "
            "API key: put the key in that connection's password (Admin > Connections), or clear "
            "wandb_project to launch without W&B logging"
        )
    mask_secret(key)
    kwargs: dict[str, Any] = {
        "wandb_api_key": key,
        "wandb_project_name": project,
        "wandb_name": f"{trait}-{job_key[:12]}",  # one W&B run per trait and key, like the job suffix
    }
    for setting, argument in (("wandb_entity", "wandb_entity"), ("wandb_base_url", "wandb_base_url")):
        value = settings.get_str(setting)
        if value:
            kwargs[argument] = value
    return kwargs
