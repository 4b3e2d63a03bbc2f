"""The active-learning benchmark's `--quick` mode, run as a user runs it, so the script cannot rot."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "active_learning.py"
# (method, strategy) of the fine-tuning scenarios, as the script lists them.
FINETUNE_METHODS = [
    ("random", "random"), ("random_typiclust", "random"), ("dense_al", "least_confidence"),
    ("svp", "least_confidence"), ("prunefuse_kd", "least_confidence"), ("prunefuse_distilled", "least_confidence"),
    ("feature_proxy", "least_confidence"), ("feature_proxy_typiclust", "least_confidence"),
    ("feature_proxy_margin", "margin"), ("feature_proxy_refreshed_margin", "margin"),
    ("feature_proxy_dropquery", "dropquery"), ("feature_proxy_cluster_margin", "cluster_margin"),
    ("prunefuse_distilled_quarter", "least_confidence"), ("prunefuse_distilled_fast", "least_confidence"),
]  # fmt: skip


# 52 s on 2 cores (every method of both scenarios, the fine-tuning ones with DropQuery and the refreshed proxy): behind
# the slow marker to keep the default suite under 10 minutes.
@pytest.mark.slow
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
    assert set(finetune["methods"]) == {"random", "random_typiclust", "dense_al", "svp", "prunefuse_kd",
                                        "prunefuse_distilled", "feature_proxy", "feature_proxy_typiclust",
                                        "feature_proxy_margin", "feature_proxy_refreshed_margin",
                                        "feature_proxy_dropquery", "feature_proxy_cluster_margin",
                                        "prunefuse_distilled_quarter", "prunefuse_distilled_fast"}  # fmt: skip
    claims = {
        "random": {"method": "random", "strategy": "random", "fusion": False, "initial_strategy": "random"},
        "random_typiclust": {"method": "random", "strategy": "random", "initial_strategy": "typiclust"},
        "dense_al": {"method": "dense_al", "pruning_ratio": 0.0, "fusion": False, "selector": "trained"},
        "svp": {"method": "svp", "pruning_ratio": 0.5, "fusion": False, "distill_alpha": 0.0},
        "prunefuse_kd": {"method": "prunefuse", "pruning_ratio": 0.5, "fusion": True, "distill_alpha": 0.5,
                         "surrogate_distill_epochs": 0.0},
        "prunefuse_distilled": {"method": "prunefuse_distilled", "fusion": True, "surrogate_distill_epochs": 1.0},
        "feature_proxy": {"method": "feature_proxy", "pruning_ratio": 0.0, "selector": "linear_probe",
                          "fusion": False, "initial_strategy": "random"},
        "feature_proxy_typiclust": {"method": "feature_proxy", "selector": "linear_probe",
                                    "initial_strategy": "typiclust"},
        "feature_proxy_margin": {"method": "feature_proxy", "selector": "linear_probe", "strategy": "margin"},
        "feature_proxy_refreshed_margin": {"method": "feature_proxy_refreshed", "selector": "linear_probe",
                                           "strategy": "margin", "proxy_refresh_every": 1},
        "feature_proxy_dropquery": {"method": "feature_proxy", "strategy": "dropquery", "proxy_refresh_every": 0},
        "feature_proxy_cluster_margin": {"method": "feature_proxy", "strategy": "cluster_margin",
                                         "proxy_refresh_every": 0},
        "prunefuse_distilled_quarter": {"method": "prunefuse_distilled", "surrogate_distill_epochs": 0.25},
        "prunefuse_distilled_fast": {"method": "prunefuse_distilled", "surrogate_distill_epochs": 0.25,
                                     "surrogate_num_train_epochs": 0.5},  # half the quick protocol's 1 epoch
    }  # fmt: skip
    for method, claim in claims.items():
        strategy = dict(FINETUNE_METHODS)[method]
        state = json.loads((runs / "finetune" / f"{method}-{strategy}-seed0" / "state.json").read_text())
        assert {k: state["settings"][k] for k in claim} == claim, method
        assert state["recipe"]["model_name_or_path"] == str(runs / "pretrained")
        assert finetune["methods"][method]["accuracy"], method
    # Only fusion methods have an accuracy right after fusion.
    assert finetune["methods"]["prunefuse_kd"]["accuracy_after_fusion"]["120"]["n"] == 1
    assert finetune["methods"]["svp"]["accuracy_after_fusion"]["120"]["n"] == 0
    # The feature proxy books one pass over the pool as its selection: far less than dense AL's rounds.
    ratios = finetune["ratios"]
    assert 0 < ratios["feature_proxy"]["selection_flops_ratio"]["mean"] < 0.5
    assert set(ratios["feature_proxy"]["accuracy_gap_points"]) == {"40", "80", "120"}
    targets = finetune["targets"]
    assert targets["recommended"] in targets["methods"] and "dense_al" not in targets["methods"]
    assert set(targets["cold_start"]) == {"random_typiclust", "feature_proxy_typiclust"}
    table = (output / "finetune.md").read_text()
    assert "| feature proxy: linear probe on frozen pretrained features, fine-tuned |" in table
    assert "**recommended**" in table and "cold start, " in table


@pytest.mark.slow
def test_quick_vit_scenario_pretrains_a_vit_and_runs_every_fine_tuning_method(tmp_path):
    output, runs = tmp_path / "results", tmp_path / "runs"
    command = [sys.executable, str(SCRIPT), "--quick", "--scenario", "finetune_vit", "--output", str(output),
               "--runs_dir", str(runs)]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, text=True)
    report = json.loads((output / "finetune_vit.json").read_text())
    assert report["pretraining"]["model_type"] == "vit"
    assert json.loads((runs / "pretrained_vit" / "config.json").read_text())["model_type"] == "vit"
    assert len(report["methods"]) == len(FINETUNE_METHODS) and all(
        m["accuracy"] for m in report["methods"].values()
    )
    assert (output / "finetune_vit_accuracy.png").stat().st_size > 0
    # Every method's accuracy is the same fine-tuning of its labeled set: at the first budget (one random draw for
    # all but the TypiClust cold starts) dense AL, SVP and the probes equal random, and their differences are 0.
    first = {m: e["per_seed"]["0"]["accuracy"] for m, e in report["methods"].items()}
    budget = min(first["random"], key=int)
    for method in ("dense_al", "svp", "feature_proxy", "feature_proxy_cluster_margin"):
        assert first[method][budget] == first["random"][budget], method
    assert report["methods"]["dense_al"]["per_seed"]["0"]["settings"]["eval_dense_every_round"] is True


@pytest.mark.slow
def test_finished_results_land_in_the_json_and_a_later_invocation_continues_from_it(tmp_path):
    output, runs = tmp_path / "results", tmp_path / "runs"
    command = [sys.executable, str(SCRIPT), "--quick", "--scenario", "finetune", "--output", str(output),
               "--runs_dir", str(runs), "--methods", "random"]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, text=True)
    first = json.loads((output / "finetune.json").read_text())
    assert list(first["methods"]) == ["random"] and first["seeds"] == [0]
    # Another session: the committed JSON, not the run directories (the pretrained checkpoint is the same).
    shutil.rmtree(runs / "finetune")
    command[-1:] = ["random", "feature_proxy_dropquery"]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    assert "reusing 1 finished (method, seed) results" in result.stdout
    assert not (runs / "finetune" / "random-random-seed0").exists()  # not run again
    second = json.loads((output / "finetune.json").read_text())
    assert list(second["methods"]) == ["random", "feature_proxy_dropquery"]
    assert second["methods"]["random"]["per_seed"] == first["methods"]["random"]["per_seed"]
    # Another protocol is not mixed in.
    protocol = {**second["protocol"], "num_train_epochs": 7}
    (output / "finetune.json").write_text(json.dumps({**second, "protocol": protocol}))
    command[-2:] = ["random"]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    assert "another protocol, its results are not reused: num_train_epochs" in result.stdout
    assert (runs / "finetune" / "random-random-seed0" / "metrics.json").is_file()
    # Nor from other pretrained weights with the same record (classes, accuracy, epochs).
    third = json.loads((output / "finetune.json").read_text())
    assert len(third["pretraining"]["weights_sha256"]) == 64
    pretraining = {**third["pretraining"], "weights_sha256": "0" * 64}
    (output / "finetune.json").write_text(json.dumps({**third, "pretraining": pretraining}))
    shutil.rmtree(runs / "finetune")
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    assert "not reused: pretrained checkpoint" in result.stdout
    assert (runs / "finetune" / "random-random-seed0" / "metrics.json").is_file()
    # A seed with runs to do whose finished runs came from another kind of CPU is rerun here in full.
    fourth = json.loads((output / "finetune.json").read_text())
    assert fourth["seeds_per_cpu"] == {fourth["machine"]["device"]: [0]}
    fourth["methods"]["random"]["per_seed"]["0"]["cpu"] = "Another CPU"
    (output / "finetune.json").write_text(json.dumps(fourth))
    shutil.rmtree(runs / "finetune")
    command[-1:] = ["random", "feature_proxy"]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    assert "seed 0: its finished runs came from another CPU" in result.stdout
    assert (runs / "finetune" / "random-random-seed0" / "metrics.json").is_file()
    fifth = json.loads((output / "finetune.json").read_text())
    assert fifth["seeds_per_cpu"] == {fifth["machine"]["device"]: [0]} and list(fifth["methods"]) == [
        "random",
        "feature_proxy",
    ]
    # An invocation with nothing left to run only re-renders: the machine stays the one that measured the results.
    (output / "finetune.json").write_text(
        json.dumps({**fifth, "machine": {**fifth["machine"], "device": "Measurer"}})
    )
    subprocess.run(command, check=True, capture_output=True, text=True)
    assert json.loads((output / "finetune.json").read_text())["machine"]["device"] == "Measurer"
    assert "Machine: Measurer," in (output / "finetune.md").read_text()


def _summary(accuracy: dict, seconds: float) -> dict:
    return {"accuracy": accuracy, "selection_seconds": seconds, "end_to_end_seconds": seconds + 10.0,
            "selection_flops": seconds}  # fmt: skip


def test_results_measured_with_other_method_settings_are_not_reused(tmp_path, capsys):
    from active_learning import finetune_settings, landed_results

    recipe, pretraining = {"num_train_epochs": 5, "model_name_or_path": "/here"}, {"weights_sha256": "0" * 64}
    earlier = {"method": "dense_al", "eval_dense_every_round": False, "strategy": "least_confidence"}
    random = {"accuracy": {"300": 0.9}, "settings": finetune_settings("random", "random")}
    dense = {"accuracy": {"300": 0.91}, "settings": finetune_settings("dense_al", "least_confidence")}
    report = {"protocol": {**recipe, "model_name_or_path": "/elsewhere"}, "pretraining": pretraining,
              "methods": {"random": {"per_seed": {"0": random}},
                          "dense_al": {"per_seed": {"0": {**dense, "settings": earlier}, "1": dense}}}}  # fmt: skip
    path = tmp_path / "finetune.json"
    path.write_text(json.dumps(report))
    assert landed_results(path, recipe, pretraining) == {"random": {0: random}, "dense_al": {1: dense}}
    assert "other method settings, not reused: dense_al seed 0" in capsys.readouterr().out
    assert dense["settings"] == {
        "method": "dense_al",
        "eval_dense_every_round": True,
        "strategy": "least_confidence",
    }


def test_seeds_with_a_run_from_another_cpu_are_found_unrecorded_ones_included():
    from active_learning import seeds_from_other_cpus

    here = {"accuracy": {}, "cpu": "AMD EPYC"}
    summaries = {"random": {0: here, 1: here, 2: {**here, "cpu": "Intel Xeon Processor"}},
                 "dense_al": {0: here, 1: {"accuracy": {}}}}  # fmt: skip
    assert seeds_from_other_cpus(summaries, "AMD EPYC") == {1, 2}
    assert seeds_from_other_cpus(summaries, "Intel Xeon Processor") == {0, 1}


def test_the_cpu_kind_tells_apart_generations_that_share_a_model_name():
    from common import cpu_name

    first = "processor\t: 0\nmodel name\t: AMD EPYC\ncpu family\t: 25\nmodel\t\t: 1\n"
    later = first.replace("model\t\t: 1", "model\t\t: 17")
    assert cpu_name(first).startswith("AMD EPYC (family 25, model 1, ")
    assert cpu_name(later).startswith("AMD EPYC (family 25, model 17, ")
    assert cpu_name("").endswith(f"({torch.backends.cpu.get_cpu_capability()})")  # no /proc/cpuinfo


def test_fine_tuning_targets_use_same_seed_differences_and_rule_out_methods_below_random():
    from active_learning import finetune_ratios, finetune_targets, paired, ruled_out

    budgets = ("300", "600")
    # Per seed: random, dense AL, a method close to dense AL at 0.2x its time, and one below random at both budgets.
    random = {s: _summary(dict(zip(budgets, (0.80 + s / 100, 0.85 + s / 100))), 0.0) for s in range(3)}
    dense = {s: _summary(dict(zip(budgets, (0.82 + s / 100, 0.88 + s / 100))), 100.0) for s in range(3)}
    close = {s: _summary(dict(zip(budgets, (0.818 + s / 100, 0.875 + s / 100 + (s - 1) / 1000))), 20.0)
             for s in range(3)}  # fmt: skip
    below = {s: _summary(dict(zip(budgets, (0.79 + s / 100, 0.84 + s / 100))), 10.0) for s in range(3)}
    summaries = {"random": random, "dense_al": dense, "close": close, "below": below}

    difference = paired(close, dense, "600")  # -0.6, -0.5, -0.4 points
    assert difference["mean"] == pytest.approx(-0.5) and difference["n"] == 3
    assert difference["se"] == pytest.approx(0.1 / 3**0.5)
    assert ruled_out(summaries, "below") and not ruled_out(summaries, "close")
    assert not ruled_out({**summaries, "below": {0: below[0], 1: below[1]}}, "below")  # three seeds needed

    targets = finetune_targets({"ratios": finetune_ratios(summaries), "methods": {}})
    assert targets["recommended"] == "close" and targets["recommended_passes"]
    close_check, below_check = targets["methods"]["close"], targets["methods"]["below"]
    assert close_check["mean_gap_points"] == pytest.approx(-0.35) and close_check["met"]
    assert close_check["selection_time_ratio"] == pytest.approx(0.2)
    assert not below_check["random_met"] and below_check["worst_vs_random_points"] == pytest.approx(-1.0)
    # Nothing passes: the smallest worst-case loss to random is recommended.
    slow = {s: {**r, "selection_seconds": 50.0} for s, r in close.items()}
    targets = finetune_targets({"ratios": finetune_ratios({**summaries, "close": slow}), "methods": {}})
    assert targets["recommended"] == "close" and not targets["recommended_passes"]


def test_the_recommendation_over_scenarios_passes_only_what_passes_in_each():
    from active_learning import finetune_ratios, finetune_targets, joint_markdown, joint_targets

    budgets = ("300", "600")

    def scenario(offset: float, close_seconds: float) -> dict:
        """random, dense AL (100 s), `close` (0.3-0.5 points below dense AL) and `cheap` (below random at 600)."""
        make = {"random": (0.80, 0.85, 0.0), "dense_al": (0.82, 0.88, 100.0), "close": (0.818, 0.876, close_seconds),
                "cheap": (0.80, 0.846, 10.0)}  # fmt: skip
        summaries = {m: {s: _summary({budgets[0]: a + offset + s / 100, budgets[1]: b + offset + s / 100}, t)
                         for s in range(3)} for m, (a, b, t) in make.items()}  # fmt: skip
        report = {"ratios": finetune_ratios(summaries), "methods": {}}
        report["targets"] = finetune_targets(report)
        return report

    joint = joint_targets({"resnet": scenario(0.0, 20.0), "vit": scenario(0.05, 20.0)})
    assert joint["recommended"] == "close" and joint["recommended_passes"]
    assert joint["methods"]["close"]["scenarios"]["vit"]["met"]
    assert joint["methods"]["cheap"]["worst_vs_random_points"] == pytest.approx(-0.4)
    # `close` too slow in one scenario: nothing passes both, and the smallest worst-case loss to random wins.
    joint = joint_targets({"resnet": scenario(0.0, 20.0), "vit": scenario(0.05, 50.0)})
    assert not joint["methods"]["close"]["met"] and joint["methods"]["close"]["scenarios"]["resnet"]["met"]
    assert joint["recommended"] == "close" and not joint["recommended_passes"]
    table = joint_markdown(joint)
    assert "| **recommended** close | PASS (" in table and "| MISS |" in table
    assert "No method passes in every scenario" in table
