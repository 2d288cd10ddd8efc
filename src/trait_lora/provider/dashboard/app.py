"""The dashboard's FastAPI app, mounted by the plugin under ``/trait-lora`` in the api-server.

Every route sits behind Airflow's own auth (``requires_access_dag`` for the DAG in the path, which also
accepts the UI's JWT cookie, so the UI's same-origin iframe is authenticated): no token is 401, a
user who may not read that DAG (or its runs) is 403, and neither gets any data. Which output directory
to read comes from Airflow itself: the run's conf when it chose one, else the DAG's ``output_dir``
param default; so a run with a non-default ``output_dir`` shows what it wrote.
"""

from __future__ import annotations

from typing import Any

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import requires_access_dag
from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import HTMLResponse

from trait_lora.core.handoff import report
from trait_lora.provider.dashboard import pages

app = FastAPI(
    title="trait-lora dashboard",
    description="Per-trait adapters, jobs, spend and loss curves of the trait_lora DAGs (read-only).",
    version="1",
)

READ_DAG = [Depends(requires_access_dag("GET"))]
READ_RUNS = [Depends(requires_access_dag("GET", DagAccessEntity.RUN))]


def _job_url(job_id: str) -> str:
    from trait_lora.provider.links import dashboard_url

    return dashboard_url(job_id)


def _param_default(dag_id: str, session: Any) -> str:
    from airflow.models.serialized_dag import SerializedDagModel

    dag = SerializedDagModel.get_dag(dag_id, session=session)
    if dag is None:
        raise HTTPException(404, f"DAG {dag_id!r} was not found")
    params = dag.params
    if "output_dir" not in params:
        raise HTTPException(404, f"DAG {dag_id!r} is not a trait-lora training DAG (it has no output_dir)")
    value = params.get_param("output_dir").value if hasattr(params, "get_param") else params["output_dir"]
    return str(value)


def output_dir_of(dag_id: str, run_id: str | None = None) -> str:
    """Where the DAG (or one of its runs) writes, resolved like ``discover`` resolves it: a folder, or
    an object-storage URL. Only inside the DAG's own default or ``[trait_lora] storage_roots``: a run
    created before a root was removed is not a way to read elsewhere."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from trait_lora import settings
    from trait_lora.core.storage.location import LocationError
    from trait_lora.provider.storage import confine_conf

    with create_session() as session:
        default = _param_default(dag_id, session)
        chosen = default
        if run_id is not None:
            run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
            if run is None:
                raise HTTPException(404, f"run {run_id!r} of DAG {dag_id!r} was not found")
            conf = (run.conf or {}).get("output_dir")
            chosen = conf if isinstance(conf, str) and conf else default
    roots = [default, *(str(r) for r in settings.get("storage_roots"))]
    try:
        where = confine_conf(chosen, roots, what="output_dir")
    except LocationError as exc:
        raise HTTPException(403, str(exc)) from None
    if where.is_local:
        assert where.path is not None
        return str(where.path.resolve())
    return where.url


@app.get("/api/dags/{dag_id}/traits", dependencies=READ_DAG)
def traits_json(dag_id: str) -> dict[str, Any]:
    """Every trait the DAG's output directory knows of, with state, figures and totals."""
    return report.traits_view(output_dir_of(dag_id))


@app.get("/api/dags/{dag_id}/runs/{run_id}", dependencies=READ_RUNS)
def run_json(dag_id: str, run_id: str) -> dict[str, Any]:
    """One run's summary, plan, loss curves and (when it wrote it) mapping."""
    return report.run_view(output_dir_of(dag_id, run_id), run_id)


@app.get("/dags/{dag_id}/traits", dependencies=READ_DAG, response_class=HTMLResponse)
def traits_html(dag_id: str) -> HTMLResponse:
    view = report.traits_view(output_dir_of(dag_id))
    return HTMLResponse(pages.traits_page(dag_id, view, _job_url))


@app.get("/dags/{dag_id}/runs/{run_id}", dependencies=READ_RUNS, response_class=HTMLResponse)
def run_html(dag_id: str, run_id: str) -> HTMLResponse:
    view = report.run_view(output_dir_of(dag_id, run_id), run_id)
    return HTMLResponse(pages.run_page(dag_id, view, _job_url))
