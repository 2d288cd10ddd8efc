"""The Airflow plugin: the trait dashboard (a FastAPI app) and the two tabs that show it in the UI.

Registered through the ``airflow.plugins`` entry point of the installed package, not a file under
``plugins/``: every component that has the package (api-server, scheduler, workers, triggerer) then
loads the same plugin exactly once, with no plugins folder to mount or keep in sync.
"""

from __future__ import annotations

from typing import Any

from airflow.listeners import hookimpl
from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/trait-lora"

# Relative hrefs (no leading slash) so the tabs work behind a proxy or a base_url; the UI fills in and
# URL-encodes {DAG_ID} / {RUN_ID}. With url_route set, the page is shown inside the UI (an iframe).
EXTERNAL_VIEWS = [
    {
        "name": "Traits",
        "href": "trait-lora/dags/{DAG_ID}/traits",
        "destination": "dag",
        "url_route": "trait-lora-traits",
    },
    {
        "name": "Training summary",
        "href": "trait-lora/dags/{DAG_ID}/runs/{RUN_ID}",
        "destination": "dag_run",
        "url_route": "trait-lora-summary",
    },
]


class TaskLineageScope:
    """Listener: each task starts with an empty hook lineage collector (what a decorated task
    reports to OpenLineage is then its own, even when one process runs every task)."""

    @hookimpl(tryfirst=True)  # before OpenLineage's listener builds the START event
    def on_task_instance_running(self, previous_state: Any, task_instance: Any) -> None:
        from trait_lora.provider.tracking.lineage import fresh_task

        fresh_task()


class TraitLoraPlugin(AirflowPlugin):
    name = "trait_lora"
    external_views = EXTERNAL_VIEWS
    listeners = [TaskLineageScope()]

    @property
    def fastapi_apps(self) -> list[dict[str, object]]:  # type: ignore[override]
        """Built on first use: only the api-server (and ``airflow plugins``) asks for the app, and a
        worker or the DAG processor loading the plugin must not pay ~1 s for FastAPI and Airflow's
        security module."""
        from trait_lora.provider.dashboard.app import app

        return [{"app": app, "url_prefix": URL_PREFIX, "name": "trait-lora dashboard"}]
