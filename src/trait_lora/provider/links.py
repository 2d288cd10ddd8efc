"""Operator extra link to a job's page in Together's dashboard (visible while the task is deferred)."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperatorLink

from trait_lora import settings

JOB_URL_XCOM_KEY = "together_job_url"


def dashboard_url(job_id: str) -> str:
    """Overridable (``[trait_lora] together_dashboard_url``) because Together has moved its console
    before; read when the task runs, so changing it needs no DAG reparse."""
    template = settings.get_str("together_dashboard_url")
    return template.format(job_id=job_id)


class TogetherJobLink(BaseOperatorLink):
    name = "Together job"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        from airflow.sdk import BaseXCom

        # Pushed before defer(): that XCom survives the deferral; a return value would not exist yet.
        return BaseXCom.get_value(ti_key=ti_key, key=JOB_URL_XCOM_KEY) or ""
