"""The Traits and Training summary tabs read like a report: what a reader compares, in words and
integers, the full figures one click away, and a chart whose legend never covers a curve."""

from __future__ import annotations

import re

from trait_lora.provider.dashboard.charts import loss_svg
from trait_lora.provider.dashboard.pages import run_page, traits_page

EVAL = {
    "n_held_out": 12.0,
    "base_loss": 2.3141,
    "adapter_loss": 1.8712,
    "improvement": 0.4429,
    "opposite_trait": "joy_minus",
    "n_opposite_held_out": 12,
    "opposite_base_loss": 2.2,
    "opposite_adapter_loss": 2.1,
    "own_pole_margin": 0.3429,
    "prefers_own_pole": True,
}


def text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html.replace("&rarr;", "->")))


def row(trait: str, evaluation: dict | None, curve=((1, 2.0), (2, 1.5))) -> dict:
    return {
        "trait": trait,
        "state": "trained",
        "adapter_sha256": "ab" * 32,
        "trained_at": "2026-12-06T05:16:36Z",
        "backend": "local",
        "job_id": None,
        "job_status": None,
        "price_usd": None,
        "final_loss": 1.5,
        "eval": evaluation,
        "reason": None,
        "curve": [list(p) for p in curve],
    }


def test_the_traits_tab_shows_what_a_reader_compares():
    bad = {
        **EVAL,
        "improvement": -0.1,
        "adapter_loss": 2.4141,
        "prefers_own_pole": False,
        "own_pole_margin": -0.2,
    }
    view = {
        "output_dir": "/data/out",
        "totals": {"traits": 2, "counts": {"trained": 2}, "in_flight": 0, "spend_usd": 0},
        "traits": [row("joy_plus", EVAL), row("joy_minus", bad)],
        "mapping": None,
    }
    shown = text(traits_page("trait_lora_local", view, lambda _job: None))
    assert "held-out loss 2.3141 -> 1.8712 (-0.4429)" in shown
    assert "prefers own pole over joy_minus: yes , margin 0.3429" in shown
    assert "held-out loss 2.3141 -> 2.4141 (+0.1000)" in shown and "joy_minus: no" in shown
    assert "12 held out" in shown and "12.0000" not in shown  # counts are integers
    assert "prefers_own_pole yes" in shown  # the full figures, behind the disclosure
    assert "=-" not in shown and "prefers_own_pole=" not in shown  # no key=value dump
    assert "local 2026-12-06 05:16" in shown  # backend and date beside the adapter, not two columns
    html = traits_page("trait_lora_local", view, lambda _job: None)
    assert html.count("<details>") == 2 and html.count("<th>") <= 9 + 2 * len(EVAL)


def test_a_together_eval_without_a_base_figure_says_so_plainly():
    together = {"n_held_out": 3, "base_loss": None, "adapter_loss": 1.5, "improvement": None}
    summary = {
        "run_id": "r1",
        "backend": "together",
        "counts": {"trained": 1},
        "finished_at": "2026-12-06T05:00:00Z",
        "traits": [{"trait": "joy_plus", "action": "trained", "eval": together, "final_loss": 1.5}],
        "failed": {},
    }
    view = {"run_id": "r1", "output_dir": "/o", "state": "finished", "summary": summary, "curves": {}}
    shown = text(run_page("trait_lora_together", view, lambda _job: None))
    assert "held-out loss 1.5000 3 held out" in shown and "->" not in shown


def test_the_chart_legend_sits_beside_the_plot_and_never_over_a_curve():
    curves = {f"axis{i}_plus": [(1, 3.0 - i * 0.1), (2, 2.0 - i * 0.1)] for i in range(30)}
    svg = loss_svg(curves)
    plot = re.search(r'<rect x="(\d+)" y="\d+" width="(\d+)"', svg)
    right_edge = int(plot[1]) + int(plot[2])
    xs = [float(x) for x in re.findall(r'<polyline[^>]*points="([\d.]+)', svg)]
    legend = [float(x) for x in re.findall(r'<line x1="([\d.]+)"[^>]*stroke-width="2"', svg)]
    assert legend and min(legend) > right_edge >= max(xs)
    assert "more</text>" in svg  # 30 names do not fit: the rest are counted, not drawn over each other
