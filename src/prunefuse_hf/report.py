"""Run metrics, the cost ledger, the markdown report and plots, and the comparison of runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .constants import METRICS_NAME

ACCURACY_PLOT = "accuracy.png"
COST_PLOT = "selection_cost.png"


def build_metrics(progress: dict) -> dict:
    """Per-round records (sorted), totals of the selection phase and the final model's numbers.

    The selection phase is every surrogate training that fed a selection plus every scoring pass;
    `dense_*` fields are what dense-selector active learning would have spent on the same work.
    """
    rounds = [progress["rounds"][key] for key in sorted(progress["rounds"], key=int)]
    selection_seconds = selection_flops = dense_flops = 0.0
    for record in rounds:
        if "selection" not in record:
            continue
        for part in (record.get("surrogate"), record["selection"]):
            if part:
                selection_seconds += part["seconds"]
                selection_flops += part["flops"]
                dense_flops += part["dense_flops"]
    return {
        "rounds": rounds,
        "final": progress.get("final", {}),
        "costs": progress.get("costs", {}),
        "selection": {
            "seconds": selection_seconds,
            "flops": selection_flops,
            "dense_flops": dense_flops,
            "flops_ratio": selection_flops / dense_flops if dense_flops else None,
        },
        "config": progress.get("config", {}),
        "recipe": progress.get("recipe"),
    }


def budget_accuracies(metrics: dict) -> dict[int, float]:
    """Accuracy of the trained dense/fused model at each labeled-set size the run evaluated it on."""
    return {
        record["dense"]["labeled"]: record["dense"]["accuracy"]
        for record in metrics["rounds"]
        if record.get("dense") and record["dense"].get("accuracy") is not None
    }


def write_report(run_dir, progress: dict, config) -> dict:
    """Write `metrics.json`, `report.md` and the plots into the run directory; returns the metrics."""
    metrics = build_metrics(progress)
    run_dir.write_json(METRICS_NAME, metrics)
    plots = _write_plots(Path(run_dir.path), metrics)
    run_dir.write_text(run_dir.report_path.name, render_report(metrics, config, plots))
    return metrics


def _fmt(value, spec=".4f", missing="–"):
    return missing if value is None else format(value, spec)


def _gflops(value):
    return _fmt(None if value is None else value / 1e9, ".1f")


def render_report(metrics: dict, config, plots: list[str]) -> str:
    costs = metrics["costs"]
    lines = [
        "# PruneFuse run report",
        "",
        f"- strategy: `{config.strategy}`, pruning ratio: {config.pruning_ratio}, fusion: {config.fusion}, "
        f"distillation α: {config.distill_alpha}, surrogate init: `{config.surrogate_init}`",
    ]
    if costs:
        dense, surrogate = costs["dense"], costs["surrogate"]
        lines.append(
            f"- dense model: {dense['params']:,} parameters, {dense['macs']:,} MACs per example; surrogate: "
            f"{surrogate['params']:,} parameters ({surrogate['params'] / dense['params']:.3f}×), "
            f"{surrogate['macs']:,} MACs ({surrogate['macs'] / dense['macs']:.3f}×) at input {costs['image_size']}"
        )
    lines += [
        "",
        "## Rounds",
        "",
        "| round | labeled | surrogate acc | dense/fused acc | surrogate train s | scoring s | "
        "selection GFLOPs | dense-AL GFLOPs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for record in metrics["rounds"]:
        surrogate, dense, selection = (
            record.get("surrogate") or {},
            record.get("dense") or {},
            record.get("selection"),
        )
        labeled = (surrogate or dense).get("labeled")
        flops = dense_flops = None
        if selection:
            flops = selection["flops"] + surrogate.get("flops", 0)
            dense_flops = selection["dense_flops"] + surrogate.get("dense_flops", 0)
        lines.append(
            f"| {record['round']} | {labeled if labeled is not None else '–'} | {_fmt(surrogate.get('accuracy'))} | "
            f"{_fmt(dense.get('accuracy'))} | {_fmt(surrogate.get('seconds'), '.1f')} | "
            f"{_fmt(selection and selection['seconds'], '.1f')} | {_gflops(flops)} | {_gflops(dense_flops)} |"
        )
    selection, final = metrics["selection"], metrics["final"]
    lines += ["", "## Selection cost", ""]
    lines.append(
        f"Selection phase (surrogate training + scoring): {selection['seconds']:.1f} s, "
        f"{_gflops(selection['flops'])} GFLOPs; dense-selector AL would have spent {_gflops(selection['dense_flops'])} "
        f"GFLOPs on the same work (ratio {_fmt(selection['flops_ratio'], '.3f')})."
    )
    if final:
        lines += ["", "## Final model", ""]
        lines.append(
            f"Trained on {final['labeled']} labeled examples for {final['epochs']} epochs in {final['seconds']:.1f} s: "
            f"accuracy {_fmt(final.get('accuracy'))} (at fusion, before training: {_fmt(final.get('accuracy_at_start'))})."
        )
    if plots:
        lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in plots]
    return "\n".join(lines) + "\n"


def _write_plots(directory: Path, metrics: dict) -> list[str]:
    """Accuracy per labeled budget, and cumulative selection cost against dense-selector AL."""
    rounds = metrics["rounds"]
    surrogate_points = [(r["surrogate"]["labeled"], r["surrogate"]["accuracy"]) for r in rounds
                        if r.get("surrogate") and r["surrogate"].get("accuracy") is not None]  # fmt: skip
    accuracy_lines = {
        "surrogate": surrogate_points,
        "fused / dense model": sorted(budget_accuracies(metrics).items()),
    }

    selection_rounds = [r for r in rounds if r.get("selection")]
    spent = [r.get("surrogate", {}).get("flops", 0) + r["selection"]["flops"] for r in selection_rounds]
    spent_dense = [
        r.get("surrogate", {}).get("dense_flops", 0) + r["selection"]["dense_flops"] for r in selection_rounds
    ]
    xs = [r["round"] for r in selection_rounds]
    cost_lines = {
        "this run (surrogate)": list(zip(xs, np.cumsum(spent) / 1e12)),
        "dense-selector AL, same work": list(zip(xs, np.cumsum(spent_dense) / 1e12)),
    }
    written = []
    for name, lines, xlabel, ylabel in (
        (ACCURACY_PLOT, accuracy_lines, "labeled examples", "eval accuracy"),
        (COST_PLOT, cost_lines, "round", "cumulative selection TFLOPs"),
    ):
        if any(lines.values()):
            _line_plot(directory / name, lines, xlabel, ylabel)
            written.append(name)
    return written


def _line_plot(path: Path, lines: dict[str, list[tuple]], xlabel: str, ylabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in lines.items():
        if points:
            ax.plot(*zip(*points), marker="o", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def load_metrics(run_dir) -> dict:
    with open(Path(run_dir) / METRICS_NAME) as f:
        return json.load(f)


def comparison_table(runs: dict[str, dict]) -> str:
    """A plain-text table of accuracy per labeled budget and selection cost for several runs' metrics."""
    budgets = sorted({b for metrics in runs.values() for b in budget_accuracies(metrics)})
    names = list(runs)
    width = max(12, *(len(n) + 2 for n in names))
    lines = ["accuracy of the trained dense/fused model per labeled budget",
             f"{'labeled':>10}" + "".join(f"{n:>{width}}" for n in names)]  # fmt: skip
    for budget in budgets:
        row = [_fmt(budget_accuracies(runs[n]).get(budget)) for n in names]
        lines.append(f"{budget:>10}" + "".join(f"{v:>{width}}" for v in row))
    lines += ["", "selection phase (surrogate training + scoring)"]
    for name in names:
        selection = runs[name]["selection"]
        if selection["dense_flops"]:
            lines.append(
                f"  {name}: {selection['seconds']:.1f} s, {_gflops(selection['flops'])} GFLOPs vs "
                f"{_gflops(selection['dense_flops'])} GFLOPs for dense-selector AL (ratio "
                f"{_fmt(selection['flops_ratio'], '.3f')})"
            )
        else:
            lines.append(f"  {name}: no model-based selection")
    return "\n".join(lines)
