"""The run summary: per trait what happened (trained / resumed / skipped / failed), at what cost.

Written beside a loss-curve PNG for the run, from Together's metrics or the local trainer's, so a
user sees in one place which adapters changed and whether their training looked healthy.
"""

from __future__ import annotations

from typing import Any

from trait_lora.core.handoff.runs import Output
from trait_lora.core.jobs.budget import usd
from trait_lora.core.storage.layout import run_key
from trait_lora.core.storage.ledger_io import utc_now
from trait_lora.core.storage.records import as_store
from trait_lora.core.storage.store import encode_json

SUMMARY_FILE = "summary.json"
LATEST_SUMMARY = "run_summary.json"
PLOT_FILE = "loss_curves.png"
METRICS_DIR = "metrics"  # per-trait loss curves: the download step (Together) or the local trainer
COLUMNS = ("trait", "action", "job_id", "price", "duration_s", "final_loss", "eval base->adapter", "detail")


def build_summary(
    *,
    run_id: str,
    backend: str,
    plans: list[dict[str, Any]],
    results: dict[str, dict[str, Any]],
    failures: dict[str, dict[str, Any]],
    dry_run: bool = False,
) -> dict[str, Any]:
    """One row per planned trait; a planned trait with neither a result nor a recorded failure failed silently
    (its task was killed or never ran), and says so."""
    rows = []
    for plan in plans:
        trait = plan["trait"]
        row: dict[str, Any] = {"trait": trait, "job_id": plan.get("job_id"), "planned": plan["action"]}
        if dry_run:
            row.update(action=f"would {plan['action']}", detail=plan["reason"])
        elif plan["action"] == "skip":
            row.update(action="skipped", detail=plan["reason"])
        elif trait in results:
            res = results[trait]
            row.update(
                action=res.get("action", "trained"),
                job_id=res.get("job_id"),
                estimated_price=res.get("estimated_price"),
                total_price=res.get("total_price"),
                duration_s=res.get("duration_s"),
                final_loss=res.get("final_loss"),
                adapter_sha256=res.get("adapter_sha256"),
                eval=res.get("eval"),
                detail=res.get("detail", ""),
            )
        else:
            failure = failures.get(trait) or {}
            reason = failure.get("reason") or (
                "; ".join(plan.get("problems") or [])
                or "a task for this trait did not finish (see its log in the Airflow UI)"
            )
            row.update(action="failed", detail=reason, failed_step=failure.get("step"))
            if isinstance(failure.get("pod"), dict):  # a pod's phase, container state, exit code
                row["pod"] = failure["pod"]
        rows.append(row)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["action"]] = counts.get(row["action"], 0) + 1
    return {
        "run_id": run_id,
        "backend": backend,
        "dry_run": dry_run,
        "finished_at": utc_now(),
        "counts": counts,
        "traits": rows,
        "failed": {r["trait"]: r["detail"] for r in rows if r["action"] == "failed"},
    }


def _price(row: dict[str, Any]) -> str:
    total, estimated = row.get("total_price"), row.get("estimated_price")
    if total is not None:
        return usd(float(total))
    if estimated is not None:
        return "~" + usd(float(estimated))
    return "-"


def text_table(rows: list[list[Any]], headers: list[str] | tuple[str, ...]) -> str:
    """Left-aligned columns under a dashed rule: what a terminal user reads."""
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def eval_cell(figures: Any) -> str:
    """``7.85->7.11 (own pole +0.54)``: held-out loss of the base model, then of the adapter; Together
    reports the adapter's alone; with metrics but no held-out loss we know, it says so."""
    if not isinstance(figures, dict):
        return "-"
    if figures.get("missing"):
        return "no held-out loss in Together's metrics (see the trait's metric_keys)"
    if figures.get("base_loss") is None and isinstance(figures.get("adapter_loss"), int | float):
        return f"held-out {figures['adapter_loss']:.3f}"
    if None in (figures.get("base_loss"), figures.get("adapter_loss")):
        return "-"
    cell = f"{figures['base_loss']:.3f}->{figures['adapter_loss']:.3f}"
    if isinstance(figures.get("own_pole_margin"), int | float):
        cell += f" (own pole {figures['own_pole_margin']:+.3f})"
    return cell


def format_table(summary: dict[str, Any], width: int = 60) -> str:
    rows = []
    for r in summary["traits"]:
        loss = r.get("final_loss")
        duration = r.get("duration_s")
        rows.append(
            [
                r["trait"],
                r["action"],
                r.get("job_id") or "-",
                _price(r),
                f"{duration:.0f}" if isinstance(duration, int | float) else "-",
                f"{loss:.4f}" if isinstance(loss, int | float) else "-",
                eval_cell(r.get("eval")),
                (r.get("detail") or "")[:width],
            ]
        )
    counts = ", ".join(f"{n} {a}" for a, n in sorted(summary["counts"].items()))
    footer = f"run {summary['run_id']} ({summary['backend']}): {counts or 'no traits'}"
    return "\n".join([text_table(rows, COLUMNS), "", footer])


def plot_losses(curves: dict[str, list[tuple[int, float]]]) -> bytes | None:
    """All traits' loss per step on one figure, as PNG bytes; None when no trait has metrics."""
    curves = {t: pts for t, pts in curves.items() if pts}
    if not curves:
        return None
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for trait, points in sorted(curves.items()):
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, label=trait, linewidth=1.2, marker="o", markersize=3)  # 1-step runs stay visible
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("LoRA training loss per trait")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def load_curves(output_dir: Output, traits: list[str]) -> dict[str, list[tuple[int, float]]]:
    """Loss curves recorded by the download step (Together) or the local trainer, per trait."""
    store = as_store(output_dir)
    curves: dict[str, list[tuple[int, float]]] = {}
    for trait in traits:
        try:
            blob = store.read(f"{METRICS_DIR}/{trait}.json")
            data = blob.json() if blob is not None else None
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        points = [
            (int(s["step"]), float(s["loss"]))
            for s in data.get("steps", [])
            if isinstance(s, dict) and s.get("loss") is not None
        ]
        if points:
            curves[trait] = points
    return curves


def write_summary(output_dir: Output, summary: dict[str, Any]) -> dict[str, str]:
    """Write the run's summary (+ plot) under runs/<run>/ and the latest copy at the output root.

    Each object has one writer (the run's publish task), so plain whole-object writes suffice."""
    store = as_store(output_dir)
    folder = run_key(summary["run_id"])
    trained = [r["trait"] for r in summary["traits"] if r["action"] in ("trained", "resumed")]
    plot = plot_losses(load_curves(store, trained))
    if plot:
        store.put(f"{folder}/{PLOT_FILE}", plot)
    summary = {**summary, "loss_plot": store.url(f"{folder}/{PLOT_FILE}") if plot else None}
    store.put(f"{folder}/{SUMMARY_FILE}", encode_json(summary))
    store.put(LATEST_SUMMARY, encode_json(summary))
    store.put(f"{folder}/summary.txt", (format_table(summary) + "\n").encode())
    paths = {"summary": store.url(f"{folder}/{SUMMARY_FILE}"), "table": store.url(f"{folder}/summary.txt")}
    if plot:
        paths["loss_plot"] = store.url(f"{folder}/{PLOT_FILE}")
    return paths
