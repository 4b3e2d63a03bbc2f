"""The segmentation and detection benchmarks' `--quick` mode, run as a user runs them, so the scripts cannot rot."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


# About 15 s (segmentation) and 40 s (detection, with its backbone pretraining) alone, seven short runs each: behind
# the slow marker to keep the default suite within its budget.
@pytest.mark.slow
@pytest.mark.parametrize(
    "scenario, metrics, budgets, pool",
    [
        ("segmentation", ["mean_iou"], ["20", "40"], "60"),
        ("detection", ["map_50", "map"], ["16", "32"], "40"),
    ],
)
def test_quick_task_benchmark_runs_every_method_and_resumes(tmp_path, scenario, metrics, budgets, pool):
    output, runs = tmp_path / "results", tmp_path / "runs"
    script = BENCHMARKS / f"{scenario}.py"
    command = [sys.executable, str(script), "--quick", "--output", str(output), "--runs_dir", str(runs)]
    subprocess.run(command, check=True, capture_output=True, text=True)

    report = json.loads((output / f"{scenario}.json").read_text())
    methods = report["methods"]
    assert report["metrics"] == metrics
    assert set(methods) == {"random", "dense_al", "prunefuse", "full_pool"}
    for name in ("random", "dense_al", "prunefuse"):
        for metric in metrics:  # the random first batch, then one round of as many
            assert list(methods[name][metric]) == budgets
            assert all(0 <= stat["mean"] <= 1 for stat in methods[name][metric].values())
    assert list(methods["full_pool"][metrics[0]]) == [pool]  # the whole quick pool
    assert methods["random"]["per_seed"]["0"]["selection_flops"] == 0  # no model scores the pool
    # Each method is the configuration its name claims, read back from the run's own state.
    claims = {
        "random": ("random", 0.0, False),
        "dense_al": ("dense_al", 0.0, False),
        "prunefuse": ("prunefuse", 0.5, True),
    }
    for name, (method, ratio, fusion) in claims.items():
        state = json.loads((runs / f"{name}-seed0" / "state.json").read_text())
        settings = state["settings"]
        assert (settings["method"], settings["pruning_ratio"], settings["fusion"]) == (method, ratio, fusion)
        if scenario == "detection":  # every method starts from the detector whose backbone was pretrained
            assert state["recipe"]["model_name_or_path"] == str(runs / "start")
    ratio = report["comparisons"]["prunefuse"]["selection_time_ratio"]["mean"]
    assert ratio > 0
    measured_after = {"detection": {"scoring_vs_bare_forward"}, "segmentation": set()}[scenario]
    assert set(report["targets"]) == {
        "above_random",
        "within_dense_al",
        "selection_time_ratio",
        f"full_pool_{metrics[0]}",
        *measured_after,
    }
    for name in measured_after:
        assert report["targets"][name]["measured"] > 0
        assert f"| {name} (" in (output / f"{scenario}.md").read_text()
    assert "| PruneFuse p=0.5 |" in (output / f"{scenario}.md").read_text()
    assert (
        0 < report["comparisons"]["prunefuse"]["selection_flops_ratio"]["mean"] < 1
    )  # the surrogate is cheaper
    assert (output / report["plots"][0]).stat().st_size > 0

    # A second invocation reuses the finished run directories instead of training again.
    subprocess.run(command, check=True, capture_output=True, text=True)
    again = json.loads((output / f"{scenario}.json").read_text())
    assert again["methods"] == report["methods"]
