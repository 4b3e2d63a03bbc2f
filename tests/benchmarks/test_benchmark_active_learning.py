"""The active-learning benchmark's `--quick` mode, run as a user runs it, so the script cannot rot."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "active_learning.py"


def test_quick_benchmark_runs_every_method_and_writes_results(tmp_path):
    output, runs = tmp_path / "results", tmp_path / "runs"
    command = [sys.executable, str(SCRIPT), "--quick", "--output", str(output), "--runs_dir", str(runs)]
    subprocess.run(command, check=True, capture_output=True, text=True)

    report = json.loads((output / "active_learning.json").read_text())
    methods = report["methods"]
    assert set(methods["least_confidence"]) == {
        "dense_al",
        "svp",
        "prunefuse_p0.5",
        "prunefuse_p0.7",
        "prunefuse_kd",
    }
    assert set(methods["kcenter_greedy"]) == {"dense_al", "prunefuse_p0.5"}
    assert set(methods["random"]) == {"random"}
    budgets = ["40", "80", "120"]  # 40 random labels, then two rounds of +40
    for by_method in methods.values():
        for entry in by_method.values():
            assert list(entry["accuracy"]) == budgets
            assert all(0 <= entry["accuracy"][b]["mean"] <= 1 for b in budgets)
    assert methods["random"]["random"]["selection_flops"]["mean"] == 0  # no model scores the pool

    # Ratios come from the same run; the surrogate's selection FLOPs are a fraction of the dense model's.
    ratio = report["ratios"]["least_confidence"]["prunefuse_p0.5"]["selection_flops_ratio"]["mean"]
    assert 0.1 < ratio < 0.9
    # SVP and PruneFuse share the selector: identical selections, fused vs fresh on the same data.
    curves = report["fused_vs_fresh"]["least_confidence"]
    assert curves["same_selection"] and list(curves["budgets"]) == budgets
    assert set(report["targets"]["least_confidence"]) >= {"selection_time_ratio", "accuracy_vs_dense_al"}
    for name in report["plots"]:
        assert (output / name).stat().st_size > 0
    assert "| PruneFuse p=0.5 |" in (output / "active_learning.md").read_text()

    # A second invocation reuses the finished run directories instead of training again.
    subprocess.run(command, check=True, capture_output=True, text=True)
    again = json.loads((output / "active_learning.json").read_text())
    assert again["methods"] == report["methods"]

    # The fine-tuning scenario: a pretrained dense model, each method the configuration its name claims.
    finetune = json.loads((output / "finetune.json").read_text())
    assert set(finetune["methods"]) == {"random", "dense_al", "svp", "prunefuse_p0.5", "prunefuse_kd",
                                        "distill_no_fusion"}  # fmt: skip
    claims = {
        "random": {"method": "random", "strategy": "random", "fusion": False, "distill_alpha": 0.0},
        "dense_al": {"method": "dense_al", "pruning_ratio": 0.0, "fusion": False, "distill_alpha": 0.0},
        "svp": {"method": "svp", "pruning_ratio": 0.5, "fusion": False, "distill_alpha": 0.0},
        "prunefuse_p0.5": {"method": "prunefuse", "pruning_ratio": 0.5, "fusion": True, "distill_alpha": 0.0},
        "prunefuse_kd": {"method": "prunefuse", "pruning_ratio": 0.5, "fusion": True, "distill_alpha": 0.5},
        "distill_no_fusion": {"method": "svp", "pruning_ratio": 0.5, "fusion": False, "distill_alpha": 0.5},
    }
    for method, claim in claims.items():
        strategy = "random" if method == "random" else "least_confidence"
        state = json.loads((runs / "finetune" / f"{method}-{strategy}-seed0" / "state.json").read_text())
        assert {k: state["settings"][k] for k in claim} == claim, method
        assert state["recipe"]["model_name_or_path"] == str(runs / "pretrained")
        assert finetune["methods"][method]["accuracy"], method
    # Only fusion methods have an accuracy right after fusion.
    assert finetune["methods"]["prunefuse_kd"]["accuracy_after_fusion"]["120"]["n"] == 1
    assert finetune["methods"]["svp"]["accuracy_after_fusion"]["120"]["n"] == 0
    assert "| SVP + KD (fusion off) |" in (output / "finetune.md").read_text()
