"""Does PruneFuse pay off for semantic segmentation? Random, dense-selector AL and PruneFuse side by side.

Every method runs the offline segmentation recipe (`recipes/synthetic-segmentation-segformer/`: a small SegFormer
built from config, trained with its own per-pixel loss) through the real `prunefuse-hf run` code path on the same
seeded data, with the same seeds and training settings:

    random          method random: a random subset of each size, the dense model trained on it
    dense_al        method dense_al: the dense model selects (p = 0); its trained model is the result per budget
    prunefuse       method prunefuse: the p = 0.5 surrogate selects (least confidence, mean over pixels), fusion
    full_pool       the dense model trained on the whole pool (the reference the comparison needs to mean something)

The data: the built-in synthetic segmentation pool (Fashion-MNIST items pasted at several scales on textured 64-px
canvases) restricted to five item classes that are easy to tell apart (trouser, sandal, sneaker, bag, ankle boot;
six classes with the background), 1,000 pool images and 300 test images. Budgets: 100 random images, then three
rounds of +100 (100, 200, 300, 400 labels); every training runs 20 epochs (the recipe's 10 left the whole-pool model at
0.53 mean IoU, 20 bring it above 0.6); the dense/fused model is trained and evaluated (mean IoU as `evaluate`'s
`mean_iou` defines it) at every budget.

Each run is a resumable run directory, and the JSON is rewritten after every finished (method, seed) run: an
interrupted benchmark, or one continued on another machine with the same `--runs_dir`, picks up where it stopped.

    python benchmarks/segmentation.py                 # 3 seeds
    python benchmarks/segmentation.py --seeds 0       # one seed
    python benchmarks/segmentation.py --quick         # tiny pool, one round: seconds (CI)

Writes `segmentation.json`, `segmentation.md` and the plot `segmentation_mean_iou.png` into `--output` (default
`benchmarks/results`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "synthetic-segmentation-segformer" / "prunefuse.yaml"
METRIC = "mean_iou"
# Fashion-MNIST classes that are easy to tell apart by shape: trouser, sandal, sneaker, bag, ankle boot.
ITEM_CLASSES = [1, 5, 7, 8, 9]
METHODS = {
    "random": {"method": "random"},
    "dense_al": {"method": "dense_al", "eval_dense_every_round": False},
    "prunefuse": {"method": "prunefuse"},
}
LABELS = {
    "random": "random",
    "dense_al": "dense-selector AL (p=0)",
    "prunefuse": "PruneFuse p=0.5",
    "full_pool": "whole pool (reference)",
}
FULL = {"pool_size": 1000, "test_size": 300, "initial_labeled_size": 100, "query_size": 100, "num_rounds": 3,
        "num_train_epochs": 20}  # fmt: skip
QUICK = {"pool_size": 60, "test_size": 20, "initial_labeled_size": 20, "query_size": 20, "num_rounds": 1,
         "num_train_epochs": 1}  # fmt: skip
# The targets: above random at every budget, within 1 mIoU point of dense AL at <= 0.4x its selection time;
# the whole-pool model at mIoU >= 0.6.
TARGETS = {"points_vs_dense_al": 1.0, "selection_time_ratio": 0.4, "full_pool_mean_iou": 0.6}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
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
    name = "segmentation_quick" if args.quick else "segmentation"
    args.output = args.output or (
        ROOT / "runs" / "benchmarks" / name if args.quick else ROOT / "benchmarks" / "results"
    )
    args.runs_dir = args.runs_dir or ROOT / "runs" / "benchmarks" / name
    args.protocol = QUICK if args.quick else FULL
    return args


def build_data(args) -> Path:
    """The seeded pool and test split, saved once as a `DatasetDict` the recipe loads by path."""
    import datasets

    from prunefuse_hf.tasks.segmentation_synthetic import synthetic_segmentation_pool

    directory = args.runs_dir / "data"
    if (directory / "dataset_dict.json").is_file():
        return directory
    protocol = args.protocol
    splits = {
        split: synthetic_segmentation_pool(size, split=split, item_classes=ITEM_CLASSES, seed=seed)
        for split, size, seed in (("train", protocol["pool_size"], 0), ("test", protocol["test_size"], 1))
    }
    datasets.DatasetDict(splits).save_to_disk(str(directory))
    return directory


def base_recipe(args, data: Path) -> dict:
    recipe = yaml.safe_load(RECIPE.read_text())
    for name in ("method", "pruning_ratio", "strategy", "fusion", "distill_alpha"):
        recipe.pop(name, None)
    protocol = args.protocol
    recipe.update({
        "dataset_name": str(data), "eval_split": "test", "max_pool_size": None, "max_eval_samples": None,
        "initial_labeled_size": protocol["initial_labeled_size"], "query_size": protocol["query_size"],
        "num_rounds": protocol["num_rounds"], "eval_dense_every_round": True,
        "use_cpu": args.device == "cpu", "disable_tqdm": True, "report_to": "none",
    })  # fmt: skip
    if "num_train_epochs" in protocol:
        recipe["num_train_epochs"] = protocol["num_train_epochs"]
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


def per_budget(metrics: dict) -> dict[str, float]:
    """Labeled count -> mean IoU of the method's model at that budget (dense AL: its selector is that model)."""
    from prunefuse_hf.utils.run_metrics import budget_accuracies

    budgets = {}
    if metrics["config"]["pruning_ratio"] == 0:
        budgets = {
            r["surrogate"]["labeled"]: r["surrogate"][METRIC] for r in metrics["rounds"] if r.get("surrogate")
        }
    budgets.update(budget_accuracies(metrics))
    final = metrics["final"]
    if final.get("labeled") is not None and final.get(METRIC) is not None:
        budgets[final["labeled"]] = final[METRIC]
    return {str(k): float(v) for k, v in sorted(budgets.items())}


def summary(metrics: dict) -> dict:
    return {
        METRIC: per_budget(metrics),
        "selection_seconds": metrics["selection"]["seconds"],
        "selection_flops": metrics["selection"]["flops"],
        "final_training_seconds": metrics["final_training"]["seconds"],
    }


def mean_std(values) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "n": len(values)}  # fmt: skip


def report(args, summaries: dict, started: float) -> dict:
    methods = {}
    for method, by_seed in summaries.items():
        budgets = sorted({int(b) for s in by_seed.values() for b in s[METRIC]})
        methods[method] = {
            METRIC: {str(b): mean_std([s[METRIC].get(str(b)) for s in by_seed.values()]) for b in budgets},
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
        budgets = sorted({b for seed in shared for b in by_seed[seed][METRIC]}, key=int)
        entry = {
            "points_vs_dense_al": {
                b: mean_std([100 * (by_seed[s][METRIC][b] - dense[s][METRIC][b]) for s in shared
                             if b in by_seed[s][METRIC] and b in dense[s][METRIC]]) for b in budgets
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
        "scenario": "segmentation",
        "metric": METRIC,
        "protocol": {**args.protocol, "item_classes": ITEM_CLASSES, "recipe": str(RECIPE.relative_to(ROOT))},
        "seeds": args.seeds,
        "methods": methods,
        "comparisons": comparisons,
        "command": "python benchmarks/segmentation.py " + " ".join(args.argv),
        "machine": {"device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "CPU",
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
        "invocation_seconds": time.perf_counter() - started,
    }  # fmt: skip
    result["targets"] = targets(result)
    return result


def targets(result: dict) -> dict:
    """Each target, met or missed, with the measured number (means over seeds)."""
    checks = {}
    methods, comparisons = result["methods"], result["comparisons"]
    prunefuse, random = methods.get("prunefuse"), methods.get("random")
    if prunefuse and random:
        gaps = {b: 100 * (prunefuse[METRIC][b]["mean"] - random[METRIC][b]["mean"])
                for b in prunefuse[METRIC] if b in random[METRIC]}  # fmt: skip
        checks["above_random"] = {"measured_points": gaps, "target": "> 0 at every budget",
                                  "met": all(g > 0 for g in gaps.values())}  # fmt: skip
    versus_dense = comparisons.get("prunefuse")
    if versus_dense:
        gaps = {b: stat["mean"] for b, stat in versus_dense["points_vs_dense_al"].items()}
        checks["within_dense_al"] = {"measured_points": gaps, "target": f">= -{TARGETS['points_vs_dense_al']} at every budget",
                                     "met": all(g >= -TARGETS["points_vs_dense_al"] for g in gaps.values())}  # fmt: skip
        ratio = versus_dense["selection_time_ratio"]["mean"]
        checks["selection_time_ratio"] = {"measured": ratio, "target": f"<= {TARGETS['selection_time_ratio']}",
                                          "met": ratio <= TARGETS["selection_time_ratio"]}  # fmt: skip
    full = methods.get("full_pool")
    if full:
        value = next(iter(full[METRIC].values()))["mean"]
        checks["full_pool_mean_iou"] = {"measured": value, "target": f">= {TARGETS['full_pool_mean_iou']}",
                                        "met": value >= TARGETS["full_pool_mean_iou"]}  # fmt: skip
    return checks


def markdown(result: dict) -> str:
    methods = result["methods"]
    budgets = sorted({int(b) for m in methods.values() for b in m[METRIC]})
    lines = [
        f"Mean IoU (%) per labeled budget, mean ± std over seeds {result['seeds']}; selection seconds summed over rounds.",
        "",
        "| method | " + " | ".join(str(b) for b in budgets) + " | selection s |",
        "|---|" + "---:|" * (len(budgets) + 1),
    ]
    for name, entry in methods.items():
        cells = []
        for b in budgets:
            stat = entry[METRIC].get(str(b))
            cells.append(
                f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}"
                if stat and stat["mean"] is not None
                else "–"
            )
        seconds = entry["selection_seconds"]["mean"]
        lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + f" | {seconds:.0f} |")
    flops = result["comparisons"].get("prunefuse", {}).get("selection_flops_ratio", {}).get("mean")
    if flops is not None:
        lines += ["", f"PruneFuse's selection FLOPs are {flops:.3f}x dense AL's (the same run's count)."]
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    for name, check in result["targets"].items():
        measured = check.get("measured", check.get("measured_points"))
        if isinstance(measured, dict):
            measured = ", ".join(f"{b}: {v:+.1f}" for b, v in measured.items())
        elif isinstance(measured, float):
            measured = f"{measured:.3f}"
        lines.append(f"| {name} ({check['target']}) | {measured} | {'PASS' if check['met'] else 'MISS'} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, output: Path) -> str:
    """Mean IoU per budget (mean ± std over seeds) of each method, the whole-pool model as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(6, 4.5))
    for name, entry in result["methods"].items():
        budgets = sorted(int(b) for b in entry[METRIC])
        means = [100 * entry[METRIC][str(b)]["mean"] for b in budgets]
        if name == "full_pool":
            ax.axhline(means[0], linestyle="--", color="gray", label=f"{LABELS[name]}, {budgets[0]:,} labels")
            continue
        stds = [100 * entry[METRIC][str(b)]["std"] for b in budgets]
        ax.errorbar(budgets, means, yerr=stds, marker="o", capsize=3, label=LABELS[name])
    ax.set(
        title="semantic segmentation (synthetic pool, SegFormer)",
        xlabel="labeled images",
        ylabel="test mean IoU (%)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = output / "segmentation_mean_iou.png"
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path.name


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    started = time.perf_counter()
    recipe = base_recipe(args, build_data(args))
    args.output.mkdir(parents=True, exist_ok=True)
    summaries: dict[str, dict[int, dict]] = {}
    result = {}
    plan = [(method, seed) for seed in args.seeds for method in METHODS] + [("full_pool", args.seeds[0])]
    for method, seed in plan:
        summaries.setdefault(method, {})[seed] = summary(run_one(args, recipe, method, seed))
        # Written after every run: what landed is kept even if the benchmark stops here.
        result = report(args, summaries, started)
        (args.output / "segmentation.json").write_text(json.dumps(result, indent=1) + "\n")
        (args.output / "segmentation.md").write_text(markdown(result))
    result["plots"] = [plot(result, args.output)]
    (args.output / "segmentation.json").write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
