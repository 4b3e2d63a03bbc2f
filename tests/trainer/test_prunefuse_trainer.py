"""`PruneFuseTrainer`: the whole method through `train()`, its run directory, resume, logs and what it saves."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForImageClassification, TrainerCallback, TrainingArguments, pipeline

from conftest import (
    GENERAL_TINY_CONFIGS,
    assert_fused_at_kept_indices,
    general_dense_model,
    make_image_dataset,
    tiny_recipe,
    tiny_resnet_config,
)
from prunefuse_hf import DataPool, PruneFuseConfig, PruneFuseTrainer, PruningPlan, fuse_into_dense
from prunefuse_hf.constants import PRUNING_PLAN_NAME
from prunefuse_hf.pruning import load_surrogate
from prunefuse_hf.pruning.cost import TRAIN_FLOPS_PER_MAC
from prunefuse_hf.trainer.prunefuse_trainer import _as_config
from prunefuse_hf.utils.run_directory import RunDirectory, RunDirectoryError

NUM_CLASSES = 4


def make_config(output_dir, **overrides):
    values = dict(output_dir=str(output_dir), pruning_ratio=0.5, strategy="least_confidence", initial_labeled_size=16,
                  query_size=8, num_rounds=2, num_train_epochs=2, learning_rate=0.05, per_device_train_batch_size=8,
                  per_device_eval_batch_size=64, scoring_batch_size=32, logging_steps=50, disable_tqdm=True,
                  seed=3)  # fmt: skip
    values.update(overrides)
    return PruneFuseConfig(**values)


@pytest.fixture(scope="module")
def pool():
    return make_image_dataset(num_examples=96, num_classes=NUM_CLASSES, seed=1, mode="RGB")


@pytest.fixture(scope="module")
def eval_dataset():
    return make_image_dataset(num_examples=40, num_classes=NUM_CLASSES, seed=2, mode="RGB")


def dense_config(**kwargs):
    return tiny_resnet_config(**{"num_channels": 3, "num_labels": NUM_CLASSES, **kwargs})


def run(output_dir, pool, eval_dataset=None, model=None, **overrides):
    trainer = PruneFuseTrainer(model or dense_config(), args=make_config(output_dir, **overrides), train_dataset=pool,
                               eval_dataset=eval_dataset)  # fmt: skip
    trainer.train()
    return trainer


@pytest.fixture(scope="module")
def finished(tmp_path_factory, pool, eval_dataset):
    return run(tmp_path_factory.mktemp("finished"), pool, eval_dataset)


def test_train_runs_the_method_and_writes_the_run_directory(finished):
    run_dir = finished.run_dir.path
    for name in ("state.json", "selection.parquet", "metrics.json", "report.md", "accuracy.png", "selection_cost.png",
                 "class_balance.png", "fused/README.md", "fused/preprocessor_config.json"):  # fmt: skip
        assert (run_dir / name).is_file(), name
    assert (run_dir / "surrogate" / PRUNING_PLAN_NAME).is_file()
    surrogate = AutoModelForImageClassification.from_pretrained(run_dir / "surrogate")
    assert surrogate.config.hidden_sizes == [8, 16] and finished.model.config.hidden_sizes == [16, 32]
    assert finished.done and finished.pool.num_labeled == 16 + 2 * 8

    table = pq.read_table(run_dir / "selection.parquet").to_pydict()
    assert sorted(table["pool_index"]) == finished.pool.labeled_indices.tolist()
    assert [table["round"].count(r) for r in (1, 2, 3)] == [16, 8, 8]
    assert set(table["strategy"]) == {"random", "least_confidence"}
    # Each selected example carries its class (id and name).
    labels = np.asarray(finished.pool.dataset["label"])
    assert table["label"] == labels[table["pool_index"]].tolist()
    assert table["label_name"] == [str(y) for y in table["label"]]

    state = json.loads((run_dir / "state.json").read_text())
    assert state["completed"] == [step.name for step in finished.steps]
    metrics = finished.metrics
    assert [r["round"] for r in metrics["rounds"]] == [1, 2, 3]
    assert metrics["final"]["labeled"] == 32 and 0 <= metrics["final"]["accuracy"] <= 1
    # The cost ledger: the surrogate's work costs about a quarter of the dense model's.
    assert 0.2 < metrics["selection"]["flops_ratio"] < 0.45
    assert metrics["rounds"][0]["selection"]["scored_examples"] == 96 - 16
    report = (run_dir / "report.md").read_text()
    assert "| 1 | 16 |" in report and "## Classes of the labeled examples per round" in report


def test_fused_model_starts_from_the_surrogate_and_every_tensor_then_trains(finished):
    run_dir = finished.run_dir.path
    dense_init = AutoModelForImageClassification.from_pretrained(run_dir / "dense_init")
    surrogate = AutoModelForImageClassification.from_pretrained(run_dir / "surrogate")
    plan = PruningPlan.from_pretrained(run_dir / "surrogate")
    start = fuse_into_dense(dense_init, surrogate, plan)
    assert_fused_at_kept_indices(start, surrogate.state_dict(), dense_init.state_dict(), plan)
    trained = finished.model.state_dict()
    for name, parameter in start.named_parameters():
        assert not torch.equal(parameter.detach(), trained[name].cpu()), f"{name} did not train"


def test_train_returns_a_train_output_and_evaluate_evaluates_the_fused_model(finished):
    final = finished.metrics["final"]
    assert finished.evaluate()["eval_accuracy"] == pytest.approx(final["accuracy"])
    assert finished.state.global_step == sum(
        r[k]["steps"] for r in finished.metrics["rounds"] for k in ("surrogate", "dense") if k in r
    )


def test_per_step_facts_go_through_log_to_callbacks_and_log_history(tmp_path, pool, eval_dataset):
    class Recorder(TrainerCallback):
        logs, final_logs = [], []

        def on_log(self, args, state, control, logs=None, **kwargs):
            # The run's logs come with the run's state; the final training's with its own.
            (self.logs if state is trainer.state else self.final_logs).append(dict(logs))

    trainer = PruneFuseTrainer(dense_config(), args=make_config(tmp_path, num_rounds=1), train_dataset=pool,
                               eval_dataset=eval_dataset, callbacks=[Recorder()])  # fmt: skip
    trainer.train()
    selection = [log for log in Recorder.logs if "picked" in log]
    assert selection and selection[0]["round"] == 1 and selection[0]["picked"] == 8
    assert (
        selection[0]["selection_flops"] > 0
        and selection[0]["dense_equivalent_flops"] > selection[0]["selection_flops"]
    )
    assert any("surrogate_accuracy" in log for log in Recorder.logs)
    assert any("fused_accuracy" in log for log in Recorder.logs)
    # The inner trainings' own logs arrive too: the surrogate's prefixed by the model it trains, the final
    # training's as a stock Trainer's callbacks get them (once; the run's log history keeps them prefixed).
    assert any("surrogate/train_loss" in log for log in Recorder.logs)
    assert any("train_loss" in log for log in Recorder.final_logs)
    assert not any("fused/train_loss" in log for log in Recorder.logs)
    assert Recorder.logs == [
        {k: v for k, v in entry.items() if k != "step"}
        for entry in trainer.state.log_history
        if not any(key.startswith("fused/") for key in entry)
    ]
    fused = [
        {k.removeprefix("fused/"): v for k, v in entry.items() if k != "step"}
        for entry in trainer.state.log_history
        if any(key.startswith("fused/") for key in entry)
    ]
    # All but the run's own evaluation of the trained model (its fused_accuracy fact).
    assert Recorder.final_logs == [log for log in fused if "eval_accuracy" not in log]
    steps = [entry["step"] for entry in trainer.state.log_history]
    assert steps == sorted(steps)


def test_a_callback_can_stop_after_any_step_and_the_run_resumes_to_the_same_result(tmp_path, pool, finished):
    class StopAfterFirstSelection(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and logs.get("picked"):
                control.should_training_stop = True

    args = make_config(tmp_path)
    trainer = PruneFuseTrainer(
        dense_config(), args=args, train_dataset=pool, callbacks=[StopAfterFirstSelection()]
    )
    trainer.train()
    assert not trainer.done and trainer.progress["completed"][-1] == "select:1"
    resumed = PruneFuseTrainer(dense_config(), args=make_config(tmp_path), train_dataset=pool)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.done
    reference = pq.read_table(finished.run_dir.selection_path).to_pydict()
    again = pq.read_table(resumed.run_dir.selection_path).to_pydict()
    assert again["pool_index"] == reference["pool_index"]


@pytest.mark.parametrize(
    "overrides, expect",
    [
        ({"method": "dense_al"}, "surrogate_is_dense"),
        ({"method": "random"}, "no_surrogate"),
        ({"strategy": "random", "fusion": True, "distill_alpha": 0.0}, "teacher_only"),
        ({"sync_every": 1}, "sync"),
        ({"surrogate_init": "warm", "strategy": "kcenter_greedy"}, "warm"),
        ({"fusion_init": "fresh", "copy_norm_stats": False, "strategy": "margin"}, "fresh"),
    ],
)
def test_variants(tmp_path, pool, overrides, expect):
    trainer = run(tmp_path, pool, **{"pruning_ratio": None, "strategy": None, **overrides})
    metrics = trainer.metrics
    rounds = metrics["rounds"]
    assert trainer.pool.num_labeled == 32
    surrogate_cost, dense_cost = metrics["costs"]["surrogate"], metrics["costs"]["dense"]
    if expect == "surrogate_is_dense":
        assert surrogate_cost == dense_cost and metrics["selection"]["flops_ratio"] == 1.0
        assert "dense" in rounds[-1] and rounds[-1]["dense"]["accuracy_at_start"] is None  # fresh, not fused
    elif expect == "no_surrogate":
        assert not any("surrogate" in r for r in rounds)
        assert metrics["selection"]["flops"] == 0 and metrics["fusion_teacher"]["seconds"] == 0
    elif expect == "teacher_only":
        # Random selection needs no model: the surrogate trainings only feed fusion and are not booked as selection.
        assert [r["surrogate"]["purpose"] for r in rounds if "surrogate" in r] == ["fusion_teacher"]
        assert metrics["selection"]["flops"] == 0 and metrics["fusion_teacher"]["flops"] > 0
    elif expect == "sync":
        assert all("sync" in r for r in rounds[:2]) and "sync" not in rounds[2]
    else:
        assert all("surrogate" in r for r in rounds)
    assert metrics["final_training"]["seconds"] > 0


def test_the_cost_ledger_counts_the_epochs_actually_trained(tmp_path, pool):
    # max_steps ends each training before num_train_epochs: 2 steps of 8 over 16 labeled examples is one epoch.
    trainer = run(tmp_path, pool, num_rounds=1, max_steps=2)
    first = trainer.metrics["rounds"][0]["surrogate"]
    costs = trainer.metrics["costs"]
    assert first["steps"] == 2 and first["epochs"] == 1.0
    assert first["flops"] == TRAIN_FLOPS_PER_MAC * costs["surrogate"]["macs"] * 16


@pytest.mark.parametrize("fusion", [True, False])
def test_eval_strategy_steps_records_the_dense_models_accuracy_curve(tmp_path, pool, eval_dataset, fusion):
    trainer = run(tmp_path, pool, eval_dataset, num_rounds=1, fusion=fusion, distill_alpha=0.0, eval_strategy="steps",
                  eval_steps=2)  # fmt: skip
    rounds = trainer.metrics["rounds"]
    surrogate, dense = rounds[0]["surrogate"], rounds[-1]["dense"]
    assert "curve" not in surrogate  # the surrogate is evaluated once, after training
    steps = [point["step"] for point in dense["curve"]]
    # 24 labeled examples, batch 8, 2 epochs: 6 steps, evaluated at the start and every 2 steps.
    assert dense["steps"] == 6 and steps == [0, 2, 4, 6]
    assert dense["curve"][0]["accuracy"] == dense["accuracy_at_start"]
    assert dense["curve"][-1]["accuracy"] == pytest.approx(dense["accuracy"])
    assert dense["eval_seconds"] > 0 and dense["seconds"] > 0


# ----- what it saves: pipeline-ready checkpoints -----


def test_save_model_gives_a_pipeline_ready_checkpoint_for_gray_and_rgb_images(
    tmp_path, finished, eval_dataset
):
    finished.save_model(tmp_path / "model")
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md"):
        assert (tmp_path / "model" / name).is_file(), name
    classifier = pipeline("image-classification", model=str(tmp_path / "model"))
    model = finished.model.eval()
    for image in [eval_dataset[i]["image"] for i in range(6)]:
        for raw in (image.convert("L"), image.convert("RGB")):
            # The evaluation's preprocessing of the same image: the run's pixels, normalized.
            pixels = finished.preprocessor.to_pixels([raw])
            with torch.no_grad():
                expected = (
                    model(pixel_values=finished.preprocessor.normalize(pixels)).logits.argmax(-1).item()
                )
            top = classifier(raw, top_k=1)[0]
            assert top["label"] == model.config.id2label[expected]


def test_class_names_come_from_the_class_label(finished):
    assert finished.model.config.id2label == {i: str(i) for i in range(NUM_CLASSES)}
    saved = AutoModelForImageClassification.from_pretrained(finished.run_dir.fused_dir)
    assert saved.config.id2label == {i: str(i) for i in range(NUM_CLASSES)}


def _image_folder(root, dataset, names):
    for i, row in enumerate(dataset):
        folder = root / names[row["label"]]
        folder.mkdir(parents=True, exist_ok=True)
        row["image"].save(folder / f"{i}.png")
    return datasets.load_dataset("imagefolder", data_dir=str(root), split="train")


def test_class_names_from_an_image_folder_and_from_the_recipe(tmp_path, pool):
    names = ["circle", "cross", "square", "triangle"]
    folder_pool = _image_folder(tmp_path / "folder", pool, names)
    trainer = PruneFuseTrainer(
        dense_config(), args=make_config(tmp_path / "a", num_rounds=1), train_dataset=folder_pool
    )
    assert trainer.class_names == names and trainer.model.config.id2label == dict(enumerate(names))

    plain = pool.cast_column("label", datasets.Value("int64"))
    trainer = PruneFuseTrainer(dense_config(), args=make_config(tmp_path / "b", num_rounds=1, class_names=names),
                               train_dataset=plain)  # fmt: skip
    assert trainer.model.config.label2id == {name: i for i, name in enumerate(names)}
    with pytest.raises(ValueError, match="differ from the names of the dataset's 'label' ClassLabel"):
        PruneFuseTrainer(
            dense_config(), args=make_config(tmp_path / "c", class_names=names[::-1]), train_dataset=pool
        )


def test_a_pretrained_checkpoint_gets_the_datasets_class_names(tmp_path, pool):
    checkpoint = AutoModelForImageClassification.from_config(dense_config(
        id2label={i: f"stale_{i}" for i in range(NUM_CLASSES)}, label2id={f"stale_{i}": i for i in range(NUM_CLASSES)}
    ))  # fmt: skip
    checkpoint.save_pretrained(tmp_path / "pretrained")
    trainer = PruneFuseTrainer(str(tmp_path / "pretrained"), args=make_config(tmp_path / "run", num_rounds=1),
                               train_dataset=pool)  # fmt: skip
    assert trainer.model.config.id2label == {i: str(i) for i in range(NUM_CLASSES)}
    # The pretrained weights are what gets pruned: θ0 is the checkpoint.
    for name, tensor in checkpoint.state_dict().items():
        assert torch.equal(trainer.model.state_dict()[name], tensor), name


def test_training_arguments_are_converted_and_a_data_pool_is_accepted(tmp_path, pool):
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, learning_rate=0.1)
    # The PruneFuse fields of a converted TrainingArguments are at their defaults (a budget of 5,000 here).
    with pytest.raises(ValueError, match=r"initial_labeled_size \(1000\)"):
        PruneFuseTrainer(dense_config(), args=args, train_dataset=pool)
    converted = _as_config(args)
    assert isinstance(converted, PruneFuseConfig) and converted.learning_rate == 0.1
    assert converted.per_device_train_batch_size == 8 and converted.method == "prunefuse"
    data_pool = DataPool(pool)
    trainer = PruneFuseTrainer(dense_config(), args=make_config(tmp_path), train_dataset=data_pool)
    assert trainer.pool is data_pool


# ----- refused before anything is written -----


def test_budget_larger_than_the_pool_is_refused_before_anything_is_written(tmp_path, pool):
    with pytest.raises(
        ValueError, match=r"initial_labeled_size \(16\) \+ query_size over 2 rounds \(100\) = 116"
    ):
        PruneFuseTrainer(
            dense_config(), args=make_config(tmp_path / "run", query_size=50), train_dataset=pool
        )
    assert not (tmp_path / "run").exists()


def test_dataset_problems_are_named(tmp_path, pool):
    with pytest.raises(ValueError, match="'img'"):
        PruneFuseTrainer(dense_config(), args=make_config(tmp_path, image_column="img"), train_dataset=pool)
    as_floats = pool.cast_column("label", datasets.Value("float32"))
    with pytest.raises(ValueError, match="integer class ids or class names"):
        PruneFuseTrainer(dense_config(), args=make_config(tmp_path), train_dataset=as_floats)


def test_model_with_other_label_count_is_refused(tmp_path, pool):
    model = AutoModelForImageClassification.from_config(dense_config(num_labels=7))
    with pytest.raises(ValueError, match="7 labels but the dataset's 'label' column has 4 classes"):
        PruneFuseTrainer(model, args=make_config(tmp_path), train_dataset=pool)


def test_existing_run_needs_resume_or_overwrite(tmp_path, pool):
    run(tmp_path, pool, num_rounds=1)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(
        RunDirectoryError, match="already holds a PruneFuse run. Pass --resume .* --overwrite"
    ):
        run(tmp_path, pool, num_rounds=1)
    with pytest.raises(
        ValueError, match=r"Cannot resume .* \(strategy: the run has 'least_confidence', now 'entropy'"
    ):
        PruneFuseTrainer(dense_config(), args=make_config(tmp_path, num_rounds=1, strategy="entropy"),
                         train_dataset=pool).train(resume_from_checkpoint=True)  # fmt: skip
    assert before == {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}

    finished = PruneFuseTrainer(dense_config(), args=make_config(tmp_path, num_rounds=1), train_dataset=pool)
    finished.train(resume_from_checkpoint=str(tmp_path))
    assert finished.done and finished.pool.num_labeled == 24
    run(tmp_path, pool, num_rounds=1, overwrite_output_dir=True)
    assert json.loads((tmp_path / "state.json").read_text())["completed"][-1] == "report"


def test_resume_needs_a_run(tmp_path, pool):
    with pytest.raises(RunDirectoryError, match="holds no run"):
        PruneFuseTrainer(dense_config(), args=make_config(tmp_path / "empty"), train_dataset=pool).train(
            resume_from_checkpoint=True
        )


def test_resume_refuses_another_pool(tmp_path, pool):
    run(tmp_path, pool, num_rounds=1)
    other = make_image_dataset(num_examples=96, num_classes=NUM_CLASSES, seed=9, mode="RGB")
    with pytest.raises(ValueError, match="the pool is not the run's.*hold other pixels"):
        PruneFuseTrainer(dense_config(), args=make_config(tmp_path, num_rounds=1), train_dataset=other).train(
            resume_from_checkpoint=True
        )


def test_bald_run_with_a_dropout_model_and_clear_error_without(tmp_path, pool):
    from transformers import ViTConfig

    vit = ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=1,
                    num_attention_heads=2, intermediate_size=32, hidden_dropout_prob=0.2, num_labels=NUM_CLASSES)  # fmt: skip
    # pruning_ratio 0 keeps the dense model as the selector, which works for every family.
    trainer = run(
        tmp_path / "vit", pool, model=vit, strategy="bald", pruning_ratio=0.0, mc_samples=3, num_rounds=1
    )
    assert trainer.metrics["rounds"][0]["selection"]["scored_examples"] == (96 - 16) * 3
    with pytest.raises(ValueError, match="no active dropout"):
        run(tmp_path / "resnet", pool, strategy="bald", num_rounds=1)
    assert not (tmp_path / "resnet").exists()  # refused before anything was written


def _stopped_after_first_selection(output_dir, pool):
    class StopAfterFirstSelection(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and logs.get("picked"):
                control.should_training_stop = True

    trainer = PruneFuseTrainer(dense_config(), args=make_config(output_dir), train_dataset=pool,
                               callbacks=[StopAfterFirstSelection()])  # fmt: skip
    trainer.train()
    return trainer


def test_state_json_holds_no_per_image_array_and_a_version_2_run_still_resumes(tmp_path, pool, finished):
    _stopped_after_first_selection(tmp_path, pool)
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["version"] == 4
    assert (
        not {"rounds", "labels", "scores", "row_digests"} & set(state["pool"]) and "row_digests" not in state
    )
    arrays = RunDirectory(tmp_path).read_state()["pool"]
    assert arrays["rounds"].shape == (96,) and (arrays["rounds"] > 0).sum() == 16
    # A digest for each labeled row, and only for those.
    assert np.array_equal(arrays["row_digests"] != 0, arrays["rounds"] > 0)

    # Rewrite it as state version 2 wrote it: the arrays inline as lists (NaN scores as null), no npz, the
    # labeled rows' digests as a dict of hex strings.
    state["version"] = 2
    state["pool"].update(rounds=arrays["rounds"].tolist(), labels=arrays["labels"].tolist(),
                         scores=[None if np.isnan(s) else s for s in arrays["scores"].tolist()])  # fmt: skip
    state["row_digests"] = {str(i): f"{d:016x}" for i, d in enumerate(arrays["row_digests"].tolist()) if d}
    for name in ("initial_strategy", "selector", "surrogate_distill_epochs"):  # settings it did not record
        del state["settings"][name]
    (tmp_path / state["pool"].pop("arrays_file")).unlink()
    (tmp_path / "state.json").write_text(json.dumps(state, indent=2))

    resumed = PruneFuseTrainer(dense_config(), args=make_config(tmp_path), train_dataset=pool)
    resumed.train(resume_from_checkpoint=True)

    assert resumed.done
    reference = pq.read_table(finished.run_dir.selection_path).to_pydict()
    assert pq.read_table(resumed.run_dir.selection_path).to_pydict()["pool_index"] == reference["pool_index"]
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["version"] == 4 and sorted(p.name for p in tmp_path.glob("pool_arrays-*.npz")) == [
        saved["pool"]["arrays_file"]
    ]
    assert "row_digests" not in saved
    kept = RunDirectory(tmp_path).read_state()["pool"]["row_digests"]
    assert np.array_equal(kept[arrays["rounds"] > 0], arrays["row_digests"][arrays["rounds"] > 0])


def test_a_run_of_an_unreadable_state_version_is_refused_with_the_fix(tmp_path, pool):
    _stopped_after_first_selection(tmp_path, pool)
    state = json.loads((tmp_path / "state.json").read_text())
    (tmp_path / "state.json").write_text(json.dumps({**state, "version": 1}))

    resumed = PruneFuseTrainer(dense_config(), args=make_config(tmp_path), train_dataset=pool)
    with pytest.raises(ValueError, match=r"state version 1, this one reads versions 2, 3, 4\); finish it with the "
                       r"version that started it, or start a new run in another output_dir"):  # fmt: skip
        resumed.train(resume_from_checkpoint=True)


# ----- kill and resume a real process -----


def _start_run(recipe, output_dir, *extra):
    command = [sys.executable, "-m", "prunefuse_hf.cli", "run", "--config", str(recipe), "--output_dir",
               str(output_dir)]  # fmt: skip
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


def test_killed_run_resumes_to_the_same_selection_and_weights(tmp_path, pool):
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
    assert again.wait(timeout=240) == 2  # an existing run needs --resume
    assert "--resume" in again.stdout.read()
    resumed = _start_run(recipe, tmp_path / "interrupted", "--resume")
    assert resumed.wait(timeout=240) == 0, resumed.stdout.read()
    assert reference.wait(timeout=240) == 0, reference.stdout.read()

    assert _selection(tmp_path / "interrupted") == _selection(tmp_path / "reference")
    assert len(_selection(tmp_path / "reference")) == 16 + 3 * 8
    fused = [AutoModelForImageClassification.from_pretrained(tmp_path / run / "fused")
             for run in ("reference", "interrupted")]  # fmt: skip
    for a, b in zip(fused[0].state_dict().values(), fused[1].state_dict().values()):
        assert torch.equal(a, b)


def test_ctrl_c_says_what_was_kept_and_how_to_resume(tmp_path, pool, caplog):
    class Interrupt(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and logs.get("picked"):
                raise KeyboardInterrupt

    trainer = PruneFuseTrainer(dense_config(), args=make_config(tmp_path), train_dataset=pool, callbacks=[Interrupt()],
                               resume_command="prunefuse-hf run --config r.yaml --resume")  # fmt: skip
    with pytest.raises(KeyboardInterrupt), caplog.at_level("WARNING", logger="prunefuse_hf"):
        trainer.train()
    message = "\n".join(record.getMessage() for record in caplog.records)
    assert "Interrupted" in message and "Resume with: prunefuse-hf run --config r.yaml --resume" in message
    assert "select:1" in json.loads((tmp_path / "state.json").read_text())["completed"]


@pytest.mark.skipif(
    not os.path.isdir("/usr/share/datasets/fashion-mnist"), reason="dataset-fashion-mnist not installed"
)
def test_run_on_real_fashion_mnist_images_learns(tmp_path):
    from prunefuse_hf import load_image_dataset

    rng = np.random.default_rng(0)
    pool = load_image_dataset("fashion_mnist", "train")
    pool = pool.select(np.sort(rng.choice(len(pool), 400, replace=False)))
    test = load_image_dataset("fashion_mnist", "test").select(range(300))
    config = make_config(tmp_path, initial_labeled_size=150, query_size=100, num_rounds=1, num_train_epochs=6)
    trainer = PruneFuseTrainer(tiny_resnet_config(num_channels=3, num_labels=10), args=config, train_dataset=pool,
                               eval_dataset=test)  # fmt: skip
    trainer.train()
    metrics = trainer.metrics
    # Ten balanced classes: chance is 0.1; 250 real images are enough to get well above it.
    assert metrics["final"]["accuracy"] > 0.4
    assert metrics["rounds"][0]["surrogate"]["accuracy"] > 0.3
    assert trainer.model.config.id2label[0] == "T-shirt/top"


# ----- several processes train like one -----


def _run_for_processes(output_dir):
    """A whole run; under `accelerate.debug_launcher` every process runs this."""
    pool = make_image_dataset(num_examples=96, num_classes=NUM_CLASSES, seed=1, mode="RGB")
    test = make_image_dataset(num_examples=40, num_classes=NUM_CLASSES, seed=2, mode="RGB")
    trainer = PruneFuseTrainer(dense_config(), args=make_config(output_dir, num_rounds=2), train_dataset=pool,
                               eval_dataset=test)  # fmt: skip
    trainer.train()


@pytest.mark.distributed
def test_two_processes_select_and_train_like_one(tmp_path):
    from conftest import run_in_processes

    run_in_processes(_run_for_processes, str(tmp_path / "two"), num_processes=2)
    run_in_processes(_run_for_processes, str(tmp_path / "one"), num_processes=1)
    # The global batch is split over the processes and BatchNorm normalizes over all of it: the same batches,
    # the same statistics, so the same selections (only the order of float sums differs).
    assert _selection(tmp_path / "two") == _selection(tmp_path / "one")
    one, two = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("one", "two"))
    assert one["final"]["accuracy"] == pytest.approx(two["final"]["accuracy"], abs=0.026)  # one example of 40
    fused = [
        AutoModelForImageClassification.from_pretrained(tmp_path / run / "fused") for run in ("one", "two")
    ]
    for (name, a), b in zip(fused[0].state_dict().items(), fused[1].state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-3, rtol=1e-3), name


# ----- real-world inputs: refused in the first seconds, by name -----


def test_an_eval_folder_missing_a_class_is_matched_by_name(tmp_path, pool):
    names = ["circle", "cross", "square", "triangle"]
    pool_folder = _image_folder(tmp_path / "pool", pool, names)
    test = make_image_dataset(num_examples=40, num_classes=NUM_CLASSES, seed=2, mode="RGB")
    # An evaluation folder without any 'circle': on its own, its ids would shift by one.
    without_circles = test.filter(lambda row: row["label"] != 0)
    eval_folder = _image_folder(tmp_path / "eval", without_circles, names)
    assert eval_folder.features["label"].names == names[1:]
    trainer = PruneFuseTrainer(dense_config(), args=make_config(tmp_path / "run", num_rounds=1),
                               train_dataset=pool_folder, eval_dataset=eval_folder)  # fmt: skip
    evaluated = [int(y) for y in trainer.eval_dataset.labels]
    expected = [names.index(eval_folder.features["label"].names[y]) for y in eval_folder["label"]]
    assert evaluated == expected and 0 not in evaluated


def test_an_eval_class_the_pool_does_not_have_is_refused_with_both_lists(tmp_path, pool):
    names = ["circle", "cross", "square", "triangle"]
    pool_folder = _image_folder(tmp_path / "pool", pool.filter(lambda row: row["label"] != 3), names)
    eval_folder = _image_folder(tmp_path / "eval", pool, names)
    with pytest.raises(ValueError, match=r"classes the pool does not have: \['triangle'\].*Pool classes: "):
        PruneFuseTrainer(dense_config(num_labels=3), args=make_config(tmp_path / "run"), train_dataset=pool_folder,
                         eval_dataset=eval_folder)  # fmt: skip
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("where", ["eval", "pool"])
def test_labels_of_minus_one_are_refused_before_any_training(tmp_path, pool, eval_dataset, where):
    def unlabel(dataset):
        labels = [-1 if i % 7 == 3 else y for i, y in enumerate(dataset["label"])]
        return dataset.remove_columns("label").add_column("label", labels)

    kwargs = {"train_dataset": unlabel(pool) if where == "pool" else pool,
              "eval_dataset": unlabel(eval_dataset) if where == "eval" else eval_dataset}  # fmt: skip
    message = "rows without a label" if where == "eval" else "rows without a label .*annotation: human"
    with pytest.raises(ValueError, match=message):
        PruneFuseTrainer(dense_config(), args=make_config(tmp_path / "run"), **kwargs)
    assert not (tmp_path / "run").exists()


def test_labels_out_of_range_are_named(tmp_path, pool):
    wrong = pool.cast_column("label", datasets.Value("int64"))
    wrong = wrong.remove_columns("label").add_column("label", [7] + list(wrong["label"])[1:])
    with pytest.raises(ValueError, match="class id 7 at row 0.*4 classes"):
        PruneFuseTrainer(
            dense_config(), args=make_config(tmp_path, class_names=list("abcd")), train_dataset=wrong
        )


def test_a_batch_of_one_with_one_by_one_feature_maps_is_refused_up_front(tmp_path, pool):
    with pytest.raises(
        ValueError, match="per_device_train_batch_size: 1 cannot train this model.*at least 2"
    ):
        # At 8x8 the last stage's feature maps are 1x1.
        PruneFuseTrainer(dense_config(), args=make_config(tmp_path / "run", per_device_train_batch_size=1, image_size=8),
                         train_dataset=pool)  # fmt: skip
    assert not (tmp_path / "run").exists()


def test_images_too_small_for_the_model_are_refused_naming_image_size(tmp_path, pool):
    from transformers import ConvNextConfig

    convnext = ConvNextConfig(
        num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=NUM_CLASSES
    )
    with pytest.raises(ValueError, match=r"cannot take 4×4 inputs.*set image_size to at least 8"):
        PruneFuseTrainer(convnext, args=make_config(tmp_path / "run", image_size=4), train_dataset=pool)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "change, field_name",
    [
        ({"image_size": 20}, "image_size"),
        ({"num_train_epochs": 3}, "num_train_epochs"),
        ({"learning_rate": 0.1}, "learning_rate"),
        ({"per_device_train_batch_size": 4}, "per_device_train_batch_size"),
        ({"augment": True}, "augment"),
        ({"method": "svp"}, "method"),
    ],
)
def test_resume_refuses_every_setting_that_changes_results(tmp_path, pool, change, field_name):
    args = make_config(tmp_path, num_rounds=1)

    class StopAtOnce(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            control.should_training_stop = True

    PruneFuseTrainer(dense_config(), args=args, train_dataset=pool, callbacks=[StopAtOnce()]).train()
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    changed = PruneFuseTrainer(
        dense_config(), args=make_config(tmp_path, num_rounds=1, **change), train_dataset=pool
    )
    with pytest.raises(ValueError, match=rf"Cannot resume .*{field_name}: the run has"):
        changed.train(resume_from_checkpoint=True)
    assert before == {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}


def test_resume_refuses_another_evaluation_set(tmp_path, pool, eval_dataset):
    class StopAtOnce(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            control.should_training_stop = True

    PruneFuseTrainer(dense_config(), args=make_config(tmp_path), train_dataset=pool, eval_dataset=eval_dataset,
                     callbacks=[StopAtOnce()]).train()  # fmt: skip
    smaller = PruneFuseTrainer(dense_config(), args=make_config(tmp_path), train_dataset=pool,
                               eval_dataset=eval_dataset.select(range(30)))  # fmt: skip
    with pytest.raises(ValueError, match="eval_set: the run has"):
        smaller.train(resume_from_checkpoint=True)


def test_a_damaged_image_found_mid_run_can_be_repaired_and_the_run_resumes(tmp_path, pool):
    # Huge pools may skip the up-front decoding (no cache, no validation): a damaged file then stops the run when
    # a pass first reads it, named; once the file is repaired, the same run resumes.
    names = ["circle", "cross", "square", "triangle"]
    folder = _image_folder(tmp_path / "pool", pool, names)
    paths = [v["path"] for v in folder.cast_column("image", datasets.Image(decode=False))["image"]]
    args = dict(cache_pixels=False, validate_images=False, num_rounds=1)
    trainer = PruneFuseTrainer(
        dense_config(), args=make_config(tmp_path / "run", **args), train_dataset=folder
    )
    unlabeled_row = next(i for i in range(len(folder)) if i not in trainer.pool.labeled_indices and i > 40)
    damaged = Path(paths[unlabeled_row])
    original = damaged.read_bytes()
    damaged.write_bytes(original[:30])
    with pytest.raises(ValueError, match=damaged.name):
        trainer.train()
    assert json.loads((tmp_path / "run" / "state.json").read_text())["completed"][-1] == "train_surrogate:1"
    damaged.write_bytes(original)
    repaired = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "pool"), split="train")
    resumed = PruneFuseTrainer(
        dense_config(), args=make_config(tmp_path / "run", **args), train_dataset=repaired
    )
    resumed.train(resume_from_checkpoint=True)
    assert resumed.done


@pytest.mark.parametrize(
    ("cache", "gets_workers"),
    [(dict(cache_pixels=False), True), (dict(), False), (dict(pixel_cache_format="jpeg"), True)],
    ids=["no-cache", "raw-cache", "jpeg-cache"],
)
def test_decoded_batches_get_dataloader_workers_unless_set(tmp_path, pool, monkeypatch, cache, gets_workers):
    from prunefuse_hf.data.pixel_cache_build import usable_cores
    from prunefuse_hf.trainer import classification_run

    monkeypatch.setattr(classification_run, "WORKERS_MIN_IMAGES", 50)
    monkeypatch.setenv("PRUNEFUSE_PIXEL_CACHE", str(tmp_path / "cache"))
    trainer = PruneFuseTrainer(dense_config(), args=make_config(tmp_path / "run", validate_images=False, **cache),
                               train_dataset=pool)  # fmt: skip
    assert trainer.args.dataloader_num_workers == (usable_cores() if gets_workers else 0)
    chosen = make_config(tmp_path / "run2", dataloader_num_workers=1, **cache)
    assert PruneFuseTrainer(dense_config(), args=chosen, train_dataset=pool).args.dataloader_num_workers == 1


def test_a_resumed_run_reuses_the_pixel_cache(tmp_path, pool, monkeypatch):
    class StopAtOnce(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            control.should_training_stop = True

    monkeypatch.setenv("PRUNEFUSE_PIXEL_CACHE", str(tmp_path / "cache"))
    PruneFuseTrainer(dense_config(), args=make_config(tmp_path / "run"), train_dataset=pool,
                     callbacks=[StopAtOnce()]).train()  # fmt: skip
    cache_files = sorted((tmp_path / "cache").glob("pixels-*.arrow"))
    assert len(cache_files) == 1
    written = cache_files[0].stat().st_mtime_ns

    from prunefuse_hf.data import preprocessing

    decoded = []
    original = preprocessing.open_image
    monkeypatch.setattr(preprocessing, "open_image", lambda *a, **k: decoded.append(1) or original(*a, **k))
    resumed = PruneFuseTrainer(dense_config(), args=make_config(tmp_path / "run"), train_dataset=pool)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.done
    # Only the first image is opened again (to read the output shape); the pool's pixels come from the file.
    assert len(decoded) == 1 and cache_files[0].stat().st_mtime_ns == written


# ----- families without a narrowed config: the general pruning path through a whole run -----

GENERAL_RUN_FAST = ["dinov2_with_registers"]
GENERAL_RUN_SLOW = [t for t in GENERAL_TINY_CONFIGS if t not in GENERAL_RUN_FAST and t != "timm_wrapper"]


def check_general_path_run(tmp_path, pool, model_type):
    dense = general_dense_model(model_type, num_labels=NUM_CLASSES)
    trainer = run(tmp_path, pool, model=dense, num_rounds=1, num_train_epochs=1)
    run_dir = trainer.run_dir.path
    plan = PruningPlan.from_pretrained(run_dir / "surrogate")
    assert plan.pruning_path == "replay" and trainer.pool.num_labeled == 16 + 8
    # The surrogate is safetensors + dense config + plan, rebuilt by the package with the run's class names.
    surrogate = load_surrogate(run_dir / "surrogate")
    assert surrogate.config.id2label == {i: str(i) for i in range(NUM_CLASSES)}
    dense_init = AutoModelForImageClassification.from_pretrained(run_dir / "dense_init")
    start = fuse_into_dense(dense_init, surrogate, plan)
    assert_fused_at_kept_indices(start, surrogate.state_dict(), dense_init.state_dict(), plan)
    # The fused model is a plain HF checkpoint: pipeline() on raw PIL images, with the run's processor.
    images = [pool[i]["image"] for i in range(3)]
    for classifier in (
        pipeline("image-classification", model=str(run_dir / "fused")),
        pipeline("image-classification", model=surrogate, image_processor=trainer.processing_class),
    ):
        predictions = classifier(images, top_k=1)
        assert [p[0]["label"] for p in predictions] and all(
            p[0]["label"] in {"0", "1", "2", "3"} for p in predictions
        )
    return trainer


@pytest.mark.parametrize("model_type", GENERAL_RUN_FAST)
def test_a_family_without_a_narrowed_config_runs_through_the_general_path(tmp_path, pool, model_type):
    check_general_path_run(tmp_path, pool, model_type)


@pytest.mark.slow
@pytest.mark.parametrize("model_type", GENERAL_RUN_SLOW)
def test_every_general_family_runs_end_to_end(tmp_path, pool, model_type):
    check_general_path_run(tmp_path, pool, model_type)


@pytest.mark.slow
def test_a_general_path_run_stopped_after_the_first_selection_resumes_to_the_same_result(tmp_path, pool):
    class StopAfterFirstSelection(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and logs.get("picked"):
                control.should_training_stop = True

    def dense():
        return general_dense_model("dinov2_with_registers", num_labels=NUM_CLASSES)

    reference = run(tmp_path / "reference", pool, model=dense(), num_rounds=2, num_train_epochs=1)
    args = make_config(tmp_path / "stopped", num_rounds=2, num_train_epochs=1)
    stopped = PruneFuseTrainer(dense(), args=args, train_dataset=pool, callbacks=[StopAfterFirstSelection()])
    stopped.train()
    assert not stopped.done and stopped.progress["completed"][-1] == "select:1"
    resumed = PruneFuseTrainer(dense(), args=args, train_dataset=pool)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.done
    expected = pq.read_table(reference.run_dir.selection_path).to_pydict()["pool_index"]
    assert pq.read_table(resumed.run_dir.selection_path).to_pydict()["pool_index"] == expected


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        # A detector runs object detection: on a classification dataset it names the missing objects column.
        ("detr", "The pool has no column 'objects' .* object-detection run with DetrForObjectDetection"),
        # A segmenter runs semantic segmentation: it names the label column that holds no masks.
        ("segformer", "The column 'label' holds a ClassLabel, one class per image"),
    ],
)
def test_detectors_and_segmenters_on_a_classification_pool_are_refused_before_any_work(
    kind, message, image_dataset, tmp_path
):
    from conftest import detection_model, segmentation_model

    model = (
        detection_model("detr") if kind == "detr" else segmentation_model("SegformerForSemanticSegmentation")
    )
    output_dir = tmp_path / "run"
    with pytest.raises(ValueError, match=message):
        PruneFuseTrainer(model, args=PruneFuseConfig(output_dir=str(output_dir)), train_dataset=image_dataset)
    assert not output_dir.exists()
