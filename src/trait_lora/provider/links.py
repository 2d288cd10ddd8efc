"""Operator extra link to a job's page in Together's dashboard (visible while the task is deferred)."""

from __future__ import annotations

import os
from typing import Any

from airflow.sdk import BaseOperatorLink, BaseXCom

JOB_URL_XCOM_KEY = "together_job_url"
DASHBOARD_URL = "https://api.together.ai/fine-tuning/{job_id}"


def dashboard_url(job_id: str) -> str:
    """Overridable (``TRAIT_LORA_TOGETHER_DASHBOARD_URL``) because Together has moved its console before."""
    template = os.environ.get("TRAIT_LORA_TOGETHER_DASHBOARD_URL") or DASHBOARD_URL
    return template.format(job_id=job_id)


class TogetherJobLink(BaseOperatorLink):
    name = "Together job"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        # Pushed before defer(): that XCom survives the deferral; a return value would not exist yet.
        return BaseXCom.get_value(ti_key=ti_key, key=JOB_URL_XCOM_KEY) or ""
