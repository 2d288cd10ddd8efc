"""Talking to a running live deployment: its REST API (JWT from SimpleAuthManager) and its metadata DB.

``DeploymentClient`` is a mixin of ``LiveDeployment``: apart from the lifecycle in ``deployment`` because
the tests and the benches mostly use these calls (trigger a run, read its state, sample task instances
cheaply from PostgreSQL) and never the process control. Imports only ``procs`` and ``services`` for types.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import httpx

from tests.e2e.procs import tail

if TYPE_CHECKING:
    from tests.e2e.procs import Proc
    from tests.e2e.services import Postgres

DAG_ID = "trait_lora_together"
POOL = "together_api"


class DeploymentClient:
    """The REST API and metadata DB calls of ``LiveDeployment`` (which sets the attributes below)."""

    api_url: str
    procs: dict[str, Proc]
    postgres: Postgres | None
    _token: str | None
    _http: httpx.Client | None
    _db: Any

    # -- REST API ---------------------------------------------------------------------------------
    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(base_url=self.api_url, timeout=60)
        return self._http

    def token(self, refresh: bool = False) -> str:
        """A JWT from SimpleAuthManager: with all users admin, ``GET /auth/token`` needs no credentials."""
        if self._token is None or refresh:
            response = self.http.get("/auth/token")
            response.raise_for_status()
            self._token = response.json()["access_token"]
        return self._token

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token()}", **kwargs.pop("headers", {})}
        response = self.http.request(method, path, headers=headers, **kwargs)
        if response.status_code == 401:  # token expired: once more with a new one
            headers["Authorization"] = f"Bearer {self.token(refresh=True)}"
            response = self.http.request(method, path, headers=headers, **kwargs)
        return response

    def _api_ready(self) -> bool:
        for name in ("api-server", "scheduler", "dag-processor", "triggerer"):
            proc = self.procs.get(name)
            if proc is not None and not proc.alive:
                raise RuntimeError(f"{name} exited ({proc.popen.returncode}):\n{tail(proc.log_path)}")
        return self.http.get("/api/v2/version", timeout=5).status_code == 200

    def _dag_ready(self) -> bool:
        self._api_ready()
        response = self.api("GET", f"/api/v2/dags/{DAG_ID}")
        if response.status_code == 200:
            return True
        errors = self.api("GET", "/api/v2/importErrors").json().get("import_errors", [])
        mine = [e for e in errors if DAG_ID.replace("trait_lora_", "") in e.get("filename", "")]
        if mine:
            raise RuntimeError(f"the DAG file failed to import: {mine}")
        return False

    def unpause(self, dag_id: str) -> None:
        response = self.api("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})
        response.raise_for_status()

    def trigger(self, conf: dict[str, Any], run_id: str | None = None) -> httpx.Response:
        body: dict[str, Any] = {"logical_date": None, "conf": conf}
        if run_id:
            body["dag_run_id"] = run_id
        return self.api("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", json=body)

    def run(self, run_id: str) -> dict[str, Any]:
        response = self.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")
        response.raise_for_status()
        return response.json()

    def pool(self) -> dict[str, Any]:
        response = self.api("GET", f"/api/v2/pools/{POOL}")
        response.raise_for_status()
        return response.json()

    # -- metadata DB (cheap sampling, no load on the API server) ----------------------------------
    @property
    def db(self) -> Any:
        import psycopg2

        assert self.postgres is not None
        if self._db is None:
            self._db = psycopg2.connect(**self.postgres.dsn())
            self._db.autocommit = True
        return self._db

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with self.db.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())

    def ti_states(self, run_id: str) -> list[tuple[str, int, str | None]]:
        with self.db.cursor() as cur:
            cur.execute(
                "SELECT task_id, map_index, state FROM task_instance WHERE dag_id = %s AND run_id = %s",
                (DAG_ID, run_id),
            )
            return list(cur.fetchall())

    def deferred_labels(self, run_id: str) -> list[tuple[str, int, str | None]]:
        """(task, map index, rendered label) of every deferred task instance of the run."""
        assert self._db is not None
        with self._db.cursor() as cur:
            cur.execute(
                "SELECT task_id, map_index, rendered_map_index FROM task_instance WHERE dag_id = %s "
                "AND run_id = %s AND state = 'deferred'",
                (DAG_ID, run_id),
            )
            return list(cur.fetchall())

    def mapped_traits(self, run_id: str) -> list[str] | None:
        """Map index -> trait of the run's mapped group: the order of ``discover``'s return value."""
        assert self._db is not None
        with self._db.cursor() as cur:
            cur.execute(
                "SELECT value FROM xcom WHERE dag_id = %s AND run_id = %s AND task_id = 'discover' "
                "AND key = 'return_value' AND map_index = -1",
                (DAG_ID, run_id),
            )
            row = cur.fetchone()
        if row is None:
            return None
        value = json.loads(row[0]) if isinstance(row[0], str | bytes) else row[0]
        return [plan["trait"] for plan in value]
