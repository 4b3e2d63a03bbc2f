"""Run metrics, the cost ledger, the markdown report and plots, and the comparison of runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..annotation.rounds import annotation_summary
from ..constants import ACCURACY_PLOT, CLASS_BALANCE_PLOT, COST_PLOT, METRICS_NAME
from ..utils.run_metrics import budget_accuracies, build_metrics


def _selector_training(record: dict) -> dict:
    """What the round spent to prepare its selection besides scoring: its surrogate training when it fed the
    selection (not when it only fed fusion), round 1's set-up (pool features, cold start, distillation), the feature
    proxy's refresh and a dense training that only fed it."""
    surrogate = record.get("surrogate") or {}
    parts = [surrogate] if surrogate.get("purpose", "selection") == "selection" else []
    parts += [record[key] for key in ("setup", "proxy_refresh") if record.get(key)]
    parts += [record["dense"]] if (record.get("dense") or {}).get("purpose") == "selection" else []
    return {key: sum(part.get(key, 0) for part in parts) for key in ("flops", "dense_flops")} if parts else {}


def write_report(run_dir, progress: dict, config, class_names: list[str] | None = None) -> dict:
    """Write `metrics.json`, `report.md` and the plots into the run directory; returns the metrics."""
    metrics = build_metrics(progress)
    run_dir.write_json(METRICS_NAME, metrics)
    plots = _write_plots(Path(run_dir.path), metrics)
    balance = class_balance(progress.get("pool", {}), class_names)
    if balance:
        _class_balance_plot(Path(run_dir.path) / CLASS_BALANCE_PLOT, balance, class_names)
        plots.append(CLASS_BALANCE_PLOT)
    annotation = None
    if getattr(config, "annotation", None) == "human" and class_names:
        annotation = annotation_summary(run_dir.path, class_names)
    run_dir.write_text(
        run_dir.report_path.name, render_report(metrics, config, plots, balance, class_names, annotation)
    )
    return metrics


def class_balance(pool_state: dict, class_names: list[str] | None) -> dict[int, list[int]]:
    """Examples of each class labeled in each round, `{round: [count per class id]}` (round 1: the first query)."""
    if not class_names or "labels" not in pool_state:
        return {}
    rounds, labels = np.asarray(pool_state["rounds"]), np.asarray(pool_state["labels"])
    return {
        int(r): np.bincount(labels[(rounds == r) & (labels >= 0)], minlength=len(class_names)).tolist()
        for r in np.unique(rounds[rounds > 0])
    }


def _fmt(value, spec=".4f", missing="–"):
    return missing if value is None else format(value, spec)


def _gflops(value):
    return _fmt(None if value is None else value / 1e9, ".1f")


def render_report(
    metrics: dict,
    config,
    plots: list[str],
    balance: dict | None = None,
    class_names: list[str] | None = None,
    annotation: dict | None = None,
) -> str:
    costs = metrics["costs"]
    metric = metrics.get("metric", "accuracy")
    short = {"accuracy": "acc", "map": "mAP", "mean_iou": "mIoU"}.get(metric, metric)
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
        f"| round | labeled | surrogate {short} | dense/fused {short} | surrogate train s | scoring s | "
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
            selector = _selector_training(record)
            flops = selection["flops"] + selector.get("flops", 0)
            dense_flops = selection["dense_flops"] + selector.get("dense_flops", 0)
        lines.append(
            f"| {record['round']} | {labeled if labeled is not None else '–'} | {_fmt(surrogate.get(metric))} | "
            f"{_fmt(dense.get(metric))} | {_fmt(surrogate.get('seconds'), '.1f')} | "
            f"{_fmt(selection and selection['seconds'], '.1f')} | {_gflops(flops)} | {_gflops(dense_flops)} |"
        )
    selection, final = metrics["selection"], metrics["final"]
    lines += ["", "## Selection cost", ""]
    lines.append(
        f"Selection phase (surrogate training + scoring): {selection['seconds']:.1f} s, "
        f"{_gflops(selection['flops'])} GFLOPs; dense-selector AL would have spent {_gflops(selection['dense_flops'])} "
        f"GFLOPs on the same work (ratio {_fmt(selection['flops_ratio'], '.3f')})."
    )
    teacher, final_training = metrics["fusion_teacher"], metrics["final_training"]
    if teacher["seconds"]:
        lines.append(
            f"Surrogate trainings that only fed fusion or distillation: {teacher['seconds']:.1f} s, "
            f"{_gflops(teacher['flops'])} GFLOPs (not selection cost)."
        )
    if final_training["seconds"]:
        lines.append(
            f"Training of the dense / fused model: {final_training['seconds']:.1f} s, "
            f"{_gflops(final_training['flops'])} GFLOPs."
        )
    if balance:
        lines += ["", "## Classes of the labeled examples per round", "",
                  "| round | " + " | ".join(class_names) + " |", "|---|" + "---|" * len(class_names)]  # fmt: skip
        for round_, counts in sorted(balance.items()):
            lines.append(
                f"| {round_}{' (first query)' if round_ == 1 else ''} | "
                + " | ".join(map(str, counts))
                + " |"
            )
    if annotation:
        lines += _annotation_lines(annotation)
    if final:
        lines += ["", "## Final model", ""]
        lines.append(
            f"Trained on {final['labeled']} labeled examples for {final['epochs']} epochs in {final['seconds']:.1f} s: "
            f"{metric} {_fmt(final.get(metric))} (at fusion, before training: {_fmt(final.get(f'{metric}_at_start'))})."
        )
    if plots:
        lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in plots]
    return "\n".join(lines) + "\n"


def _annotation_lines(annotation: dict[int, dict]) -> list[str]:
    """Per round: who labeled, how often several annotators agreed, how disagreements were resolved, skips."""
    lines = [
        "",
        "## Annotation",
        "",
        "| round | labeled | annotators | answered by several | agreed | resolved by policy | skipped |",
        "|---|---|---|---|---|---|---|",
    ]
    for round_, entry in annotation.items():
        multi = entry["multi"]
        agreement = f"{entry['agreed']} ({entry['agreed'] / multi:.0%})" if multi else "–"
        resolved = ", ".join(f"{how} {n}" for how, n in sorted(entry["resolved"].items())) or "–"
        lines.append(
            f"| {round_} | {entry['labeled']} | {entry['annotators']} | {multi} | {agreement} | {resolved} | "
            f"{entry['skipped']} |"
        )
    return lines


def _write_plots(directory: Path, metrics: dict) -> list[str]:
    """Accuracy per labeled budget, and cumulative selection cost against dense-selector AL."""
    rounds, metric = metrics["rounds"], metrics.get("metric", "accuracy")
    surrogate_points = [(r["surrogate"]["labeled"], r["surrogate"][metric]) for r in rounds
                        if r.get("surrogate") and r["surrogate"].get(metric) is not None]  # fmt: skip
    accuracy_lines = {
        "surrogate": surrogate_points,
        "fused / dense model": sorted(budget_accuracies(metrics).items()),
    }

    selection_rounds = [r for r in rounds if r.get("selection")]
    spent = [_selector_training(r).get("flops", 0) + r["selection"]["flops"] for r in selection_rounds]
    spent_dense = [
        _selector_training(r).get("dense_flops", 0) + r["selection"]["dense_flops"] for r in selection_rounds
    ]
    xs = [r["round"] for r in selection_rounds]
    cost_lines = {
        "this run (surrogate)": list(zip(xs, np.cumsum(spent) / 1e12)),
        "dense-selector AL, same work": list(zip(xs, np.cumsum(spent_dense) / 1e12)),
    }
    written = []
    for name, lines, xlabel, ylabel in (
        (ACCURACY_PLOT, accuracy_lines, "labeled examples", f"eval {metric}"),
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


def _class_balance_plot(path: Path, balance: dict[int, list[int]], class_names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = sorted(balance)
    counts = np.asarray([balance[r] for r in rounds], dtype=float)  # [rounds, classes]
    fig, ax = plt.subplots(figsize=(7, 4))
    bottom = np.zeros(len(rounds))
    colors = plt.get_cmap("tab20")(np.linspace(0, 1, max(len(class_names), 2)))
    for c, name in enumerate(class_names):
        ax.bar([str(r) for r in rounds], counts[:, c], bottom=bottom, label=name, color=colors[c])
        bottom += counts[:, c]
    ax.set_xlabel("round (1 = first query)")
    ax.set_ylabel("labeled examples")
    ax.set_title("classes of the labeled examples per round")
    if len(class_names) <= 20:
        ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def comparison_table(runs: dict[str, dict]) -> str:
    """A plain-text table of accuracy per labeled budget and selection cost for several runs' metrics."""
    budgets = sorted({b for metrics in runs.values() for b in budget_accuracies(metrics)})
    names = list(runs)
    width = max(12, *(len(n) + 2 for n in names))
    lines = []
    if budgets:  # runs without an evaluation set measured no accuracy: no table rather than an empty one
        metric = next(iter(runs.values())).get("metric", "accuracy")
        lines = [f"{metric} of the trained dense/fused model per labeled budget",
                 f"{'labeled':>10}" + "".join(f"{n:>{width}}" for n in names), ""]  # fmt: skip
    for budget in budgets:
        row = [_fmt(budget_accuracies(runs[n]).get(budget)) for n in names]
        lines.insert(-1, f"{budget:>10}" + "".join(f"{v:>{width}}" for v in row))
    lines += ["cost by purpose: selection (selector training + scoring), fusion teacher (surrogate trainings that",
              "only feed fusion / distillation), final training (dense or fused model)"]  # fmt: skip
    for name in names:
        metrics = runs[name]
        selection = metrics["selection"]
        if selection["dense_flops"]:
            lines.append(
                f"  {name}: selection {selection['seconds']:.1f} s, {_gflops(selection['flops'])} GFLOPs vs "
                f"{_gflops(selection['dense_flops'])} GFLOPs for dense-selector AL (ratio "
                f"{_fmt(selection['flops_ratio'], '.3f')})"
            )
        else:
            lines.append(f"  {name}: selection {selection['seconds']:.1f} s, no model-based selection")
        for purpose, label in (("fusion_teacher", "fusion teacher"), ("final_training", "final training")):
            part = metrics.get(purpose)
            if part and part["seconds"]:
                lines.append(
                    f"  {' ' * len(name)}  {label} {part['seconds']:.1f} s, {_gflops(part['flops'])} GFLOPs"
                )
    return "\n".join(lines)
