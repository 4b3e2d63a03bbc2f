"""The segmentation benchmark's `--quick` mode, run as a user runs it, so the script cannot rot."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "segmentation.py"


# About 15 s alone (seven short runs): behind the slow marker to keep the default suite within its budget.
@pytest.mark.slow
def test_quick_segmentation_benchmark_runs_every_method_and_resumes(tmp_path):
    output, runs = tmp_path / "results", tmp_path / "runs"
    command = [sys.executable, str(SCRIPT), "--quick", "--output", str(output), "--runs_dir", str(runs)]
    subprocess.run(command, check=True, capture_output=True, text=True)

    report = json.loads((output / "segmentation.json").read_text())
    methods = report["methods"]
    assert set(methods) == {"random", "dense_al", "prunefuse", "full_pool"}
    for name in ("random", "dense_al", "prunefuse"):
        assert list(methods[name]["mean_iou"]) == ["20", "40"]  # 20 random images, then one round of +20
        assert all(0 <= stat["mean"] <= 1 for stat in methods[name]["mean_iou"].values())
    assert list(methods["full_pool"]["mean_iou"]) == ["60"]  # the whole quick pool
    assert methods["random"]["per_seed"]["0"]["selection_flops"] == 0  # no model scores the pool
    # Each method is the configuration its name claims, read back from the run's own state.
    claims = {
        "random": ("random", 0.0, False),
        "dense_al": ("dense_al", 0.0, False),
        "prunefuse": ("prunefuse", 0.5, True),
    }
    for name, (method, ratio, fusion) in claims.items():
        settings = json.loads((runs / f"{name}-seed0" / "state.json").read_text())["settings"]
        assert (settings["method"], settings["pruning_ratio"], settings["fusion"]) == (method, ratio, fusion)
    ratio = report["comparisons"]["prunefuse"]["selection_time_ratio"]["mean"]
    assert ratio > 0
    assert set(report["targets"]) == {
        "above_random",
        "within_dense_al",
        "selection_time_ratio",
        "full_pool_mean_iou",
    }
    assert "| PruneFuse p=0.5 |" in (output / "segmentation.md").read_text()
    assert (
        0 < report["comparisons"]["prunefuse"]["selection_flops_ratio"]["mean"] < 1
    )  # the surrogate is cheaper
    assert (output / report["plots"][0]).stat().st_size > 0

    # A second invocation reuses the finished run directories instead of training again.
    subprocess.run(command, check=True, capture_output=True, text=True)
    again = json.loads((output / "segmentation.json").read_text())
    assert again["methods"] == report["methods"]
