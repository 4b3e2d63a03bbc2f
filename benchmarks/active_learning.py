"""Does PruneFuse pay off? Random, dense-selector AL, SVP and PruneFuse side by side on Fashion-MNIST.

Scenario `scratch` (DESIGN.md §8): every method runs the default recipe (the ResNet-18-sized model built from
config, 1,000 random labels, rounds of +1,000 up to 5,000, 5 epochs per training, the full 10,000-image test
set) with the same seeds, data splits and training settings, through the real `prunefuse-hf run` code path;
each method is the recipe's `method` (which sets pruning_ratio, strategy, fusion and distill_alpha), plus the
overrides listed:

    random          method random: a random subset of each size, the dense model trained on it
    dense_al        method dense_al: the dense model selects (p = 0); its trained model is the result per budget
    svp             method svp: the p = 0.5 surrogate selects, a fresh dense model is trained
    prunefuse_p0.5  method prunefuse, distill_alpha 0: the fused dense model is trained without distillation
    prunefuse_p0.7  the same at p = 0.7
    prunefuse_kd    method prunefuse (the recipe's default): with distillation (alpha 0.5, T = 4)

SVP and PruneFuse share their selector, so with one seed they select the same examples (checked per run):
their final trainings are fused-vs-fresh on identical data, evaluated every 1/4 of training for the
steps-to-accuracy comparison.

Scenario `finetune`: the dense model is pretrained (here, without downloads: the same ResNet trained on six
Fashion-MNIST classes) and fine-tuned on a pool of the other four classes (a new head), as users fine-tune Hub
checkpoints. Methods: random + plain fine-tuning, dense-selector AL, SVP, PruneFuse with and without KD, and
PruneFuse with fusion off (the surrogate selects, the pretrained dense model is fine-tuned while distilling from
the surrogate). The accuracy right after fusion is reported next to the final one.

Each run is a resumable run directory: an interrupted benchmark continues where it stopped.

    python benchmarks/active_learning.py                       # both scenarios, 3 seeds
    python benchmarks/active_learning.py --scenario finetune   # one scenario
    python benchmarks/active_learning.py --device cuda         # the same on a GPU
    python benchmarks/active_learning.py --quick               # one seed, tiny model and budgets: seconds

Writes `active_learning.json` / `.md` (scratch), `finetune.json` / `.md` and their PNG plots into `--output`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import torch
import yaml
from common import cpu_name, machine_info, mean_std

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "fashion-mnist-resnet" / "prunefuse.yaml"

# The methods: the recipe's `method` plus overrides on top of the shared protocol. The fields a method sets
# are removed from the recipe first, so each method is exactly what its name says.
METHOD_FIELDS = (
    "method",
    "pruning_ratio",
    "strategy",
    "fusion",
    "distill_alpha",
    "selector",
    "surrogate_distill_epochs",
    "initial_strategy",
    "proxy_refresh_every",
)
METHODS = {
    "random": {"method": "random"},
    "dense_al": {"method": "dense_al", "eval_dense_every_round": False},
    "svp": {"method": "svp"},
    "prunefuse_p0.5": {"method": "prunefuse", "distill_alpha": 0.0},
    "prunefuse_p0.7": {"method": "prunefuse", "pruning_ratio": 0.7, "distill_alpha": 0.0},
    "prunefuse_kd": {"method": "prunefuse"},
    "distill_no_fusion": {"method": "svp", "distill_alpha": 0.5},
    # The fine-tuning scenarios' selectors that keep the pretrained model's knowledge, and the cold start.
    "random_typiclust": {"method": "random", "initial_strategy": "typiclust"},
    "prunefuse_distilled": {"method": "prunefuse_distilled"},
    "feature_proxy": {"method": "feature_proxy"},
    "feature_proxy_typiclust": {"method": "feature_proxy", "initial_strategy": "typiclust"},
    "feature_proxy_margin": {"method": "feature_proxy"},  # run with strategy margin
    # The probe's features recomputed by the fine-tuned dense model every round (ASVP), run with margin.
    "feature_proxy_refreshed_margin": {"method": "feature_proxy_refreshed"},
    "feature_proxy_dropquery": {"method": "feature_proxy"},  # run with strategy dropquery
    "feature_proxy_cluster_margin": {"method": "feature_proxy"},  # run with strategy cluster_margin
    # prunefuse_distilled made cheaper: distilled on a random quarter of the pool (the dense pass covers it only).
    "prunefuse_distilled_quarter": {"method": "prunefuse_distilled", "surrogate_distill_epochs": 0.25},
    # ... and its surrogate trained for half the scenario's surrogate epochs each round.
    "prunefuse_distilled_fast": {
        "method": "prunefuse_distilled",
        "surrogate_distill_epochs": 0.25,
        "surrogate_epochs_scale": 0.5,
    },
}
LABELS = {
    "random": "random",
    "dense_al": "dense-selector AL (p=0)",
    "svp": "SVP (p=0.5, fresh dense)",
    "prunefuse_p0.5": "PruneFuse p=0.5",
    "prunefuse_p0.7": "PruneFuse p=0.7",
    "prunefuse_kd": "PruneFuse p=0.5 + KD",
    "distill_no_fusion": "PruneFuse, fusion off (KD only)",
    "random_typiclust": "random, TypiClust first query",
    "prunefuse_distilled": "PruneFuse p=0.5, surrogate distilled first",
    "feature_proxy": "feature proxy (linear probe)",
    "feature_proxy_typiclust": "feature proxy, TypiClust first query",
    "feature_proxy_margin": "feature proxy, margin",
    "feature_proxy_refreshed_margin": "feature proxy refreshed every round, margin",
    "feature_proxy_dropquery": "feature proxy, DropQuery",
    "feature_proxy_cluster_margin": "feature proxy, cluster-margin",
    "prunefuse_distilled_quarter": "PruneFuse p=0.5, surrogate distilled on a quarter of the pool",
    "prunefuse_distilled_fast": "PruneFuse p=0.5, distilled on a quarter, surrogate at half the epochs",
}
# In the fine-tuning scenario the "fresh" dense model is the pretrained checkpoint with a new head.
FINETUNE_LABELS = {
    **LABELS,
    "random": "random + fine-tuning",
    "dense_al": "dense-selector AL (p=0), fine-tuned",
    "svp": "SVP (p=0.5 selects, pretrained model fine-tuned)",
    "prunefuse_p0.5": "PruneFuse p=0.5 (fusion)",
    "prunefuse_kd": "PruneFuse p=0.5 (fusion) + KD",
    "distill_no_fusion": "SVP + KD (fusion off)",
    "random_typiclust": "random + fine-tuning, TypiClust first query",
    "prunefuse_distilled": "PruneFuse p=0.5 (fusion) + KD, surrogate distilled from the dense model first",
    "feature_proxy": "feature proxy: linear probe on frozen pretrained features, fine-tuned",
    "feature_proxy_typiclust": "feature proxy + TypiClust first query, fine-tuned",
    "feature_proxy_margin": "feature proxy with margin instead of least confidence, fine-tuned",
    "feature_proxy_refreshed_margin": "feature proxy with margin, features refreshed by the fine-tuned model each "
    "round, fine-tuned",
    "feature_proxy_dropquery": "feature proxy with DropQuery (dropout disagreement, k-means), fine-tuned",
    "feature_proxy_cluster_margin": "feature proxy with cluster-margin (k-means over the smallest margins), "
    "fine-tuned",
    "prunefuse_distilled_quarter": "PruneFuse p=0.5 (fusion) + KD, surrogate distilled on a quarter of the pool "
    "first",
    "prunefuse_distilled_fast": "PruneFuse p=0.5 (fusion) + KD, surrogate distilled on a quarter of the pool first "
    "and trained for half the epochs each round",
}
# (method, strategy) of the fine-tuning scenarios; random selection has no strategy.
FINETUNE_METHODS = [
    ("random", "random"), ("random_typiclust", "random"), ("dense_al", "least_confidence"),
    ("svp", "least_confidence"), ("prunefuse_kd", "least_confidence"), ("prunefuse_distilled", "least_confidence"),
    ("feature_proxy", "least_confidence"), ("feature_proxy_typiclust", "least_confidence"),
    # The variant the linear probe's own learning curves pointed to (margin beat least confidence there).
    ("feature_proxy_margin", "margin"),
    # The proxy aligned with the fine-tuned model (ASVP); uncertainty + diversity: DropQuery, cluster-margin.
    ("feature_proxy_refreshed_margin", "margin"), ("feature_proxy_dropquery", "dropquery"),
    ("feature_proxy_cluster_margin", "cluster_margin"),
    # prunefuse_distilled at about a quarter of its distillation's cost.
    ("prunefuse_distilled_quarter", "least_confidence"), ("prunefuse_distilled_fast", "least_confidence"),
]  # fmt: skip
# The targets of the fine-tuning scenarios, on the means over seeds of same-seed differences: never below random at
# any budget; within 0.5 points of dense AL averaged over the budgets and never more than 1 point below it; at most
# 0.3x dense AL's selection time. A cold start beats the random draw by 1 point at the first budget.
FINETUNE_TARGETS = {"mean_gap_points": 0.5, "worst_gap_points": 1.0, "selection_time_ratio": 0.3,
                    "cold_start_points": 1.0}  # fmt: skip
# In the fine-tuning scenarios each method's accuracy at each budget is the same dense fine-tuning of its labeled set
# (`train_dense`, one seed), dense AL's included: its selector, the dense model trained with the surrogate's seed,
# only selects. Otherwise two trainings of the same labels differ by their seed alone: at the first budget, the same
# random draw for every method, the ViT's dense AL and random were 14.6 points apart in one seed (82.6 vs 68.0 %).
FINETUNE_OVERRIDES = {"dense_al": {"eval_dense_every_round": True}}
# Seeds 4 and 5 (3 and 4) skip a method that the first three seeds put below random at this many budgets or more.
RULED_OUT_BUDGETS = 2
COLD_STARTS = {"random_typiclust": "random", "feature_proxy_typiclust": "feature_proxy"}
# Fused-vs-fresh on identical selections: these two evaluate while training (eval_steps is a fraction).
CURVE_METHODS = {"svp", "prunefuse_p0.5"}
CURVE_EVAL_STEPS = 0.25
# The scratch scenario's methods (the fine-tuning scenarios have their own list below).
SCRATCH_METHODS = ["random", "dense_al", "svp", "prunefuse_p0.5", "prunefuse_p0.7", "prunefuse_kd"]
FULL_STRATEGIES = {
    "least_confidence": SCRATCH_METHODS,
    # The second strategy compares the two selectors (dense model, p = 0.5 surrogate + fusion), which keeps
    # the full benchmark at 78 min on 2 CPU cores; --all_methods runs every method for both.
    "kcenter_greedy": ["dense_al", "prunefuse_p0.5"],
}
# Shared protocol of the full run: the default recipe's (5 epochs per training, selectors trained as the recipe
# trains them), evaluated on the full 10,000-image test set.
FULL_PROTOCOL = {"max_eval_samples": None, "eval_dense_every_round": True}
# The fine-tuning scenario: pretrain on six classes, fine-tune on the other four with smaller budgets.
PRETRAIN_CLASSES = [0, 1, 2, 3, 4, 8]
FINETUNE_CLASSES = [5, 6, 7, 9]
FINETUNE_PROTOCOL = {"initial_labeled_size": 300, "query_size": 300, "num_rounds": 3}
PRETRAIN_EPOCHS = 2
# Pretrained checkpoints kept in the repository (the ViT's, 1.2 MB): float kernels differ between kinds of CPU, so
# the same pretraining on another machine gives other weights, and results measured from these could not be continued.
CHECKPOINTS = ROOT / "benchmarks" / "checkpoints"
# The pretrained scenarios: the ResNet-18-sized model of the default recipe, and a small ViT (another model family:
# attention, LayerNorm, a CLS-token head; trained with AdamW as ViTs are) on a 8,000-image pool so that every method
# and seed runs in minutes on 2 CPU cores. `pretrained` is the checkpoint's folder under --runs_dir.
FINETUNE_SCENARIOS = {
    "finetune": {"pretrained": "pretrained", "recipe": {}, "protocol": FINETUNE_PROTOCOL,
                 "pretrain_epochs": PRETRAIN_EPOCHS, "title": "fine-tuning a pretrained ResNet-18-sized model"},
    "finetune_vit": {
        "pretrained": "pretrained_vit",
        "recipe": {
            "model_config": {"model_type": "vit", "image_size": 28, "patch_size": 4, "num_channels": 3,
                             "hidden_size": 96, "num_hidden_layers": 4, "num_attention_heads": 4,
                             "intermediate_size": 192},
            "image_size": 28, "optim": "adamw_torch", "optim_args": None, "learning_rate": 1e-3,
            "weight_decay": 0.05, "num_train_epochs": 10, "surrogate_num_train_epochs": 10,
            "per_device_train_batch_size": 64,
        },
        "protocol": {**FINETUNE_PROTOCOL, "max_pool_size": 8000},
        "pretrain_epochs": 4, "pretrain_examples": 15000, "title": "fine-tuning a pretrained small ViT",
    },
}  # fmt: skip
QUICK_PROTOCOL = {
    "model_config": {
        "model_type": "resnet",
        "num_channels": 3,
        "embedding_size": 8,
        "hidden_sizes": [8, 16],
        "depths": [1, 1],
        "layer_type": "basic",
    },  # fmt: skip
    "image_size": 16,
    "max_pool_size": 300,
    "max_eval_samples": 100,
    "initial_labeled_size": 40,
    "query_size": 40,
    "num_rounds": 2,
    "num_train_epochs": 1,
    "surrogate_num_train_epochs": 1,
    "per_device_train_batch_size": 16,
    "eval_dense_every_round": True,
}
TARGETS = {
    "selection_time_ratio": 0.3,
    "accuracy_gap_points": 0.5,
    "steps_ratio": 0.6,
    "end_to_end_ratio": 0.5,
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="One seed, tiny model and budgets (CI).")
    parser.add_argument("--scenario", choices=("scratch", *FINETUNE_SCENARIOS, "both", "all"), default="both",
                        help="scratch: models from config; finetune: a pretrained ResNet; finetune_vit: a pretrained "
                             "ViT; both: scratch and finetune; all: the three (default: both).")  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="Seeds (default 0 1 2; quick: 0).")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--epochs", type=float, default=None, help="Override every training's epochs.")
    parser.add_argument("--all_methods", action="store_true", help="Every method for every strategy.")
    parser.add_argument(
        "--output", type=Path, default=None, help="Results folder (default benchmarks/results)."
    )
    parser.add_argument("--runs_dir", type=Path, default=None, help="Run directories (resumed when present).")
    parser.add_argument("--methods", nargs="+", default=None, choices=[m for m, _ in FINETUNE_METHODS],
                        help="Fine-tuning scenarios: run only these methods (default: every one). Results already in "
                             "the scenario's JSON for the same protocol are kept and reused.")  # fmt: skip
    args = parser.parse_args(argv)
    if args.seeds is None:
        args.seeds = [0] if args.quick else [0, 1, 2]
    name = "active_learning_quick" if args.quick else "active_learning"
    args.output = args.output or (
        ROOT / "runs" / "benchmarks" / name if args.quick else ROOT / "benchmarks" / "results"
    )
    args.runs_dir = args.runs_dir or ROOT / "runs" / "benchmarks" / name
    return args


def base_recipe(args) -> dict:
    recipe = yaml.safe_load(RECIPE.read_text())
    for name in METHOD_FIELDS:
        recipe.pop(name, None)
    recipe.update(QUICK_PROTOCOL if args.quick else FULL_PROTOCOL)
    recipe.update(
        {"use_cpu": args.device == "cpu", "disable_tqdm": True, "report_to": "none", "logging_steps": 50}
    )
    if args.epochs is not None:
        recipe["num_train_epochs"] = recipe["surrogate_num_train_epochs"] = args.epochs
    return recipe


def plan_runs(args) -> list[tuple[str, str, int]]:
    """(method, strategy, seed) triples; random selection does not depend on the strategy: run once."""
    runs = []
    for seed in args.seeds:  # seed by seed: an interrupted benchmark still has whole seeds to report
        runs.append(("random", "random", seed))
        for strategy, methods in FULL_STRATEGIES.items():
            chosen = SCRATCH_METHODS if args.all_methods else methods
            runs += [(m, strategy, seed) for m in chosen if m != "random"]
    return runs


def run_one(
    args,
    recipe: dict,
    method: str,
    strategy: str,
    seed: int,
    runs_dir: Path | None = None,
    curves=True,
    overrides: dict | None = None,
):
    """Run (or resume, or reuse) one run directory and return its metrics: `recipe` with the method's settings
    (`overrides`, default `METHODS[method]`), `strategy` and `seed`."""
    from prunefuse_hf.cli.run import run_from_command_line

    output_dir = (runs_dir or args.runs_dir) / f"{method}-{strategy}-seed{seed}"
    metrics_path = output_dir / "metrics.json"
    if metrics_path.is_file():
        return json.loads(metrics_path.read_text()), output_dir
    overrides = dict(METHODS[method] if overrides is None else overrides)
    # A surrogate trained for a share of the scenario's surrogate epochs (which default to the dense model's).
    scale = overrides.pop("surrogate_epochs_scale", None)
    recipe = {**recipe, **overrides, "seed": seed, "output_dir": str(output_dir)}
    if scale is not None:
        epochs = recipe.get("surrogate_num_train_epochs") or recipe["num_train_epochs"]
        recipe["surrogate_num_train_epochs"] = scale * epochs
    if strategy != "random":
        recipe["strategy"] = strategy
    if curves and method in CURVE_METHODS:
        recipe.update({"eval_strategy": "steps", "eval_steps": CURVE_EVAL_STEPS})
    output_dir.mkdir(parents=True, exist_ok=True)
    recipe_path = output_dir.parent / f"{output_dir.name}.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    flags = ["--resume"] if (output_dir / "state.json").is_file() else ["--overwrite"]
    started = time.perf_counter()
    metrics = run_from_command_line(["--config", str(recipe_path), *flags])
    seconds = time.perf_counter() - started
    # Wall time of the whole run (per-budget evaluation trainings included), summed over resumptions.
    wall_path = output_dir / "benchmark_wall_seconds.json"
    previous = json.loads(wall_path.read_text())["seconds"] if wall_path.is_file() else 0.0
    wall_path.write_text(json.dumps({"seconds": previous + seconds}))
    print(f"== {method} / {strategy} / seed {seed}: {seconds:.0f} s", flush=True)
    return metrics, output_dir


def run_wall_seconds(output_dir: Path) -> float | None:
    path = output_dir / "benchmark_wall_seconds.json"
    return json.loads(path.read_text())["seconds"] if path.is_file() else None


# ----- per-run numbers -----


def accuracy_per_budget(metrics: dict) -> dict[int, float]:
    """Labeled count -> accuracy of the method's model at that budget.

    Without `eval_dense_every_round` dense_al trains no separate dense model before the last round: its selector
    *is* the dense model trained on that budget, so the selector's accuracy is the method's accuracy there.
    """
    from prunefuse_hf.utils.run_metrics import budget_accuracies

    budgets = {}
    if metrics["config"]["pruning_ratio"] == 0:
        budgets = {
            r["surrogate"]["labeled"]: r["surrogate"]["accuracy"]
            for r in metrics["rounds"]
            if r.get("surrogate")
        }
    return {**budgets, **budget_accuracies(metrics)}


def run_summary(metrics: dict) -> dict:
    last = metrics["rounds"][-1]
    # The last surrogate training only feeds fusion or distillation: it belongs to the final training.
    final_seconds = last["dense"]["seconds"] + (last.get("surrogate") or {}).get("seconds", 0.0)
    final_flops = last["dense"]["flops"] + (last.get("surrogate") or {}).get("flops", 0)
    selection = metrics["selection"]
    return {
        "accuracy": {str(k): v for k, v in sorted(accuracy_per_budget(metrics).items())},
        "selection_seconds": selection["seconds"],
        "selection_flops": selection["flops"],
        "final_training_seconds": final_seconds,
        "final_training_flops": final_flops,
        "end_to_end_seconds": selection["seconds"] + final_seconds,
        "final_accuracy": metrics["final"]["accuracy"],
        "curves": {
            str(r["dense"]["labeled"]): r["dense"]["curve"]
            for r in metrics["rounds"]
            if "curve" in r.get("dense", {})
        },
    }


def steps_to_reach(curve: list[dict], accuracy: float) -> float | None:
    """First training step at which `curve` reaches `accuracy`, interpolated linearly between evaluations
    (they are 1/4 of training apart); `None` if it never does."""
    previous = None
    for point in curve:
        if point["accuracy"] >= accuracy:
            if previous is None:
                return float(point["step"])
            fraction = (accuracy - previous["accuracy"]) / (point["accuracy"] - previous["accuracy"])
            return previous["step"] + fraction * (point["step"] - previous["step"])
        previous = point
    return None


def fused_vs_fresh(fused: dict, fresh: dict, same_selection: bool) -> dict:
    """Per budget: steps each model needs to reach the fresh model's final accuracy, and their ratio."""
    comparison = {"same_selection": same_selection, "budgets": {}}
    for budget, fresh_curve in fresh["curves"].items():
        fused_curve = fused["curves"].get(budget)
        if not fused_curve:
            continue
        target = fresh_curve[-1]["accuracy"]
        fused_steps, fresh_steps = steps_to_reach(fused_curve, target), steps_to_reach(fresh_curve, target)
        comparison["budgets"][budget] = {
            "fresh_final_accuracy": target,
            "fused_final_accuracy": fused_curve[-1]["accuracy"],
            "fused_steps": fused_steps,
            "fresh_steps": fresh_steps,
            "total_steps": fresh_curve[-1]["step"],
            # None when the fused model never gets there (the target then counts as missed for this seed).
            "steps_ratio": fused_steps / fresh_steps if fused_steps is not None and fresh_steps else None,
        }
    return comparison


def same_selection(dir_a: Path, dir_b: Path) -> bool:
    def read(directory):
        table = pq.read_table(directory / "selection.parquet").to_pydict()
        return sorted(zip(table["pool_index"], table["round"]))

    return read(dir_a) == read(dir_b)


# ----- aggregation over seeds -----


def aggregate(summaries: dict, comparisons: dict) -> dict:
    results = {}
    for (method, strategy), by_seed in summaries.items():
        budgets = sorted({int(b) for s in by_seed.values() for b in s["accuracy"]})
        results.setdefault(strategy, {})[method] = {
            "accuracy": {
                str(b): mean_std([s["accuracy"].get(str(b)) for s in by_seed.values()]) for b in budgets
            },
            **{
                key: mean_std([s[key] for s in by_seed.values()])
                for key in (
                    "selection_seconds",
                    "selection_flops",
                    "final_training_seconds",
                    "final_training_flops",
                    "end_to_end_seconds",
                    "final_accuracy",
                )
            },  # fmt: skip
            "per_seed": by_seed,
        }
    ratios = {}
    for strategy, methods in results.items():
        if "dense_al" not in methods:
            continue
        dense = methods["dense_al"]["per_seed"]
        per_method = {}
        for method, entry in methods.items():
            if method in ("dense_al", "random"):
                continue
            per_seed = entry["per_seed"]
            shared = [seed for seed in per_seed if seed in dense]
            per_method[method] = {
                "selection_time_ratio": mean_std([per_seed[s]["selection_seconds"] / dense[s]["selection_seconds"] for s in shared]),
                "selection_flops_ratio": mean_std([per_seed[s]["selection_flops"] / dense[s]["selection_flops"] for s in shared]),
                "end_to_end_ratio": mean_std([per_seed[s]["end_to_end_seconds"] / dense[s]["end_to_end_seconds"] for s in shared]),
            }  # fmt: skip
        ratios[strategy] = per_method
    curves = {}
    for strategy, by_seed in comparisons.items():
        budgets = sorted({int(b) for c in by_seed.values() for b in c["budgets"]})
        curves[strategy] = {
            "same_selection": all(c["same_selection"] for c in by_seed.values()),
            "budgets": {
                str(b): {
                    key: mean_std([c["budgets"].get(str(b), {}).get(key) for c in by_seed.values()])
                    for key in (
                        "steps_ratio",
                        "fused_steps",
                        "fresh_steps",
                        "fresh_final_accuracy",
                        "fused_final_accuracy",
                    )
                }  # fmt: skip
                for b in budgets
            },
            "per_seed": by_seed,
        }
    return {"methods": results, "ratios": ratios, "fused_vs_fresh": curves}


def check_targets(report: dict) -> dict:
    """Each target of the benchmark, met or missed, with the measured number (means over seeds)."""
    targets = {}
    for strategy, methods in report["methods"].items():
        checks = {}
        ratio = report["ratios"].get(strategy, {}).get("prunefuse_p0.5", {}).get("selection_time_ratio", {})
        if ratio.get("mean") is not None:
            checks["selection_time_ratio"] = {"measured": ratio["mean"], "target": f"<= {TARGETS['selection_time_ratio']}",
                                              "met": ratio["mean"] <= TARGETS["selection_time_ratio"]}  # fmt: skip
        end_to_end = report["ratios"].get(strategy, {}).get("prunefuse_p0.5", {}).get("end_to_end_ratio", {})
        if end_to_end.get("mean") is not None:
            checks["end_to_end_ratio"] = {"measured": end_to_end["mean"], "target": f"<= {TARGETS['end_to_end_ratio']}",
                                          "met": end_to_end["mean"] <= TARGETS["end_to_end_ratio"]}  # fmt: skip
        prunefuse, dense, random = (methods.get(m) for m in ("prunefuse_p0.5", "dense_al", "random"))
        random = random or report["methods"].get("random", {}).get("random")
        if prunefuse and dense:
            gaps = {b: 100 * (prunefuse["accuracy"][b]["mean"] - dense["accuracy"][b]["mean"])
                    for b in prunefuse["accuracy"] if b in dense["accuracy"]}  # fmt: skip
            checks["accuracy_vs_dense_al"] = {"measured_points": gaps, "target": f">= -{TARGETS['accuracy_gap_points']} points at every budget",
                                              "met": all(g >= -TARGETS["accuracy_gap_points"] for g in gaps.values())}  # fmt: skip
        if prunefuse and random:
            gaps = {b: 100 * (prunefuse["accuracy"][b]["mean"] - random["accuracy"][b]["mean"])
                    for b in prunefuse["accuracy"] if b in random["accuracy"]}  # fmt: skip
            checks["accuracy_vs_random"] = {"measured_points": gaps, "target": "> 0 at every budget",
                                            "met": all(g > 0 for g in gaps.values())}  # fmt: skip
        curves = report["fused_vs_fresh"].get(strategy)
        if curves and curves["budgets"]:
            last = max(curves["budgets"], key=int)
            steps = curves["budgets"][last]["steps_ratio"]
            seeds = len(curves["per_seed"])
            # A seed whose fused model never reached the fresh model's final accuracy fails the target.
            met = steps["n"] == seeds and steps["mean"] <= TARGETS["steps_ratio"]
            checks["steps_ratio"] = {"budget": int(last), "measured": steps["mean"], "seeds_reached": f"{steps['n']}/{seeds}",
                                     "target": f"<= {TARGETS['steps_ratio']}", "met": met}  # fmt: skip
        if checks:
            targets[strategy] = checks
    return targets


# ----- outputs -----


def _pm(stat: dict, scale: float = 1.0, spec: str = ".1f") -> str:
    if stat["mean"] is None:
        return "–"
    return f"{stat['mean'] * scale:{spec}} ± {stat['std'] * scale:{spec}}"


def markdown(report: dict) -> str:
    machine = report["machine"]
    lines = [
        f"Machine: {machine['device']}, {machine['cpu_count']} CPU cores, torch {machine['torch']}; "
        f"seeds {report['seeds']}; {report['wall_seconds'] / 60:.0f} min in all. Mean ± std over seeds.",
    ]
    for strategy, methods in report["methods"].items():
        if strategy == "random":
            continue
        rows = {"random": report["methods"].get("random", {}).get("random"), **methods}
        budgets = sorted({int(b) for m in rows.values() if m for b in m["accuracy"]})
        lines += ["", f"**{strategy}**: test accuracy (%) per labeled-set size, and costs", ""]
        lines.append("| method | " + " | ".join(f"{b:,}" for b in budgets)
                     + " | selection s | selection TFLOPs | final training s | end-to-end s |")  # fmt: skip
        lines.append("|---" * (len(budgets) + 5) + "|")
        for method, entry in rows.items():
            if not entry:
                continue
            accuracy = [_pm(entry["accuracy"].get(str(b), {"mean": None}), 100) for b in budgets]
            lines.append(
                f"| {LABELS[method]} | " + " | ".join(accuracy) + f" | {_pm(entry['selection_seconds'])} | "
                f"{_pm(entry['selection_flops'], 1e-12, '.2f')} | {_pm(entry['final_training_seconds'])} | "
                f"{_pm(entry['end_to_end_seconds'])} |"
            )
        ratios = report["ratios"].get(strategy, {})
        if ratios:
            lines += ["", "| vs dense-selector AL, same seed | selection time | selection FLOPs | end-to-end time |",
                      "|---|---|---|---|"]  # fmt: skip
            for method, ratio in ratios.items():
                lines.append(
                    f"| {LABELS[method]} | {_pm(ratio['selection_time_ratio'], 1, '.3f')} | "
                    f"{_pm(ratio['selection_flops_ratio'], 1, '.3f')} | {_pm(ratio['end_to_end_ratio'], 1, '.3f')} |"
                )
        curves = report["fused_vs_fresh"].get(strategy)
        if curves:
            lines += ["", f"Fused (PruneFuse p=0.5) vs fresh (SVP) dense training on the same selection "
                      f"(identical selections: {curves['same_selection']}): steps to reach the fresh model's final accuracy", "",
                      "| labeled | fresh final acc % | fused final acc % | fused steps | fresh steps | ratio |",
                      "|---|---|---|---|---|---|"]  # fmt: skip
            for budget, entry in curves["budgets"].items():
                lines.append(
                    f"| {int(budget):,} | {_pm(entry['fresh_final_accuracy'], 100)} | {_pm(entry['fused_final_accuracy'], 100)} | "
                    f"{_pm(entry['fused_steps'], 1, '.0f')} | {_pm(entry['fresh_steps'], 1, '.0f')} | "
                    f"{_pm(entry['steps_ratio'], 1, '.2f')} (reached in {entry['steps_ratio']['n']} of {len(curves['per_seed'])}) |"
                )
    lines += ["", "Targets:", ""]
    for strategy, checks in report["targets"].items():
        for name, check in checks.items():
            measured = check.get("measured", check.get("measured_points"))
            if isinstance(measured, dict):
                measured = ", ".join(f"{int(b):,}: {v:+.2f}" for b, v in measured.items())
            elif measured is None:
                measured = "not reached"
            else:
                measured = f"{measured:.3f}"
            if "seeds_reached" in check:
                measured += f", fused reached it in {check['seeds_reached']} seeds"
            lines.append(
                f"- {strategy}, {name}: {'met' if check['met'] else 'missed'} ({measured}; target {check['target']})"
            )
    return "\n".join(lines) + "\n"


def plot(report: dict, output: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    strategies = [s for s in report["methods"] if s != "random"]
    random = report["methods"].get("random", {}).get("random")
    written = []

    figure, axes = plt.subplots(1, len(strategies), figsize=(6 * len(strategies), 4.5), squeeze=False)
    for ax, strategy in zip(axes[0], strategies):
        for method, entry in {"random": random, **report["methods"][strategy]}.items():
            if not entry:
                continue
            budgets = sorted(int(b) for b in entry["accuracy"])
            means = [100 * entry["accuracy"][str(b)]["mean"] for b in budgets]
            stds = [100 * entry["accuracy"][str(b)]["std"] for b in budgets]
            ax.errorbar(budgets, means, yerr=stds, marker="o", capsize=3, label=LABELS[method])
        ax.set(title=strategy, xlabel="labeled examples", ylabel="test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    written.append(_save(figure, output / "active_learning_accuracy.png"))

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    names, seconds, flops = [], [], []
    for strategy in strategies:
        for method, entry in report["methods"][strategy].items():
            names.append(f"{LABELS[method]}\n{strategy}")
            seconds.append(entry["selection_seconds"])
            flops.append(entry["selection_flops"])
    for ax, values, label, scale in (
        (axes[0], seconds, "selection wall time (s)", 1),
        (axes[1], flops, "selection TFLOPs", 1e-12),
    ):
        ax.barh(
            range(len(names)), [v["mean"] * scale for v in values], xerr=[v["std"] * scale for v in values]
        )
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_xlabel(label)
        ax.invert_yaxis()
    written.append(_save(figure, output / "active_learning_selection_cost.png"))

    curve_strategies = [s for s in strategies if report["fused_vs_fresh"].get(s)]
    if curve_strategies:
        figure, axes = plt.subplots(
            1, len(curve_strategies), figsize=(6 * len(curve_strategies), 4.5), squeeze=False
        )
        for ax, strategy in zip(axes[0], curve_strategies):
            per_seed = report["fused_vs_fresh"][strategy]["per_seed"]
            for method, style in (("prunefuse_p0.5", "-"), ("svp", "--")):
                runs = report["methods"][strategy][method]["per_seed"]
                for i, seed in enumerate(sorted(per_seed)):
                    curves = runs[seed]["curves"]
                    budget = max(curves, key=int)
                    steps = [p["step"] for p in curves[budget]]
                    ax.plot(steps, [100 * p["accuracy"] for p in curves[budget]], style, color=f"C{i}",
                            label=f"{'fused' if method != 'svp' else 'fresh'}, seed {seed}")  # fmt: skip
            ax.set(title=f"{strategy}: final training at {int(budget):,} labels", xlabel="training step",
                   ylabel="test accuracy (%)")  # fmt: skip
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        written.append(_save(figure, output / "active_learning_curves.png"))
    return written


def _save(figure, path: Path) -> str:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(figure)
    return path.name


# ----- the fine-tuning scenario -----


def finetune_data(args) -> Path:
    """Fashion-MNIST's images of the fine-tuning classes (train and test), saved once, relabeled 0..3 by name."""
    from prunefuse_hf import load_image_dataset
    from prunefuse_hf.constants import FASHION_MNIST_LABELS

    directory = args.runs_dir / "finetune_data"
    if (directory / "dataset_dict.json").is_file():
        return directory
    names = [FASHION_MNIST_LABELS[c] for c in FINETUNE_CLASSES]
    splits = {}
    for split in ("train", "test"):
        dataset = load_image_dataset("fashion_mnist", split)
        if args.quick:
            dataset = dataset.select(range(3000 if split == "train" else 1000))
        kept = [i for i, y in enumerate(dataset["label"]) if y in FINETUNE_CLASSES]
        subset = dataset.select(kept)
        labels = [FINETUNE_CLASSES.index(y) for y in subset["label"]]
        subset = subset.remove_columns("label").add_column("label", labels)
        splits[split] = subset.cast_column("label", datasets.ClassLabel(names=names))
    datasets.DatasetDict(splits).save_to_disk(str(directory))
    return directory


def pretrained_checkpoint(args, recipe: dict, scenario: str = "finetune") -> Path:
    """The dense model trained on the pretraining classes (once; reused by every run and seed), with its processor:
    the one committed under `benchmarks/checkpoints/` when there is one, else trained into `--runs_dir`.

    Returns the checkpoint directory, which fine-tuning runs name as `model_name_or_path`.
    """
    from transformers import TrainingArguments

    from prunefuse_hf import DistillationTrainer, load_image_dataset
    from prunefuse_hf.constants import FASHION_MNIST_LABELS
    from prunefuse_hf.data.image_processor import build_image_processor
    from prunefuse_hf.data.pixel_dataset import PixelDataset
    from prunefuse_hf.data.preprocessing import ImagePreprocessor
    from prunefuse_hf.pruning.modeling import load_image_classifier

    settings = FINETUNE_SCENARIOS[scenario]
    committed = CHECKPOINTS / settings["pretrained"]
    if not args.quick and (committed / "model.safetensors").is_file():
        return committed
    directory = args.runs_dir / settings["pretrained"]
    if (directory / "model.safetensors").is_file():
        return directory
    torch.manual_seed(1234)
    names = [FASHION_MNIST_LABELS[c] for c in PRETRAIN_CLASSES]
    model = load_image_classifier(recipe["model_config"], class_names=names)
    processor = build_image_processor(model.config, image_size=recipe["image_size"])
    preprocessor = ImagePreprocessor(processor, model.config.num_channels)
    data = {}
    for split in ("train", "test"):
        dataset = load_image_dataset("fashion_mnist", split)
        if args.quick:
            dataset = dataset.select(range(3000 if split == "train" else 1000))
        rows = np.flatnonzero(np.isin(np.asarray(dataset["label"]), PRETRAIN_CLASSES))
        if split == "train" and settings.get("pretrain_examples") and not args.quick:
            rows = rows[: settings["pretrain_examples"]]
        labels = [PRETRAIN_CLASSES.index(y) for y in np.asarray(dataset["label"])[rows]]
        data[split] = PixelDataset(preprocessor.pixel_dataset(dataset), rows, labels)
    optimizer = {"optim": recipe.get("optim", "sgd"), "optim_args": recipe.get("optim_args", "momentum=0.9"),
                 "weight_decay": recipe.get("weight_decay", 5e-4)}  # fmt: skip
    training = TrainingArguments(
        output_dir=str(args.runs_dir / "pretrain_trainer"),
        num_train_epochs=1 if args.quick else settings["pretrain_epochs"],
        learning_rate=recipe["learning_rate"], **optimizer,
        lr_scheduler_type="cosine", per_device_train_batch_size=128, per_device_eval_batch_size=512,
        remove_unused_columns=False, save_strategy="no", report_to="none", disable_tqdm=True, seed=1234,
        use_cpu=args.device == "cpu", logging_steps=100,
    )  # fmt: skip
    trainer = DistillationTrainer(model, training, train_dataset=data["train"], eval_dataset=data["test"],
                                  preprocessor=preprocessor)  # fmt: skip
    trainer.train()
    accuracy = trainer.evaluate()["eval_accuracy"]
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    (directory / "pretraining.json").write_text(json.dumps({"classes": names, "accuracy": accuracy,
                                                            "epochs": training.num_train_epochs,
                                                            "examples": len(data["train"]),
                                                            "model_type": model.config.model_type}))  # fmt: skip
    print(f"== pretrained {model.config.model_type} on {names}: test accuracy {accuracy:.4f}", flush=True)
    return directory


def finetune_recipe(args, recipe: dict, scenario: str = "finetune") -> dict:
    settings = FINETUNE_SCENARIOS[scenario]
    pretraining_recipe = {**base_recipe(args), **({} if args.quick else settings["recipe"])}
    if args.quick and scenario != "finetune":
        # The same family, tiny: one layer of width 16.
        pretraining_recipe.update({k: v for k, v in settings["recipe"].items() if k != "model_config"})
        pretraining_recipe["model_config"] = {**settings["recipe"]["model_config"], "hidden_size": 16,
                                              "num_hidden_layers": 1, "intermediate_size": 32, "image_size": 16}  # fmt: skip
        pretraining_recipe["image_size"] = 16
    recipe = {**recipe, **{k: v for k, v in pretraining_recipe.items() if k in settings["recipe"]}}
    recipe = {key: value for key, value in recipe.items() if key not in ("model_config", "image_size")}
    checkpoint = pretrained_checkpoint(args, pretraining_recipe, scenario)
    recipe.update({"model_name_or_path": str(checkpoint), "dataset_name": str(finetune_data(args)),
                   "max_eval_samples": None})  # fmt: skip
    if args.quick:
        recipe.update({k: QUICK_PROTOCOL[k] for k in ("num_train_epochs", "surrogate_num_train_epochs")})
    else:
        recipe.update(settings["protocol"])
    if recipe.get("optim_args") is None:
        recipe.pop("optim_args", None)
    return recipe


def finetune_scenario(args, scenario: str = "finetune") -> dict:
    """Every (method, seed) of a fine-tuning scenario. Each result is written into `--output`/`<scenario>.json` as it
    lands, and a result already there for the same protocol and pretrained checkpoint is reused: an interrupted
    benchmark continues, also in another session that has the committed JSON but not the run directories.

    A seed is finished on the kind of CPU that started it: one with runs to do whose finished runs came from another
    CPU is rerun here in full (see `seeds_from_other_cpus`)."""
    recipe = finetune_recipe(args, base_recipe(args), scenario)
    runs_dir = args.runs_dir / scenario
    started = time.perf_counter()
    pretraining = pretraining_record(Path(recipe["model_name_or_path"]))
    path = args.output / f"{scenario}.json"
    summaries = landed_results(path, recipe, pretraining)
    chosen = [(m, s) for m, s in FINETUNE_METHODS if args.methods is None or m in args.methods]

    def to_run(seed):
        return [(method, strategy) for method, strategy in chosen if seed not in summaries.get(method, {})
                and not (seed > 2 and ruled_out(summaries, method))]  # fmt: skip

    cpu, ran = cpu_name(), False
    for seed in args.seeds:
        if to_run(seed) and seed in seeds_from_other_cpus(summaries, cpu):
            print(f"== seed {seed}: its finished runs came from another CPU than this one ({cpu}); it is rerun here "
                  "in full, so that its same-seed differences compare runs of one machine", flush=True)  # fmt: skip
            for by_seed in summaries.values():
                by_seed.pop(seed, None)
        for method, strategy in to_run(seed):
            settings = finetune_settings(method, strategy)
            overrides = {k: v for k, v in settings.items() if k != "strategy"}
            metrics, directory = run_one(
                args, recipe, method, strategy, seed, runs_dir=runs_dir, curves=False, overrides=overrides
            )
            summaries.setdefault(method, {})[seed] = {
                **finetune_summary(metrics, directory),
                "cpu": cpu,
                "settings": settings,
            }
            report, ran = finetune_report(args, scenario, recipe, pretraining, summaries, started), True
            args.output.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(report, indent=1) + "\n")
    report = finetune_report(args, scenario, recipe, pretraining, summaries, started)
    if not ran and path.is_file():
        # Only re-rendered here: the command, machine and time stay those of the invocation that measured the last
        # result.
        previous = json.loads(path.read_text())
        report.update({k: previous[k] for k in ("command", "machine", "invocation_seconds") if k in previous})
    return report


def finetune_settings(method: str, strategy: str) -> dict:
    """A fine-tuning method's settings on top of the scenario's protocol: `METHODS[method]`, the fine-tuning
    scenarios' `FINETUNE_OVERRIDES` and the strategy. Each result records them, and one measured with other settings
    is not reused."""
    return {**METHODS[method], **FINETUNE_OVERRIDES.get(method, {}), "strategy": strategy}


def seeds_from_other_cpus(summaries: dict, cpu: str) -> set[int]:
    """The seeds with a finished run from another CPU than `cpu` (or from an unrecorded one): float kernels differ
    between kinds of CPU, by up to 1.5 points of accuracy after the same training, which would add to a same-seed
    difference between two methods run on different machines."""
    return {seed for by_seed in summaries.values() for seed, s in by_seed.items() if s.get("cpu") != cpu}


def pretraining_record(checkpoint: Path) -> dict:
    """The pretrained checkpoint's record (classes, accuracy, epochs) with the SHA-256 of its weights file: results
    are reused only from the same weights, which the same code and torch version reproduce bit for bit on the same
    kind of CPU."""
    record = json.loads((checkpoint / "pretraining.json").read_text())
    digest = hashlib.sha256((checkpoint / "model.safetensors").read_bytes()).hexdigest()
    return {**record, "weights_sha256": digest}


def finetune_summary(metrics: dict, directory: Path) -> dict:
    """One fine-tuning run's numbers: `run_summary`'s, the accuracy right after fusion, wall time and set-up parts."""
    summary = run_summary(metrics)
    fused = metrics["config"]["fusion"]
    summary["accuracy_after_fusion"] = {
        str(r["dense"]["labeled"]): r["dense"].get("accuracy_at_start")
        for r in metrics["rounds"] if fused and r.get("dense") and r["dense"].get("accuracy_at_start") is not None
    }  # fmt: skip
    summary["run_wall_seconds"] = run_wall_seconds(directory)
    setup = (metrics["rounds"][0].get("setup") or {}).get("parts", {})
    summary["setup_seconds"] = {name: part["seconds"] for name, part in setup.items()}
    if "distillation" in setup:
        summary["distilled_feature_mse"] = [setup["distillation"]["mse_before"],
                                            setup["distillation"]["mse_after"]]  # fmt: skip
    return summary


# Protocol entries that name this machine's folders, not the experiment: a later session has its own.
_LOCAL_PATHS = ("model_name_or_path", "dataset_name")


def _comparable(protocol: dict) -> dict:
    return {
        k: v
        for k, v in json.loads(json.dumps(protocol)).items()
        if k not in _LOCAL_PATHS and k != "output_dir"
    }


def landed_results(path: Path, recipe: dict, pretraining: dict) -> dict:
    """Per method, per seed: the summaries already in a scenario's JSON, when it was written under the same protocol
    (folders aside) from the same pretrained checkpoint (its pretraining record); else none."""
    if not path.is_file():
        return {}
    report = json.loads(path.read_text())
    landed, now = _comparable(report.get("protocol", {})), _comparable(recipe)
    differ = sorted(k for k in landed.keys() | now.keys() if landed.get(k) != now.get(k))
    if report.get("pretraining") != pretraining:
        differ.append(f"pretrained checkpoint ({report.get('pretraining')} there, {pretraining} here)")
    if differ:
        print(f"== {path.name}: measured under another protocol, its results are not reused: {', '.join(differ)}",
              flush=True)  # fmt: skip
        return {}
    strategies = dict(FINETUNE_METHODS)
    landed, other = {}, []
    for method, entry in report["methods"].items():
        for seed, summary in entry["per_seed"].items() if method in strategies else ():
            if summary.get("settings") == finetune_settings(method, strategies[method]):
                landed.setdefault(method, {})[int(seed)] = summary
            else:
                other.append(f"{method} seed {seed}")
    if other:
        print(
            f"== {path.name}: measured with other method settings, not reused: {', '.join(other)}", flush=True
        )
    print(
        f"== {path.name}: reusing {sum(map(len, landed.values()))} finished (method, seed) results",
        flush=True,
    )
    return landed


def finetune_report(
    args, scenario: str, recipe: dict, pretraining: dict, summaries: dict, started: float
) -> dict:
    """The scenario's report from the summaries so far (methods in the script's order, seeds ascending)."""
    order = [m for m, _ in FINETUNE_METHODS if summaries.get(m)]
    summaries = {m: dict(sorted(summaries[m].items())) for m in order}
    methods = {}
    for method, by_seed in summaries.items():
        budgets = sorted({int(b) for s in by_seed.values() for b in s["accuracy"]})
        methods[method] = {
            "accuracy": {str(b): mean_std([s["accuracy"].get(str(b)) for s in by_seed.values()]) for b in budgets},
            "accuracy_after_fusion": {
                str(b): mean_std([s["accuracy_after_fusion"].get(str(b)) for s in by_seed.values()]) for b in budgets
            },
            **{key: mean_std([s[key] for s in by_seed.values()]) for key in
               ("selection_seconds", "selection_flops", "final_training_seconds", "end_to_end_seconds")},
            "per_seed": by_seed,
        }  # fmt: skip
    ratios = finetune_ratios(summaries)
    seeds = sorted({seed for by_seed in summaries.values() for seed in by_seed})
    report = {"scenario": scenario, "title": FINETUNE_SCENARIOS[scenario]["title"], "pretraining": pretraining,
              "methods": methods, "ratios": ratios, "seeds": seeds,
              "command": "python benchmarks/active_learning.py " + " ".join(args.argv),
              "protocol": {k: recipe[k] for k in sorted(recipe) if k != "output_dir"},
              "machine": machine_info(args.device), "invocation_seconds": time.perf_counter() - started,
              "wall_seconds": sum(s["run_wall_seconds"] or 0 for m in summaries.values() for s in m.values())}  # fmt: skip
    cpus = {}
    for by_seed in summaries.values():
        for seed, summary in by_seed.items():
            cpus.setdefault(summary.get("cpu") or "unrecorded", set()).add(seed)
    report["seeds_per_cpu"] = {cpu: sorted(seeds) for cpu, seeds in sorted(cpus.items())}
    report["ruled_out"] = [m for m in order if ruled_out(summaries, m)]
    report["targets"] = finetune_targets(report)
    return report


def paired(by_seed: dict, base: dict, budget: str) -> dict:
    """The same-seed accuracy difference (points) of a method against `base` at one budget: `mean_std` over the seeds
    both ran, with the standard error of the mean `se` (std / sqrt(n))."""
    shared = [
        s for s in by_seed if s in base and budget in by_seed[s]["accuracy"] and budget in base[s]["accuracy"]
    ]
    stat = mean_std([100 * (by_seed[s]["accuracy"][budget] - base[s]["accuracy"][budget]) for s in shared])
    return {**stat, "se": None if stat["std"] is None else stat["std"] / math.sqrt(stat["n"])}


def finetune_ratios(summaries: dict) -> dict:
    """Per method, against the same seed's dense-selector AL and random runs (same first query): the accuracy
    difference per budget in points with its standard error (`accuracy_gap_points` to dense AL, `vs_random_points`)
    and the selection-time, selection-FLOPs and end-to-end-time ratios to dense AL (mean ± std over seeds)."""
    dense, random = summaries.get("dense_al", {}), summaries.get("random", {})
    ratios = {}
    for method, by_seed in summaries.items():
        shared = [seed for seed in by_seed if seed in dense]
        if method == "dense_al" or not shared:
            continue
        budgets = sorted({b for seed in shared for b in by_seed[seed]["accuracy"]}, key=int)
        ratios[method] = {
            "accuracy_gap_points": {b: paired(by_seed, dense, b) for b in budgets},
            "vs_random_points": {b: paired(by_seed, random, b) for b in budgets} if method != "random" else {},
            **{f"{key}_ratio": mean_std([by_seed[s][f"{key}_seconds"] / dense[s][f"{key}_seconds"] for s in shared])
               for key in ("selection", "end_to_end")},
            "selection_flops_ratio": mean_std([by_seed[s]["selection_flops"] / dense[s]["selection_flops"]
                                               for s in shared if dense[s]["selection_flops"]]),
        }  # fmt: skip
    return ratios


def ruled_out(summaries: dict, method: str) -> bool:
    """Whether the first three seeds put `method` below random (mean same-seed difference < 0) at
    `RULED_OUT_BUDGETS` budgets or more: seeds 4 and 5 then skip it."""
    random = summaries.get("random", {})
    first = {s: r for s, r in summaries.get(method, {}).items() if s in (0, 1, 2) and s in random}
    if method in ("random", "dense_al") or len(first) < 3:
        return False
    budgets = {b for r in first.values() for b in r["accuracy"]}
    below = [b for b in budgets if (paired(first, random, b)["mean"] or 0.0) < 0]
    return len(below) >= RULED_OUT_BUDGETS


def finetune_targets(report: dict) -> dict:
    """The targets, checked on the means over seeds of same-seed differences.

    A selector (any method but random and dense AL) passes when it is never below random, within
    `mean_gap_points` of dense AL averaged over the budgets and never more than `worst_gap_points` below it, at no
    more than `selection_time_ratio` of dense AL's selection time. The recommended method is the passing one
    closest to dense AL on average; when none passes, the one with the smallest worst-case loss to random. Each cold
    start is compared with the same method's random first query.
    """
    targets = FINETUNE_TARGETS
    candidates = {}
    for method, ratio in report["ratios"].items():
        if method in ("random", "random_typiclust") or ratio["selection_ratio"]["mean"] is None:
            continue
        gaps = {b: g["mean"] for b, g in ratio["accuracy_gap_points"].items() if g["mean"] is not None}
        vs_random = {b: g["mean"] for b, g in ratio["vs_random_points"].items() if g["mean"] is not None}
        if not gaps:
            continue
        check = {
            "accuracy_gap_points": gaps,
            "mean_gap_points": float(np.mean(list(gaps.values()))),
            "worst_gap_points": min(gaps.values()),
            "vs_random_points": vs_random,
            "worst_vs_random_points": min(vs_random.values()) if vs_random else None,
            "selection_time_ratio": ratio["selection_ratio"]["mean"],
            "seeds": ratio["selection_ratio"]["n"],
        }
        check["random_met"] = bool(vs_random) and check["worst_vs_random_points"] >= 0
        check["accuracy_met"] = (
            check["mean_gap_points"] >= -targets["mean_gap_points"]
            and check["worst_gap_points"] >= -targets["worst_gap_points"]
        )
        check["time_met"] = check["selection_time_ratio"] <= targets["selection_time_ratio"]
        check["met"] = check["random_met"] and check["accuracy_met"] and check["time_met"]
        candidates[method] = check
    recommended, passes = recommend(candidates)
    cold = {}
    for method, baseline in COLD_STARTS.items():
        mine, theirs = report["methods"].get(method), report["methods"].get(baseline)
        if not (mine and theirs):
            continue
        first = min(mine["accuracy"], key=int)
        gain = 100 * (mine["accuracy"][first]["mean"] - theirs["accuracy"][first]["mean"])
        cold[method] = {"baseline": baseline, "budget": int(first), "gain_points": gain,
                        "met": gain >= targets["cold_start_points"]}  # fmt: skip
    return {"recommended": recommended, "recommended_passes": passes, "methods": candidates,
            "cold_start": cold, "thresholds": targets}  # fmt: skip


def recommend(checks: dict) -> tuple[str | None, bool]:
    """The recommended method of `checks` (method -> `met`, `mean_gap_points`, `worst_vs_random_points`) and whether
    it passes: the passing method closest to dense AL on average; when none passes, the one with the smallest
    worst-case loss to random (`None` when no method has one)."""
    passing = [m for m, c in checks.items() if c["met"]]
    if passing:
        return max(passing, key=lambda m: checks[m]["mean_gap_points"]), True
    scored = [m for m, c in checks.items() if c["worst_vs_random_points"] is not None]
    return max(scored, key=lambda m: checks[m]["worst_vs_random_points"], default=None), False


def joint_targets(reports: dict) -> dict:
    """The recommendation over fine-tuning scenarios (name -> report with its `finetune_targets`), for the methods
    measured in every one: a method passes when it passes in each scenario; the recommended one is the passing method
    closest to dense AL on average over the scenarios, else the one with the smallest worst-case loss to random over
    all of them. Returns the recommendation, whether it passes and each method's per-scenario checks."""
    checks = {name: report["targets"]["methods"] for name, report in reports.items()}
    shared = [m for m in next(iter(checks.values())) if all(m in c for c in checks.values())]
    fields = (
        "met",
        "mean_gap_points",
        "worst_gap_points",
        "worst_vs_random_points",
        "selection_time_ratio",
        "seeds",
    )
    methods = {}
    for method in shared:
        per = {name: {k: c[method][k] for k in fields} for name, c in checks.items()}
        worst = [c["worst_vs_random_points"] for c in per.values()]
        methods[method] = {
            "met": all(c["met"] for c in per.values()),
            "mean_gap_points": float(np.mean([c["mean_gap_points"] for c in per.values()])),
            "worst_vs_random_points": None if None in worst else min(worst),
            "scenarios": per,
        }
    recommended, passes = recommend(methods)
    return {"scenarios": list(reports), "recommended": recommended, "recommended_passes": passes,
            "methods": methods}  # fmt: skip


def joint_markdown(joint: dict) -> str:
    """`joint_targets` as a markdown table: per method, PASS/MISS in each scenario and over all."""
    names = joint["scenarios"]
    lines = [
        f"Fine-tuning targets over {', '.join(names)} (means over seeds of same-seed differences).",
        "",
        "| method | " + " | ".join(names) + " | mean gap to dense AL | worst vs random | all |",
        "|---" * (len(names) + 4) + "|",
    ]
    for method, check in joint["methods"].items():
        cells = []
        for name in names:
            c = check["scenarios"][name]
            cells.append(f"{'PASS' if c['met'] else 'MISS'} ({c['mean_gap_points']:+.2f} / {c['worst_gap_points']:+.2f}"
                         f" / {c['selection_time_ratio']:.2f}x, {c['seeds']} seeds)")  # fmt: skip
        worst = check["worst_vs_random_points"]
        label = FINETUNE_LABELS.get(method, method)
        if method == joint["recommended"]:
            label = f"**recommended** {label}"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {check['mean_gap_points']:+.2f} | "
                     f"{'–' if worst is None else f'{worst:+.2f}'} | {'PASS' if check['met'] else 'MISS'} |")  # fmt: skip
    lines += ["", "Per scenario: mean / worst gap to dense AL (points), selection time / dense AL's."]
    if not joint["recommended_passes"]:
        lines.append("No method passes in every scenario: the recommended one has the smallest worst-case loss to "
                     "random over them.")  # fmt: skip
    return "\n".join(lines) + "\n"


def write_joint_targets(output: Path) -> dict | None:
    """When `output` holds the JSON of every fine-tuning scenario, write `finetune_targets.json` and `.md` (the
    recommendation over all of them) and return it; else `None`."""
    paths = [output / f"{scenario}.json" for scenario in FINETUNE_SCENARIOS]
    if not all(p.is_file() for p in paths):
        return None
    joint = joint_targets({p.stem: json.loads(p.read_text()) for p in paths})
    (output / "finetune_targets.json").write_text(json.dumps(joint, indent=1) + "\n")
    (output / "finetune_targets.md").write_text(joint_markdown(joint))
    return joint


def _paired_cells(differences: dict) -> str:
    """Same-seed differences per budget as `+a ± se / ...` (points ± standard error)."""
    return " / ".join(
        "–" if d["mean"] is None else f"{d['mean']:+.1f} ± {d['se']:.1f}" for d in differences.values()
    )


def finetune_markdown(report: dict) -> str:
    machine, pre = report["machine"], report["pretraining"]
    methods, ratios = report["methods"], report["ratios"]
    budgets = sorted({int(b) for m in methods.values() for b in m["accuracy"]})
    lines = [
        f"{report['title'][0].upper()}{report['title'][1:]}. Machine: {machine['device']}, {machine['cpu_count']} CPU "
        f"cores, torch {machine['torch']}; seeds {report['seeds']} ("
        + "; ".join(
            f"{', '.join(map(str, seeds))} on {cpu}" for cpu, seeds in report.get("seeds_per_cpu", {}).items()
        )
        + f"); {report['wall_seconds'] / 60:.0f} min in all. "
        f"Accuracy: mean ± std over seeds. Differences: same-seed (same first query) differences in points, mean ± "
        f"standard error. Pretrained on {', '.join(pre['classes'])} ("
        + (f"{pre['examples']:,} training images, " if "examples" in pre else "")
        + f"{pre['epochs']} epochs, "
        f"{100 * pre['accuracy']:.1f} % on their test images); fine-tuned on the other four classes with a new head.",
        "",
        "| method | seeds | "
        + " | ".join(f"{b:,}" for b in budgets)
        + " | right after fusion (last budget) | selection s | end-to-end s | vs random (per budget) "
        "| vs dense AL (per budget) | selection time / dense AL |",
        "|---" * (len(budgets) + 8) + "|",
    ]
    for method, entry in methods.items():
        accuracy = [_pm(entry["accuracy"].get(str(b), {"mean": None}), 100) for b in budgets]
        after = entry["accuracy_after_fusion"].get(str(budgets[-1]), {"mean": None})
        ratio = ratios.get(method)
        vs_random = (
            "–" if not ratio or not ratio["vs_random_points"] else _paired_cells(ratio["vs_random_points"])
        )
        gaps = "–" if ratio is None else _paired_cells(ratio["accuracy_gap_points"])
        time_ratio = "–" if ratio is None else _pm(ratio["selection_ratio"], 1, ".2f")
        seeds = ", ".join(str(s) for s in entry["per_seed"])
        if method in report.get("ruled_out", []):
            seeds += " (below random at 2+ budgets in seeds 0–2: later seeds skipped)"
        lines.append(f"| {FINETUNE_LABELS[method]} | {seeds} | " + " | ".join(accuracy) + f" | {_pm(after, 100)} | "
                     f"{_pm(entry['selection_seconds'])} | {_pm(entry['end_to_end_seconds'])} | {vs_random} | "
                     f"{gaps} | {time_ratio} |")  # fmt: skip
    targets = report["targets"]
    limits = targets["thresholds"]
    lines += ["", "Targets (means over seeds of the same-seed differences):", ""]
    recommended = targets["recommended"]
    for method, check in targets["methods"].items():
        worst_random = check["worst_vs_random_points"]
        lines.append(
            f"- {'**recommended** ' if method == recommended else ''}{FINETUNE_LABELS[method]} "
            f"({check['seeds']} seeds): {'PASS' if check['met'] else 'MISS'}. "
            f"Never below random: {'met' if check['random_met'] else 'missed'} (worst "
            + ("–" if worst_random is None else f"{worst_random:+.2f}")
            + f"). Vs dense AL: {'met' if check['accuracy_met'] else 'missed'} (mean {check['mean_gap_points']:+.2f}, "
            f"target >= -{limits['mean_gap_points']}; worst {check['worst_gap_points']:+.2f}, target >= "
            f"-{limits['worst_gap_points']}). Selection time {check['selection_time_ratio']:.2f}x dense AL's, target "
            f"<= {limits['selection_time_ratio']}: {'met' if check['time_met'] else 'missed'}."
        )
    if recommended and not targets["recommended_passes"]:
        lines.append(
            "- No method passes every target: the recommended one has the smallest worst-case loss to random."
        )
    for method, check in targets["cold_start"].items():
        lines.append(
            f"- cold start, {FINETUNE_LABELS[method]}: {'PASS' if check['met'] else 'MISS'} ({check['gain_points']:+.2f} "
            f"points over {FINETUNE_LABELS[check['baseline']]} at {check['budget']:,} labels; target >= "
            f"+{limits['cold_start_points']})"
        )
    return "\n".join(lines) + "\n"


def finetune_plot(report: dict, output: Path) -> str:
    """
    Accuracy per budget (mean ± std over seeds) and each method's selection time as a same-seed ratio to dense
    AL's: seeds may come from different kinds of CPU, whose absolute seconds differ, while a ratio compares two runs
    on one machine (random, which selects in no time, and dense AL, the baseline, have no bar). One colour per
    method from a 20-colour map (the default cycle repeats after 10), shared by both panels; the dashed line is the
    0.3x target.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["methods"])
    # tab20 pairs a dark and a light shade of each hue: the 10 dark ones first, so that neighbours differ in hue.
    colors = {m: plt.get_cmap("tab20")((2 * i) % 20 + (i // 10) % 2) for i, m in enumerate(names)}
    figure, axes = plt.subplots(1, 2, figsize=(14, 5.5), gridspec_kw={"width_ratios": [3, 2]})
    ax = axes[0]
    for method, entry in report["methods"].items():
        budgets = sorted(int(b) for b in entry["accuracy"])
        means = [100 * entry["accuracy"][str(b)]["mean"] for b in budgets]
        stds = [100 * entry["accuracy"][str(b)]["std"] for b in budgets]
        ax.errorbar(
            budgets, means, yerr=stds, marker="o", capsize=3, color=colors[method], label=LABELS[method]
        )
    ax.set(title=report["title"], xlabel="labeled examples", ylabel="test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax = axes[1]
    shown = [
        m
        for m in names
        if m not in ("random", "dense_al") and report["ratios"].get(m, {}).get("selection_ratio")
    ]
    ratios = [report["ratios"][m]["selection_ratio"] for m in shown]
    ax.barh(range(len(shown)), [r["mean"] for r in ratios], xerr=[r["std"] for r in ratios],
            color=[colors[m] for m in shown])  # fmt: skip
    ax.axvline(FINETUNE_TARGETS["selection_time_ratio"], color="black", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(shown)), [LABELS[m] for m in shown], fontsize=7)
    ax.set_xlabel("selection time / dense AL's, same seed (dashed: target)")
    ax.invert_yaxis()
    figure.tight_layout()
    return _save(figure, output / f"{report['scenario']}_accuracy.png")


def scratch_scenario(args) -> dict:
    recipe = base_recipe(args)
    started = time.perf_counter()
    summaries, directories = {}, {}
    for method, strategy, seed in plan_runs(args):
        metrics, directory = run_one(args, recipe, method, strategy, seed)
        summaries.setdefault((method, strategy), {})[seed] = {
            **run_summary(metrics),
            "run_wall_seconds": run_wall_seconds(directory),
        }
        directories[method, strategy, seed] = directory
    comparisons = {}
    for (method, strategy, seed), directory in directories.items():
        if method == "prunefuse_p0.5" and ("svp", strategy, seed) in directories:
            fused, fresh = summaries[method, strategy][seed], summaries["svp", strategy][seed]
            same = same_selection(directory, directories["svp", strategy, seed])
            comparisons.setdefault(strategy, {})[seed] = fused_vs_fresh(fused, fresh, same)
    report = {
        "protocol": {key: recipe[key] for key in sorted(recipe) if key not in ("output_dir",)},
        "quick": args.quick,
        "seeds": args.seeds,
        "machine": machine_info(args.device),
        "command": "python benchmarks/active_learning.py " + " ".join(args.argv),
        **aggregate(summaries, comparisons),
        "invocation_seconds": time.perf_counter() - started,
        "wall_seconds": sum(
            s["run_wall_seconds"] or 0.0 for by_seed in summaries.values() for s in by_seed.values()
        ),
    }
    report["targets"] = check_targets(report)
    args.output.mkdir(parents=True, exist_ok=True)
    report["plots"] = plot(report, args.output)
    (args.output / "active_learning.json").write_text(json.dumps(report, indent=1) + "\n")
    table = markdown(report)
    (args.output / "active_learning.md").write_text(table)
    print(table)
    return report


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    reports = {}
    if args.scenario in ("scratch", "both", "all"):
        reports["scratch"] = scratch_scenario(args)
    scenarios = {"both": ["finetune"], "all": list(FINETUNE_SCENARIOS)}.get(args.scenario, [args.scenario])
    for scenario in [s for s in scenarios if s in FINETUNE_SCENARIOS]:
        report = finetune_scenario(args, scenario)
        args.output.mkdir(parents=True, exist_ok=True)
        report["plots"] = [finetune_plot(report, args.output)]
        (args.output / f"{scenario}.json").write_text(json.dumps(report, indent=1) + "\n")
        table = finetune_markdown(report)
        (args.output / f"{scenario}.md").write_text(table)
        print(table)
        reports[scenario] = report
    if any(s in FINETUNE_SCENARIOS for s in scenarios) and (joint := write_joint_targets(args.output)):
        print(joint_markdown(joint))
    return reports


if __name__ == "__main__":
    main()
