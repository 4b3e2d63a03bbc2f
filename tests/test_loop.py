import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForImageClassification

from conftest import make_image_dataset, tiny_recipe, tiny_resnet_config
from prunefuse_hf.config import PruneFuseConfig
from prunefuse_hf.constants import PRUNING_PLAN_NAME
from prunefuse_hf.loop import PruneFuseLoop
from prunefuse_hf.rundir import RunDirectoryError

NUM_CLASSES = 4


def make_config(output_dir, **overrides):
    values = dict(
        output_dir=str(output_dir),
        pruning_ratio=0.5,
        strategy="least_confidence",
        initial_labeled_size=16,
        query_size=8,
        num_rounds=2,
        num_train_epochs=2,
        learning_rate=0.05,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=64,
        scoring_batch_size=32,
        logging_steps=50,
        disable_tqdm=True,
        use_cpu=True,
        seed=3,
    )
    values.update(overrides)
    return PruneFuseConfig(**values)


@pytest.fixture(scope="module")
def pool():
    return make_image_dataset(num_examples=96, num_classes=NUM_CLASSES, seed=1)


@pytest.fixture(scope="module")
def eval_dataset():
    return make_image_dataset(num_examples=40, num_classes=NUM_CLASSES, seed=2)


def dense_config():
    return tiny_resnet_config(num_channels=1, num_labels=NUM_CLASSES)


def run_loop(output_dir, pool, eval_dataset=None, **overrides):
    loop = PruneFuseLoop(
        dense_config(), pool, make_config(output_dir, **overrides), eval_dataset=eval_dataset
    )
    return loop, loop.run()


def test_full_run_writes_the_run_directory(tmp_path, pool, eval_dataset):
    loop, metrics = run_loop(tmp_path, pool, eval_dataset)

    for name in (
        "state.json",
        "selection.parquet",
        "metrics.json",
        "report.md",
        "accuracy.png",
        "selection_cost.png",
    ):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "surrogate" / PRUNING_PLAN_NAME).is_file()
    surrogate = AutoModelForImageClassification.from_pretrained(tmp_path / "surrogate")
    fused = AutoModelForImageClassification.from_pretrained(tmp_path / "fused")
    assert surrogate.config.hidden_sizes == [8, 16] and fused.config.hidden_sizes == [16, 32]

    assert loop.pool.num_labeled == 16 + 2 * 8
    table = pq.read_table(tmp_path / "selection.parquet").to_pydict()
    assert sorted(table["pool_index"]) == loop.pool.labeled_indices.tolist()
    assert [table["round"].count(r) for r in (1, 2, 3)] == [16, 8, 8]
    assert set(table["strategy"]) == {"random", "least_confidence"}

    state = json.loads((tmp_path / "state.json").read_text())
    assert state["completed"] == [step.name for step in loop.steps]
    assert [r["round"] for r in metrics["rounds"]] == [1, 2, 3]
    assert metrics["final"]["labeled"] == 32 and 0 <= metrics["final"]["accuracy"] <= 1
    # The cost ledger: the surrogate's work costs about a quarter of the dense model's.
    assert 0.2 < metrics["selection"]["flops_ratio"] < 0.45
    assert metrics["rounds"][0]["selection"]["scored_examples"] == 96 - 16
    assert "| 1 | 16 |" in (tmp_path / "report.md").read_text()


def test_step_runs_one_round_at_a_time(tmp_path, pool):
    loop = PruneFuseLoop(dense_config(), pool, make_config(tmp_path, num_rounds=2))
    labeled_after_each_step = []
    while loop.step():
        labeled_after_each_step.append(loop.pool.num_labeled)
    assert labeled_after_each_step == [16, 24, 32]  # init, round 1, round 2; round 3 trains and reports
    assert loop.done and not loop.step()
    assert (tmp_path / "fused" / "config.json").is_file()


@pytest.mark.parametrize(
    "overrides, expect",
    [
        ({"pruning_ratio": 0.0}, "surrogate_is_dense"),
        ({"fusion": False, "distill_alpha": 0.0, "strategy": "random"}, "no_surrogate"),
        ({"sync_every": 1}, "sync"),
        ({"surrogate_init": "warm", "strategy": "kcenter_greedy"}, "warm"),
        ({"fusion_init": "fresh", "copy_norm_stats": False, "strategy": "margin"}, "fresh"),
    ],
)
def test_variants(tmp_path, pool, overrides, expect):
    loop, metrics = run_loop(tmp_path, pool, **overrides)
    rounds = metrics["rounds"]
    assert loop.pool.num_labeled == 32
    surrogate_cost, dense_cost = metrics["costs"]["surrogate"], metrics["costs"]["dense"]
    if expect == "surrogate_is_dense":
        assert surrogate_cost == dense_cost and metrics["selection"]["flops_ratio"] == 1.0
    elif expect == "no_surrogate":
        assert not any("surrogate" in r for r in rounds)
        assert metrics["selection"]["flops"] == 0
    elif expect == "sync":
        assert all("sync" in r for r in rounds[:2]) and "sync" not in rounds[2]
    else:
        assert all("surrogate" in r for r in rounds)


@pytest.mark.parametrize("fusion", [True, False])
def test_eval_strategy_steps_records_the_dense_models_accuracy_curve(tmp_path, pool, eval_dataset, fusion):
    _, metrics = run_loop(tmp_path, pool, eval_dataset, num_rounds=1, fusion=fusion, distill_alpha=0.0,
                          eval_strategy="steps", eval_steps=2)  # fmt: skip
    surrogate, dense = metrics["rounds"][0]["surrogate"], metrics["rounds"][-1]["dense"]
    assert "curve" not in surrogate  # the surrogate is evaluated once, after training
    steps = [point["step"] for point in dense["curve"]]
    # 24 labeled examples, batch 8, 2 epochs: 6 steps, evaluated at the start and every 2 steps.
    assert dense["steps"] == 6 and steps == [0, 2, 4, 6]
    assert dense["curve"][0]["accuracy"] == dense["accuracy_at_start"]
    assert dense["curve"][-1]["accuracy"] == pytest.approx(dense["accuracy"])
    assert dense["eval_seconds"] > 0 and dense["seconds"] > 0


def test_budget_larger_than_the_pool_is_refused_before_anything_is_written(tmp_path, pool):
    with pytest.raises(
        ValueError, match=r"initial_labeled_size \(16\) \+ query_size over 2 rounds \(100\) = 116"
    ):
        PruneFuseLoop(dense_config(), pool, make_config(tmp_path / "run", query_size=50))
    assert not (tmp_path / "run").exists()


def test_dataset_problems_are_named(tmp_path, pool):
    with pytest.raises(ValueError, match="'img'"):
        PruneFuseLoop(dense_config(), pool, make_config(tmp_path), image_column="img")
    as_strings = pool.cast_column("label", __import__("datasets").Value("string"))
    with pytest.raises(ValueError, match="integer class ids"):
        PruneFuseLoop(dense_config(), as_strings, make_config(tmp_path))


def test_model_with_other_label_count_is_refused(tmp_path, pool):
    model = AutoModelForImageClassification.from_config(tiny_resnet_config(num_channels=1, num_labels=7))
    with pytest.raises(ValueError, match="7 labels but the dataset's 'label' column has 4 classes"):
        PruneFuseLoop(model, pool, make_config(tmp_path))


def test_existing_run_needs_resume_or_overwrite(tmp_path, pool):
    run_loop(tmp_path, pool, num_rounds=1)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(
        RunDirectoryError, match="already holds a PruneFuse run. Pass --resume .* --overwrite"
    ):
        PruneFuseLoop(dense_config(), pool, make_config(tmp_path, num_rounds=1))
    with pytest.raises(
        ValueError, match=r"Cannot resume .* \(strategy: run has 'least_confidence', now 'entropy'"
    ):
        PruneFuseLoop(
            dense_config(), pool, make_config(tmp_path, num_rounds=1, strategy="entropy"), resume=True
        )
    assert before == {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}

    finished = PruneFuseLoop(dense_config(), pool, make_config(tmp_path, num_rounds=1), resume=True)
    assert finished.done and finished.pool.num_labeled == 24
    PruneFuseLoop(dense_config(), pool, make_config(tmp_path, num_rounds=1), overwrite=True)
    assert not (tmp_path / "state.json").exists()


def test_resume_needs_a_run(tmp_path, pool):
    with pytest.raises(RunDirectoryError, match="holds no run"):
        PruneFuseLoop(dense_config(), pool, make_config(tmp_path / "empty"), resume=True)


def test_resume_refuses_another_pool(tmp_path, pool):
    run_loop(tmp_path, pool, num_rounds=1)
    other = make_image_dataset(num_examples=96, num_classes=NUM_CLASSES, seed=9)
    with pytest.raises(ValueError, match="fingerprint"):
        PruneFuseLoop(dense_config(), other, make_config(tmp_path, num_rounds=1), resume=True)


# -- kill and resume a real process ------------------------------------------------------------


def _start_run(recipe, output_dir, *extra):
    command = [
        sys.executable,
        "-m",
        "prunefuse_hf.cli",
        "run",
        "--config",
        str(recipe),
        "--output_dir",
        str(output_dir),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [*command, *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _completed(output_dir):
    try:
        return json.loads((output_dir / "state.json").read_text())["completed"]
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def _selection(output_dir):
    table = pq.read_table(output_dir / "selection.parquet").to_pydict()
    return sorted(zip(table["pool_index"], table["round"]))


def test_killed_run_resumes_to_the_same_selection(tmp_path, pool):
    pool.save_to_disk(tmp_path / "pool")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(tiny_recipe(tmp_path / "pool", num_rounds=3))

    reference = _start_run(recipe, tmp_path / "reference")
    interrupted = _start_run(recipe, tmp_path / "interrupted")
    deadline = time.time() + 240
    # Kill it in the middle of the second round: after its surrogate training, before its selection.
    while "train_surrogate:2" not in _completed(tmp_path / "interrupted"):
        assert interrupted.poll() is None, interrupted.stdout.read()
        assert time.time() < deadline
        time.sleep(0.05)
    interrupted.send_signal(signal.SIGKILL)
    interrupted.wait()
    # Under load the process may get a step further before the signal lands; it must not have finished.
    completed_at_kill = _completed(tmp_path / "interrupted")
    assert "train_surrogate:2" in completed_at_kill and "report" not in completed_at_kill

    again = _start_run(recipe, tmp_path / "interrupted")
    assert again.wait(timeout=240) != 0  # an existing run needs --resume
    assert "--resume" in again.stdout.read()
    resumed = _start_run(recipe, tmp_path / "interrupted", "--resume")
    assert resumed.wait(timeout=240) == 0, resumed.stdout.read()
    assert reference.wait(timeout=240) == 0, reference.stdout.read()

    assert _selection(tmp_path / "interrupted") == _selection(tmp_path / "reference")
    assert len(_selection(tmp_path / "reference")) == 16 + 3 * 8
    fused = [
        AutoModelForImageClassification.from_pretrained(tmp_path / run / "fused")
        for run in ("reference", "interrupted")
    ]
    for a, b in zip(fused[0].state_dict().values(), fused[1].state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.skipif(
    not os.path.isdir("/usr/share/datasets/fashion-mnist"), reason="dataset-fashion-mnist not installed"
)
def test_run_on_real_fashion_mnist_images_learns(tmp_path):
    import numpy as np

    from prunefuse_hf.data import load_image_dataset

    rng = np.random.default_rng(0)
    pool = load_image_dataset("fashion_mnist", "train")
    pool = pool.select(np.sort(rng.choice(len(pool), 400, replace=False)))
    test = load_image_dataset("fashion_mnist", "test").select(range(300))
    config = make_config(tmp_path, initial_labeled_size=150, query_size=100, num_rounds=1, num_train_epochs=6)
    model = tiny_resnet_config(num_channels=1, num_labels=10)
    metrics = PruneFuseLoop(model, pool, config, eval_dataset=test).run()
    # Ten balanced classes: chance is 0.1; 250 real images are enough to get well above it.
    assert metrics["final"]["accuracy"] > 0.4
    assert metrics["rounds"][0]["surrogate"]["accuracy"] > 0.3


def test_bald_run_with_a_dropout_model_and_clear_error_without(tmp_path, pool):
    from transformers import ViTConfig

    vit = ViTConfig(image_size=16, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=1,
                    num_attention_heads=2, intermediate_size=32, hidden_dropout_prob=0.2, num_labels=NUM_CLASSES)  # fmt: skip
    # pruning_ratio 0 keeps the dense model as the selector, which works for every family.
    loop = PruneFuseLoop(vit, pool, make_config(tmp_path / "vit", strategy="bald", pruning_ratio=0.0, mc_samples=3,
                                                num_rounds=1))  # fmt: skip
    metrics = loop.run()
    assert metrics["rounds"][0]["selection"]["scored_examples"] == (96 - 16) * 3
    with pytest.raises(ValueError, match="no active dropout"):
        run_loop(tmp_path / "resnet", pool, strategy="bald", num_rounds=1)
    assert not (tmp_path / "resnet").exists()  # refused before anything was written
