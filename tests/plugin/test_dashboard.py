"""The dashboard through Airflow's real api-server app: its auth, its pages, its JSON, after real runs.

The app is Airflow's own (``create_app``), loading our plugin through its entry point, with the real
SimpleAuthManager and its JWTs; the data comes from two real ``trait_lora_together`` runs against the
fake Together server, one of them failing a trait with a hostile message, one with another output_dir.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.support.airflow import copy_shards, run_dag

TRAITS = ["joy_plus", "joy_minus", "wisdom_plus"]
HOSTILE = '<script>alert("pwned")</script> & <img src=x onerror=alert(1)>'
PREFIX = "/trait-lora"


@pytest.fixture(scope="module")
def scenario(airflow_db, tmp_path_factory) -> dict[str, Any]:
    """Run A (default output dir, wisdom_plus fails hostilely), run B (another output_dir, one trait)."""
    from tests.fake_together.server import FakeTogether

    root = tmp_path_factory.mktemp("dashboard")
    mp = pytest.MonkeyPatch()
    fake = FakeTogether().start()
    try:
        mp.setenv(
            "AIRFLOW_CONN_TOGETHER_DEFAULT",
            json.dumps({"conn_type": "together", "host": fake.base_url, "password": fake.api_key}),
        )
        # The DAG's output_dir default is read at parse: the Traits tab reads that default.
        mp.setenv("AIRFLOW__TRAIT_LORA__OUTPUT_DIR", str(root / "default_out"))
        fake.set_outcome("wisdom-plus", "error", HOSTILE)
        shards = copy_shards(root / "shards", TRAITS)
        run_a = run_dag("trait_lora_together", {"shards_dir": str(shards)})
        run_b = run_dag(
            "trait_lora_together",
            {"shards_dir": str(shards), "output_dir": str(root / "other_out"), "traits": ["joy_plus"]},
        )
    finally:
        fake.stop()
        mp.undo()
    return {"root": root, "run_a": run_a.run_id, "run_b": run_b.run_id}


@pytest.fixture(scope="module")
def client(scenario) -> Any:
    from airflow.api_fastapi.app import create_app, purge_cached_app
    from fastapi.testclient import TestClient

    purge_cached_app()
    with TestClient(create_app(apps="core")) as test_client:
        yield test_client
    purge_cached_app()


def _token(role: str | None) -> str:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return get_auth_manager().generate_jwt(SimpleAuthManagerUser(username=role or "nobody", role=role))


def _get(client: Any, path: str, role: str | None = "viewer", **kwargs: Any) -> Any:
    headers = {"Authorization": f"Bearer {_token(role)}"} if role != "anonymous" else {}
    return client.get(PREFIX + path, headers=headers, **kwargs)


def _run_path(run_id: str, api: bool = False) -> str:
    return f"{'/api' if api else ''}/dags/trait_lora_together/runs/{quote(run_id, safe='')}"


PATHS = ["/dags/trait_lora_together/traits", "/api/dags/trait_lora_together/traits"]


@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS)
def test_no_token_is_401_and_a_user_without_access_is_403_and_neither_sees_data(client, scenario, path):
    anonymous = _get(client, path, role="anonymous")
    assert anonymous.status_code == 401
    no_role = _get(client, path, role=None)  # a valid JWT of a user the auth manager grants nothing
    assert no_role.status_code == 403
    for response in (anonymous, no_role):
        assert "joy_plus" not in response.text
    for run_path in (_run_path(scenario["run_a"]), _run_path(scenario["run_a"], api=True)):
        assert _get(client, run_path, role="anonymous").status_code == 401
        assert _get(client, run_path, role=None).status_code == 403


@pytest.mark.slow
def test_the_uis_jwt_cookie_is_accepted_like_the_iframe_sends_it(client, scenario):
    response = client.get(PREFIX + PATHS[0], cookies={"_token": _token("viewer")})
    assert response.status_code == 200
    assert "joy_plus" in response.text


@pytest.mark.slow
def test_traits_json_shows_each_traits_state_figures_and_totals(client, scenario):
    response = _get(client, PATHS[1])
    assert response.status_code == 200
    view = response.json()
    assert view["output_dir"] == str((scenario["root"] / "default_out").resolve())
    rows = {r["trait"]: r for r in view["traits"]}
    assert sorted(rows) == sorted(TRAITS)
    assert rows["joy_plus"]["state"] == rows["joy_minus"]["state"] == "trained"
    assert rows["wisdom_plus"]["state"] == "failed"
    assert HOSTILE in rows["wisdom_plus"]["reason"]
    installed = json.loads((scenario["root"] / "default_out" / "hypernetwork_data.json").read_text())
    for trait in ("joy_plus", "joy_minus"):
        row = rows[trait]
        assert row["adapter_sha256"] == installed["traits"][trait]["adapter_sha256"]
        assert row["job_id"] == installed["traits"][trait]["job_id"]
        assert row["curve"] and row["final_loss"] == row["curve"][-1][1]
        assert row["price_usd"] > 0
    assert view["totals"]["in_flight"] == 0
    assert view["totals"]["counts"] == {"trained": 2, "failed": 1}
    assert view["totals"]["spend_usd"] == pytest.approx(sum(r["price_usd"] or 0 for r in rows.values()))
    assert view["mapping"]["run_id"] == scenario["run_a"]


@pytest.mark.slow
def test_traits_page_renders_rows_charts_and_escapes_untrusted_text(client, scenario):
    response = _get(client, PATHS[0])
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    for trait in TRAITS:
        assert f"<b>{trait}</b>" in page
    assert page.count('class="state trained"') == 2 and page.count('class="state failed"') == 1
    assert "<script>" not in page and "<img src=x" not in page  # Together's message is data, not markup
    assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt; &amp; &lt;img src=x" in page
    charts = re.findall(r'<img class="chart" alt="[^"]*" src="data:image/svg\+xml;base64,', page)
    assert len(charts) == 3  # all traits together + one per trained trait
    assert "spend: $" in page and "in flight: 0" in page


@pytest.mark.slow
def test_training_summary_of_a_run_shows_its_table_curves_failures_and_mapping(client, scenario):
    response = _get(client, _run_path(scenario["run_a"]))
    assert response.status_code == 200
    page = response.text
    assert "Training summary of" in page and "Failures" in page
    assert 'class="state failed"' in page and page.count('class="state trained"') == 2
    assert "&lt;script&gt;" in page and "<script>" not in page
    assert re.search(r'<img class="chart" [^>]*src="data:image/svg\+xml;base64,', page)
    api = _get(client, _run_path(scenario["run_a"], api=True)).json()
    assert sorted(api["curves"]) == ["joy_minus", "joy_plus"]
    assert api["summary"]["counts"] == {"trained": 2, "failed": 1}
    assert api["mapping"]["run_id"] == scenario["run_a"]


@pytest.mark.slow
def test_a_run_with_another_output_dir_is_read_from_where_it_wrote(client, scenario):
    other = (scenario["root"] / "other_out").resolve()
    api = _get(client, _run_path(scenario["run_b"], api=True)).json()
    assert api["output_dir"] == str(other)
    assert [r["trait"] for r in api["summary"]["traits"]] == ["joy_plus"]
    assert api["mapping"]["run_id"] == scenario["run_b"]
    assert str(other) in _get(client, _run_path(scenario["run_b"])).text
    # The DAG's Traits tab still reads the DAG's default output dir, where run B wrote nothing.
    assert _get(client, PATHS[1]).json()["mapping"]["run_id"] == scenario["run_a"]


@pytest.mark.slow
def test_a_hostile_trait_name_in_a_summary_is_escaped_and_never_read_as_a_path(client, scenario):
    out = (scenario["root"] / "default_out").resolve()
    run_dir = out / "runs" / "forged"
    run_dir.mkdir(parents=True)
    hostile_trait = '"><svg onload=alert(1)>'
    (run_dir / "summary.json").write_text(
        json.dumps(
            {
                "run_id": "forged",
                "backend": "together",
                "counts": {"trained": 1},
                "traits": [{"trait": hostile_trait, "action": "trained", "detail": HOSTILE}],
                "failed": {},
            }
        )
    )
    from trait_lora.core.handoff import report
    from trait_lora.provider.dashboard import pages

    html = pages.run_page("trait_lora_together", report.run_view(out, "forged"), lambda job: "")
    assert "<svg onload" not in html and "&quot;&gt;&lt;svg onload=alert(1)&gt;" in html
    assert report.run_view(out, "forged")["curves"] == {}  # not a trait name: no metrics file is opened


@pytest.mark.slow
def test_unknown_dags_and_runs_are_404_not_500(client, scenario):
    assert _get(client, "/dags/no_such_dag/traits").status_code == 404
    assert _get(client, "/api/dags/trait_lora_together/runs/no_such_run").status_code == 404


def test_the_plugin_registers_once_with_both_tabs():
    from airflow import plugins_manager

    plugins, errors = plugins_manager._get_plugins()
    ours = [p for p in plugins if p.name == "trait_lora"]
    assert len(ours) == 1 and not errors
    views = {v["destination"]: v for v in ours[0].external_views}
    assert views["dag"]["name"] == "Traits" and "{DAG_ID}" in views["dag"]["href"]
    assert views["dag_run"]["name"] == "Training summary" and "{RUN_ID}" in views["dag_run"]["href"]
    assert not any(v["href"].startswith("/") for v in views.values())  # relative: works behind a proxy
    assert [a["url_prefix"] for a in ours[0].fastapi_apps] == [PREFIX]


def test_loss_chart_escapes_names_and_draws_single_points(tmp_path: Path):
    from trait_lora.provider.dashboard.charts import loss_svg

    svg = loss_svg({"</text><script>x</script>": [(1, 2.0)], "b_plus": [(1, 3.0), (2, 2.5)]})
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert svg.count("<polyline") == 2 and "<circle" in svg
    assert "no loss recorded" in loss_svg({})
