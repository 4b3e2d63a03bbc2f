"""Does PruneFuse pay off for a task? Random, dense-selector AL and PruneFuse side by side on one offline recipe.

The frame of `segmentation.py` and `detection.py`: each says its `Scenario` (recipe, data, metrics, targets) and
calls `main`. Every method runs the scenario's recipe through the real `prunefuse-hf run` code path on the same
seeded data, with the same seeds and training settings:

    random          method random: a random subset of each size, the dense model trained on it
    dense_al        method dense_al: the dense model selects (p = 0); its trained model is the result per budget
    prunefuse       method prunefuse: the p = 0.5 surrogate selects (the recipe's strategy), fusion
    full_pool       the dense model trained on the whole pool (the reference the comparison needs to mean something)

The dense/fused model is trained and evaluated at every budget; a budget's numbers are the metrics the run recorded
for that model (`evaluation` in the run's `metrics.json`). Each run is a resumable run directory, and the JSON is
rewritten after every finished (method, seed) run: an interrupted benchmark, or one continued on another machine with
the same `--runs_dir`, picks up where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from common import machine_info, mean_std

ROOT = Path(__file__).resolve().parent.parent
METHODS = {
    "random": {"method": "random"},
    "dense_al": {"method": "dense_al", "eval_dense_every_round": False},
    "prunefuse": {"method": "prunefuse"},
}
# Fashion-MNIST classes that are easy to tell apart by shape: trouser, sandal, sneaker, bag, ankle boot.
ITEM_CLASSES = [1, 5, 7, 8, 9]
LABELS = {
    "random": "random",
    "dense_al": "dense-selector AL (p=0)",
    "prunefuse": "PruneFuse p=0.5",
    "full_pool": "whole pool (reference)",
}


@dataclass(frozen=True)
class Scenario:
    """
    One task's benchmark.

    Args:
        name (`str`): Stem of the result files (`{name}.json`, `{name}.md`) and of the runs folder.
        title (`str`): The plot's title.
        recipe (`Path`): The recipe every method runs.
        metrics (`tuple[str, ...]`): Evaluation metrics reported per budget (keys of the task's evaluation, such as
            `mean_iou` or `map_50`); the first is the one the targets and the plot use.
        metric_labels (`dict[str, str]`): How the tables name each metric (`mean IoU`, `mAP@50`).
        full, quick (`dict`): The protocols: `pool_size`, `test_size`, `initial_labeled_size`, `query_size`,
            `num_rounds`, `num_train_epochs`.
        targets (`dict`): `points_vs_dense_al` (the largest loss to dense AL, in points), `selection_time_ratio`
            (the most of dense AL's selection time) and `full_pool` (the whole-pool model's least metric).
        synthetic_pool (`Callable`): The built-in pool builder (`synthetic_detection_pool`, ...): the pool is its
            `train` draw of `pool_size` images (seed 0), the test split its `test` draw of `test_size` (seed 1), both of
            `ITEM_CLASSES`.
        prepare (`Callable`, *optional*): `prepare(args, data_dir) -> dict`: recipe fields every run gets (such as
            a pretrained starting checkpoint it writes once under `args.runs_dir`).
        facts (`dict`): Protocol facts the JSON records (such as the pretraining settings).
        measure (`Callable`, *optional*): `measure(args, data_dir) -> dict`: measurements made after the runs, by
            name; each is a target (`measured`, `target`, `met`, and any detail) added to the targets table.
    """

    name: str
    title: str
    recipe: Path
    metrics: tuple[str, ...]
    metric_labels: dict
    full: dict
    quick: dict
    targets: dict
    synthetic_pool: Callable
    prepare: Callable | None = None
    facts: dict = field(default_factory=dict)
    measure: Callable | None = None

    @property
    def metric(self) -> str:
        return self.metrics[0]


def parse_args(scenario: Scenario, argv=None, description: str | None = None):
    """The command line of a scenario's script: `--quick`, `--seeds`, `--device`, `--output`, `--runs_dir`."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="Tiny pool, one round, one epoch (CI).")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="Seeds (default 0 1 2; quick: 0).")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--output", type=Path, default=None, help="Results folder (default benchmarks/results)."
    )
    parser.add_argument("--runs_dir", type=Path, default=None, help="Run directories (resumed when present).")
    args = parser.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    name = f"{scenario.name}_quick" if args.quick else scenario.name
    args.output = args.output or (
        ROOT / "runs" / "benchmarks" / name if args.quick else ROOT / "benchmarks" / "results"
    )
    args.runs_dir = args.runs_dir or ROOT / "runs" / "benchmarks" / name
    args.protocol = scenario.quick if args.quick else scenario.full
    return args


def build_data(scenario: Scenario, args) -> Path:
    """The seeded pool and test split, saved once as a `DatasetDict` the recipe loads by path."""
    import datasets

    directory = args.runs_dir / "data"
    if not (directory / "dataset_dict.json").is_file():
        protocol = args.protocol
        splits = {
            split: scenario.synthetic_pool(size, split=split, item_classes=ITEM_CLASSES, seed=seed)
            for split, size, seed in (("train", protocol["pool_size"], 0), ("test", protocol["test_size"], 1))
        }
        datasets.DatasetDict(splits).save_to_disk(str(directory))
    return directory


def base_recipe(scenario: Scenario, args, data: Path) -> dict:
    """The scenario's recipe without its method fields, on the saved data, with the protocol's budgets and epochs
    (and what `scenario.prepare` adds)."""
    recipe = yaml.safe_load(scenario.recipe.read_text())
    for name in ("method", "pruning_ratio", "strategy", "fusion", "distill_alpha"):
        recipe.pop(name, None)
    protocol = args.protocol
    recipe.update({
        "dataset_name": str(data), "eval_split": "test", "max_pool_size": None, "max_eval_samples": None,
        "initial_labeled_size": protocol["initial_labeled_size"], "query_size": protocol["query_size"],
        "num_rounds": protocol["num_rounds"], "num_train_epochs": protocol["num_train_epochs"],
        "eval_dense_every_round": True, "use_cpu": args.device == "cpu", "disable_tqdm": True, "report_to": "none",
    })  # fmt: skip
    if scenario.prepare is not None:
        recipe.update(scenario.prepare(args, data))
    return recipe


def run_one(args, recipe: dict, method: str, seed: int) -> dict:
    """Run (or resume, or reuse) one run directory and return its metrics."""
    from prunefuse_hf.cli.run import run_from_command_line

    output_dir = args.runs_dir / f"{method}-seed{seed}"
    metrics_path = output_dir / "metrics.json"
    if metrics_path.is_file():
        return json.loads(metrics_path.read_text())
    if method == "full_pool":
        # Every pool image labeled: two random draws of half the pool, one training on the whole of it.
        half = args.protocol["pool_size"] // 2
        overrides = {
            "method": "random",
            "initial_labeled_size": half,
            "num_rounds": 1,
            "query_size": args.protocol["pool_size"] - half,
            "eval_dense_every_round": False,
        }
    else:
        overrides = METHODS[method]
    recipe = {**recipe, **overrides, "seed": seed, "output_dir": str(output_dir)}
    output_dir.mkdir(parents=True, exist_ok=True)
    recipe_path = output_dir.parent / f"{output_dir.name}.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    flags = ["--resume"] if (output_dir / "state.json").is_file() else ["--overwrite"]
    started = time.perf_counter()
    metrics = run_from_command_line(["--config", str(recipe_path), *flags])
    print(f"== {method} / seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)
    return metrics


def per_budget(metrics: dict, metric: str) -> dict[str, float]:
    """Labeled count -> `metric` of the method's model at that budget (dense AL: its selector is that model)."""
    from prunefuse_hf.utils.run_metrics import budget_accuracies, record_metric

    budgets = {}
    if metrics["config"]["pruning_ratio"] == 0:
        for record in (r["surrogate"] for r in metrics["rounds"] if r.get("surrogate")):
            budgets[record["labeled"]] = record_metric(metrics, record, metric)
    budgets.update(budget_accuracies(metrics, metric))
    final = metrics["final"]
    budgets[final.get("labeled")] = record_metric(metrics, final, metric)
    return {str(k): float(v) for k, v in sorted(budgets.items()) if k is not None and v is not None}


def summary(scenario: Scenario, metrics: dict) -> dict:
    """One run's numbers: each metric per budget, selection seconds and FLOPs, final training seconds."""
    return {
        **{metric: per_budget(metrics, metric) for metric in scenario.metrics},
        "selection_seconds": metrics["selection"]["seconds"],
        "selection_flops": metrics["selection"]["flops"],
        "final_training_seconds": metrics["final_training"]["seconds"],
    }


def report(scenario: Scenario, args, summaries: dict, started: float) -> dict:
    """The JSON result: per method and budget the mean ± std over seeds, the comparisons with dense AL (per seed,
    then over seeds), the protocol, the machine and the targets."""
    metric = scenario.metric
    methods = {}
    for method, by_seed in summaries.items():
        entry = {}
        for name in scenario.metrics:
            budgets = sorted({int(b) for s in by_seed.values() for b in s[name]})
            entry[name] = {str(b): mean_std([s[name].get(str(b)) for s in by_seed.values()]) for b in budgets}
        methods[method] = {
            **entry,
            "selection_seconds": mean_std([s["selection_seconds"] for s in by_seed.values()]),
            "selection_flops": mean_std([s["selection_flops"] for s in by_seed.values()]),
            "per_seed": {str(seed): s for seed, s in by_seed.items()},
        }
    dense = summaries.get("dense_al", {})
    comparisons = {}
    for method in ("prunefuse", "random"):
        by_seed = summaries.get(method, {})
        shared = [seed for seed in by_seed if seed in dense]
        if not shared:
            continue
        budgets = sorted({b for seed in shared for b in by_seed[seed][metric]}, key=int)
        entry = {
            "points_vs_dense_al": {
                b: mean_std([100 * (by_seed[s][metric][b] - dense[s][metric][b]) for s in shared
                             if b in by_seed[s][metric] and b in dense[s][metric]]) for b in budgets
            },
        }  # fmt: skip
        if method == "prunefuse":
            entry["selection_time_ratio"] = mean_std(
                [by_seed[s]["selection_seconds"] / dense[s]["selection_seconds"] for s in shared]
            )
            entry["selection_flops_ratio"] = mean_std(
                [by_seed[s]["selection_flops"] / dense[s]["selection_flops"] for s in shared]
            )
        comparisons[method] = entry
    result = {
        "scenario": scenario.name,
        "metric": metric,
        "metrics": list(scenario.metrics),
        "protocol": {
            **args.protocol,
            "item_classes": ITEM_CLASSES,
            **scenario.facts,
            "recipe": str(scenario.recipe.relative_to(ROOT)),
        },
        "seeds": args.seeds,
        "methods": methods,
        "comparisons": comparisons,
        "command": f"python benchmarks/{scenario.name}.py " + " ".join(args.argv),
        "machine": machine_info(args.device),
        "invocation_seconds": time.perf_counter() - started,
    }
    result["targets"] = targets(scenario, result)
    return result


def targets(scenario: Scenario, result: dict) -> dict:
    """Each target, met or missed, with the measured number (means over seeds)."""
    metric, goals = scenario.metric, scenario.targets
    checks = {}
    methods, comparisons = result["methods"], result["comparisons"]
    prunefuse, random = methods.get("prunefuse"), methods.get("random")
    if prunefuse and random:
        gaps = {b: 100 * (prunefuse[metric][b]["mean"] - random[metric][b]["mean"])
                for b in prunefuse[metric] if b in random[metric]}  # fmt: skip
        checks["above_random"] = {"measured_points": gaps, "target": "> 0 at every budget",
                                  "met": all(g > 0 for g in gaps.values())}  # fmt: skip
    versus_dense = comparisons.get("prunefuse")
    if versus_dense:
        gaps = {b: stat["mean"] for b, stat in versus_dense["points_vs_dense_al"].items()}
        checks["within_dense_al"] = {"measured_points": gaps, "target": f">= -{goals['points_vs_dense_al']} at every budget",
                                     "met": all(g >= -goals["points_vs_dense_al"] for g in gaps.values())}  # fmt: skip
        ratio = versus_dense["selection_time_ratio"]["mean"]
        checks["selection_time_ratio"] = {"measured": ratio, "target": f"<= {goals['selection_time_ratio']}",
                                          "met": ratio <= goals["selection_time_ratio"]}  # fmt: skip
    full = methods.get("full_pool")
    if full:
        value = next(iter(full[metric].values()))["mean"]
        checks[f"full_pool_{metric}"] = {"measured": value, "target": f">= {goals['full_pool']}",
                                         "met": value >= goals["full_pool"]}  # fmt: skip
    return checks


def markdown(scenario: Scenario, result: dict) -> str:
    """The result as Markdown: a table per metric, the FLOPs ratio and the targets, met or missed."""
    methods = result["methods"]
    lines = []
    for metric in scenario.metrics:
        budgets = sorted({int(b) for m in methods.values() for b in m[metric]})
        lines += [
            f"{scenario.metric_labels[metric]} (%) per labeled budget, mean ± std over seeds {result['seeds']}; "
            "selection seconds summed over rounds.",
            "",
            "| method | " + " | ".join(str(b) for b in budgets) + " | selection s |",
            "|---|" + "---:|" * (len(budgets) + 1),
        ]
        for name, entry in methods.items():
            cells = []
            for b in budgets:
                stat = entry[metric].get(str(b))
                cells.append(
                    f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}"
                    if stat and stat["mean"] is not None
                    else "–"
                )
            seconds = entry["selection_seconds"]["mean"]
            lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + f" | {seconds:.0f} |")
        lines.append("")
    flops = result["comparisons"].get("prunefuse", {}).get("selection_flops_ratio", {}).get("mean")
    if flops is not None:
        lines += [f"PruneFuse's selection FLOPs are {flops:.3f}x dense AL's (the same run's count).", ""]
    lines += ["| target | measured | met |", "|---|---|---|"]
    for name, check in result["targets"].items():
        measured = check.get("measured", check.get("measured_points"))
        if isinstance(measured, dict):
            measured = ", ".join(f"{b}: {v:+.1f}" for b, v in measured.items())
        elif isinstance(measured, float):
            measured = f"{measured:.3f}"
        lines.append(f"| {name} ({check['target']}) | {measured} | {'PASS' if check['met'] else 'MISS'} |")
    return "\n".join(lines) + "\n"


def plot(scenario: Scenario, result: dict, output: Path) -> str:
    """The first metric per budget (mean ± std over seeds) of each method, the whole-pool model as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = scenario.metric
    figure, ax = plt.subplots(figsize=(6, 4.5))
    for name, entry in result["methods"].items():
        budgets = sorted(int(b) for b in entry[metric])
        means = [100 * entry[metric][str(b)]["mean"] for b in budgets]
        if name == "full_pool":
            ax.axhline(means[0], linestyle="--", color="gray", label=f"{LABELS[name]}, {budgets[0]:,} labels")
            continue
        stds = [100 * entry[metric][str(b)]["std"] for b in budgets]
        ax.errorbar(budgets, means, yerr=stds, marker="o", capsize=3, label=LABELS[name])
    ax.set(title=scenario.title, xlabel="labeled images", ylabel=f"test {scenario.metric_labels[metric]} (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = output / f"{scenario.name}_{metric}.png"
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path.name


def main(scenario: Scenario, argv=None, description: str | None = None) -> dict:
    """Run (or resume) every method and seed, then the whole-pool reference and `scenario.measure`; write the JSON,
    the Markdown and the plot into `--output` and return the result."""
    args = parse_args(scenario, argv, description)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    started = time.perf_counter()
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    data = build_data(scenario, args)
    recipe = base_recipe(scenario, args, data)
    args.output.mkdir(parents=True, exist_ok=True)
    summaries: dict[str, dict[int, dict]] = {}
    result = {}
    json_path, markdown_path = args.output / f"{scenario.name}.json", args.output / f"{scenario.name}.md"
    plan = [(method, seed) for seed in args.seeds for method in METHODS] + [("full_pool", args.seeds[0])]
    for method, seed in plan:
        summaries.setdefault(method, {})[seed] = summary(scenario, run_one(args, recipe, method, seed))
        # Written after every run: what landed is kept even if the benchmark stops here.
        result = report(scenario, args, summaries, started)
        json_path.write_text(json.dumps(result, indent=1) + "\n")
        markdown_path.write_text(markdown(scenario, result))
    if scenario.measure is not None:
        result["targets"].update(scenario.measure(args, data))
    result["plots"] = [plot(scenario, result, args.output)]
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    markdown_path.write_text(markdown(scenario, result))
    print(markdown(scenario, result))
    return result
