"""Server-rendered HTML for the Traits and Training summary tabs.

No JavaScript and no external assets: the page lives in the Airflow UI's sandboxed iframe and must
work behind any proxy. Every value that came from a file (trait names, Together messages, job ids) is
untrusted and goes through ``escape``; numbers are formatted here, never interpolated raw.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from html import escape
from typing import Any
from urllib.parse import urlsplit

from trait_lora.core.jobs.budget import usd
from trait_lora.provider.dashboard.charts import data_uri, loss_svg

STYLE = """
body{font-family:system-ui,sans-serif;margin:16px;color:#1a1a1a;font-size:14px}
h1{font-size:18px;margin:0 0 4px}h2{font-size:15px;margin:20px 0 6px}
.muted{color:#666}.totals span{margin-right:6px}
table{border-collapse:collapse;width:100%}th,td{border-bottom:1px solid #ddd;padding:4px 6px;
text-align:left;vertical-align:top}th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.state{border-radius:8px;padding:1px 7px;font-size:12px;white-space:nowrap}
.trained{background:#d7f5dd}.skipped{background:#eee}.failed{background:#fbd5d5}
.in-flight{background:#fff1c2}.not-trained{background:#eee}.resumed{background:#d7f5dd}
code{font-size:12px}.reason{color:#a40000;max-width:320px;overflow-wrap:anywhere}
td code{overflow-wrap:anywhere}td b,.nowrap{white-space:nowrap}.good{color:#0a6b2b}.bad{color:#a40000}
details summary{cursor:pointer;color:#555;font-size:12px}table.figures{width:auto;font-size:12px}
table.figures th{background:none;font-weight:normal;color:#555}img.chart{max-width:100%;height:auto}
"""

SEP = '<span class="muted"> | </span>'
STATE_CLASS = {"in flight": "in-flight", "not trained": "not-trained"}


def _e(value: Any) -> str:
    return escape("" if value is None else str(value))


def _num(value: Any, fmt: str = "{:.4f}") -> str:
    return fmt.format(value) if isinstance(value, int | float) and not isinstance(value, bool) else "-"


def _price(value: Any) -> str:
    return usd(float(value)) if isinstance(value, int | float) and not isinstance(value, bool) else "-"


def _state(state: str) -> str:
    css = STATE_CLASS.get(state, state if state.isalpha() else "")
    return f'<span class="state {css}">{_e(state)}</span>'


# What a reader compares first; every other figure stays one click away (``details``).
HEADLINE = (
    "base_loss",
    "adapter_loss",
    "improvement",
    "own_pole_margin",
    "prefers_own_pole",
    "opposite_trait",
)


def _figure(value: Any, key: str = "") -> str:
    """A figure as a person reads it: counts (``n_*``, ints) as integers, yes/no for flags, 4 decimals
    for losses."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if key.startswith("n_") and value.is_integer() else f"{value:.4f}"
    if value is None:
        return "-"
    if isinstance(value, list | dict):
        return f"{len(value)} item(s)"
    return _e(value)


def _eval(figures: Mapping[str, Any] | None) -> str:
    """Held-out loss base -> adapter with the change, the own-pole verdict with the opposite pole
    named, the held-out count; all figures behind a disclosure."""
    if not figures:
        return "-"
    lines = []
    base, adapter = figures.get("base_loss"), figures.get("adapter_loss")
    if isinstance(adapter, int | float) and not isinstance(adapter, bool):
        change = figures.get("improvement")
        delta = ""
        if isinstance(change, int | float) and not isinstance(change, bool):
            css = "good" if change > 0 else "bad"
            delta = f' <span class="{css}">({"-" if change > 0 else "+"}{abs(change):.4f})</span>'
        before = f"{_figure(float(base))} &rarr; " if isinstance(base, int | float) else ""
        lines.append(f"held-out loss {before}{_figure(float(adapter))}{delta}")
    if "prefers_own_pole" in figures:
        verdict = "yes" if figures.get("prefers_own_pole") else "no"
        css = "good" if verdict == "yes" else "bad"
        versus = f" over {_e(figures['opposite_trait'])}" if figures.get("opposite_trait") else ""
        margin = figures.get("own_pole_margin")
        shown = f", margin {_figure(float(margin))}" if isinstance(margin, int | float) else ""
        lines.append(f'prefers own pole{versus}: <span class="{css}">{verdict}</span>{shown}')
    if isinstance(figures.get("n_held_out"), int | float):
        lines.append(f'<span class="muted">{_figure(int(figures["n_held_out"]))} held out</span>')
    rest = "".join(
        f"<tr><th>{_e(k)}</th><td>{_figure(v, k)}</td></tr>"
        for k, v in sorted(figures.items())
        if k != "eval_steps"
    )
    details = f'<details><summary>all figures</summary><table class="figures">{rest}</table></details>'
    return "<br>".join(lines or ['<span class="muted">no held-out loss</span>']) + details


def _job(job_id: Any, url: str | None) -> str:
    if not job_id:
        return "-"
    if url and urlsplit(url).scheme in ("http", "https"):
        return f'<a href="{_e(url)}" target="_blank" rel="noopener noreferrer"><code>{_e(job_id)}</code></a>'
    return f"<code>{_e(job_id)}</code>"


def _table(headers: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _chart(curves: Mapping[str, Any], alt: str, **size: Any) -> str:
    svg = loss_svg(curves, **size)
    return f'<img class="chart" alt="{_e(alt)}" src="{data_uri(svg)}">'


def page(title: str, body: str) -> str:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{STYLE}</style></head><body>{body}</body></html>"
    )


def _mapping_block(mapping: Mapping[str, Any] | None, note: str) -> str:
    if not mapping:
        return f'<p class="muted">{_e(note)}</p>'
    traits = mapping.get("traits") or {}
    failed = mapping.get("failed") or {}
    rows = [
        [
            _e(t),
            _e(entry.get("direction")),
            f"<code>{_e(str(entry.get('adapter_sha256') or '')[:12])}</code>",
            _e(entry.get("adapter_path")),
        ]
        for t, entry in sorted(traits.items())
        if isinstance(entry, dict)
    ]
    return (
        f"<p>version {_e(mapping.get('version'))}, base model <code>{_e(mapping.get('base_model'))}</code>, "
        f"{len(traits)} adapter(s), {len(failed)} failed in run <code>{_e(mapping.get('run_id'))}</code>, "
        f"written {_e(mapping.get('generated_at'))}</p>"
        + _table(["trait", "direction", "adapter sha256", "path"], rows)
    )


def traits_page(dag_id: str, view: Mapping[str, Any], job_url: Any) -> str:
    """The DAG's Traits tab: one row per trait with its state, figures and curve; totals on top."""
    totals = view["totals"]
    counts = ", ".join(f"{n} {_e(s)}" for s, n in sorted(totals["counts"].items())) or "no traits yet"
    rows = []
    curves = {}
    for row in view["traits"]:
        if row["curve"]:
            curves[row["trait"]] = row["curve"]
        spark = (
            _chart(
                {row["trait"]: row["curve"]}, f"loss of {row['trait']}", width=160, height=60, legend=False
            )
            if row["curve"]
            else "-"
        )
        when = str(row["trained_at"] or "").replace("T", " ").removesuffix("Z")[:16]
        adapter = f"<code>{_e((row['adapter_sha256'] or '-')[:12])}</code>"
        if when or row["backend"]:
            adapter += f'<br><span class="muted">{_e(row["backend"] or "")} {_e(when)}</span>'
        rows.append(
            [
                f"<b>{_e(row['trait'])}</b>"
                + (
                    f'<br><a class="mlflow" href="{_e(row["mlflow_url"])}" target="_blank" '
                    'rel="noopener">MLflow run</a>'
                    if row.get("mlflow_url")
                    else ""
                ),
                _state(row["state"]),
                adapter,
                _job(row["job_id"], job_url(row["job_id"]) if row["job_id"] else None),
                f'<span class="nowrap">{_price(row["price_usd"])}</span>',
                _num(row["final_loss"]),
                _eval(row["eval"]),
                f'<span class="reason">{_e(row["reason"])}</span>' if row["reason"] else "",
                spark,
            ]
        )
    body = (
        f"<h1>Traits of {_e(dag_id)}</h1>"
        f'<p class="muted">from <code>{_e(view["output_dir"])}</code></p>'
        f'<p class="totals"><span>{totals["traits"]} trait(s): {counts}</span>'
        f"{SEP}<span>in flight: {totals['in_flight']}</span>"
        f"{SEP}<span>spend: {_price(totals['spend_usd'])}</span></p>"
        + (_chart(curves, "training loss per trait") if curves else "")
        + _table(
            [
                "trait",
                "state",
                "adapter (backend, trained)",
                "job",
                "price",
                "final loss",
                "held-out eval",
                "failure reason",
                "loss",
            ],
            rows,
        )
        + "<h2>Published mapping</h2>"
        + _mapping_block(view.get("mapping"), "no hypernetwork_data.json yet")
    )
    return page(f"Traits of {dag_id}", body)


def run_page(dag_id: str, view: Mapping[str, Any], job_url: Any) -> str:
    """A run's Training summary tab: its table, its curves, its failures, the mapping it published."""
    summary = view.get("summary") or {}
    run_id = view["run_id"]
    head = (
        f"<h1>Training summary of {_e(run_id)}</h1>"
        f'<p class="muted">{_e(dag_id)}, from <code>{_e(view["output_dir"])}</code></p>'
    )
    if not summary:
        planned = view.get("planned") or []
        note = (
            "This run has not written its summary yet (publish_mapping writes it at the end)."
            if view["state"] == "planned"
            else "Nothing recorded for this run under this output directory (did discover fail?)."
        )
        rows = [[_e(p.get("trait")), _e(p.get("action")), _e(p.get("reason"))] for p in planned]
        body = (
            head
            + f'<p class="muted">{_e(note)}</p>'
            + (_table(["trait", "plan", "reason"], rows) if rows else "")
        )
        return page(f"Training summary of {run_id}", body)
    counts = ", ".join(f"{n} {_e(a)}" for a, n in sorted((summary.get("counts") or {}).items()))
    rows = [_run_row(r, job_url) for r in summary.get("traits") or [] if isinstance(r, dict)]
    failed = summary.get("failed") or {}
    failures = "".join(
        f'<li><b>{_e(t)}</b>: <span class="reason">{_e(why)}</span></li>' for t, why in sorted(failed.items())
    )
    curves = view.get("curves") or {}
    backend = _e(summary.get("backend")) + (" (dry run)" if summary.get("dry_run") else "")
    body = (
        head + f'<p class="totals"><span>{backend}</span>{SEP}<span>{counts or "no traits"}</span>'
        f"{SEP}<span>finished {_e(summary.get('finished_at'))}</span></p>"
        + (
            _chart(curves, "training loss of the traits this run trained")
            if curves
            else '<p class="muted">This run trained nothing, so there is no loss curve.</p>'
        )
        + _table(
            ["trait", "result", "job", "price", "duration", "final loss", "held-out eval", "detail"], rows
        )
        + (f"<h2>Failures</h2><ul>{failures}</ul>" if failures else "")
        + "<h2>Mapping this run published</h2>"
        + _mapping_block(view.get("mapping"), NOT_THIS_RUNS_MAPPING)
    )
    return page(f"Training summary of {run_id}", body)


RUN_COLUMNS = ["trait", "result", "job", "price", "duration", "final loss", "held-out eval", "detail"]
NOT_THIS_RUNS_MAPPING = (
    "This run did not write the current hypernetwork_data.json (a dry run, or a later run replaced it)."
)


def _run_row(r: Mapping[str, Any], job_url: Any) -> list[str]:
    if r.get("total_price") is not None:
        price = _price(r.get("total_price"))
    elif r.get("estimated_price") is not None:
        price = "~" + _price(r.get("estimated_price"))  # an estimate, the job's own price not yet known
    else:
        price = "-"
    detail_class = "reason" if r.get("action") == "failed" else "muted"
    return [
        f"<b>{_e(r.get('trait'))}</b>",
        _state(str(r.get("action") or "")),
        _job(r.get("job_id"), job_url(r["job_id"]) if r.get("job_id") else None),
        f'<span class="nowrap">{price}</span>',
        f'<span class="nowrap">{_num(r.get("duration_s"), "{:.0f} s")}</span>',
        _num(r.get("final_loss")),
        _eval(r.get("eval")),
        f'<span class="{detail_class}">{_e(r.get("detail"))}</span>',
    ]
