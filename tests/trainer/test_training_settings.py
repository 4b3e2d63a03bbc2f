"""Stock Trainer settings in a PruneFuse run: every `TrainingArguments` field has a documented place, the user's
callbacks see the final model's training as a stock Trainer's callbacks would (EarlyStoppingCallback stops it), and
the settings that would be ignored or stop the run half-way are refused by name before any work."""

import dataclasses
import importlib.util
import math

import pytest
from transformers import EarlyStoppingCallback, SegformerConfig, TrainerCallback, TrainingArguments

from conftest import detection_items, make_image_dataset, tiny_detr, tiny_resnet_config
from prunefuse_hf import PruneFuseConfig, PruneFuseTrainer
from prunefuse_hf.constants import TRAINER_DIR
from prunefuse_hf.tasks import synthetic_detection_pool, synthetic_segmentation_pool
from prunefuse_hf.trainer.training_settings import TRAINING_ARGUMENT_SCOPES

NUM_CLASSES = 4


@pytest.fixture(scope="module")
def pool():
    return make_image_dataset(num_examples=48, num_classes=NUM_CLASSES, seed=1, mode="RGB")


@pytest.fixture(scope="module")
def eval_dataset():
    return make_image_dataset(num_examples=16, num_classes=NUM_CLASSES, seed=2, mode="RGB")


def make_config(output_dir, **overrides):
    values = dict(output_dir=str(output_dir / "run"), initial_labeled_size=16, query_size=8, num_rounds=1,
                  num_train_epochs=2, per_device_train_batch_size=8, per_device_eval_batch_size=16,
                  scoring_batch_size=32, logging_steps=1, disable_tqdm=True, seed=3, cache_pixels=False)  # fmt: skip
    return PruneFuseConfig(**{**values, **overrides})


def run(tmp_path, pool, eval_dataset=None, callbacks=None, **overrides):
    trainer = PruneFuseTrainer(tiny_resnet_config(), args=make_config(tmp_path, **overrides), train_dataset=pool,
                               eval_dataset=eval_dataset, callbacks=callbacks)  # fmt: skip
    trainer.train()
    return trainer


def test_every_training_argument_has_a_documented_place():
    # A field added by a new transformers release fails here until its place in a run is decided.
    fields = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    assert set(TRAINING_ARGUMENT_SCOPES) == fields


class Counter(TrainerCallback):
    """Counts every event, with the state each came with."""

    def __init__(self):
        self.events, self.states, self.logs, self.metrics = [], [], [], []

    def _record(self, name, args, state):
        self.events.append(name)
        self.states.append(state)
        if name == "train_begin":
            self.train_args = args

    def on_train_begin(self, args, state, control, **kwargs):
        self._record("train_begin", args, state)

    def on_train_end(self, args, state, control, **kwargs):
        self._record("train_end", args, state)

    def on_epoch_end(self, args, state, control, **kwargs):
        self._record("epoch_end", args, state)

    def on_step_end(self, args, state, control, **kwargs):
        self._record("step_end", args, state)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self._record("evaluate", args, state)
        self.metrics.append(dict(metrics))

    def on_save(self, args, state, control, **kwargs):
        self._record("save", args, state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        self._record("log", args, state)
        self.logs.append((state, dict(logs)))


def test_a_user_callback_sees_the_final_training_once_per_event(tmp_path, pool, eval_dataset):
    counter = Counter()
    trainer = run(
        tmp_path, pool, eval_dataset, callbacks=[counter], eval_strategy="epoch", save_strategy="epoch"
    )
    final = trainer.progress["final"]
    steps_per_epoch = math.ceil(final["labeled"] / 8)
    assert final["steps"] == 2 * steps_per_epoch
    # The final training's events, with its own state (the run's state comes only with per-step facts).
    final_state = counter.states[counter.events.index("train_begin")]
    assert final_state is not trainer.state
    in_final = [event for event, state in zip(counter.events, counter.states) if state is final_state]
    assert in_final.count("train_begin") == in_final.count("train_end") == 1
    assert in_final.count("step_end") == final["steps"] and in_final.count("epoch_end") == 2
    assert in_final.count("evaluate") == 2 and in_final.count("save") == 2
    assert all("eval_accuracy" in metrics for metrics in counter.metrics)
    assert counter.events.count("train_begin") == 1 and counter.events.count("train_end") == 1
    # Every log of the final training arrives once, unprefixed, as in its own log history.
    final_logs = [logs for state, logs in counter.logs if state is final_state]
    assert len(final_logs) == len(final_state.log_history)
    assert sum("loss" in logs for logs in final_logs) == final["steps"]
    assert not any(key.startswith("fused/") for _, logs in counter.logs for key in logs)
    # Of the surrogate's training it sees the forwarded logs; the run's own log history keeps every training's.
    assert any("surrogate/loss" in logs for _, logs in counter.logs)
    assert sum("fused/loss" in entry for entry in trainer.state.log_history) == final["steps"]
    assert counter.train_args.output_dir.endswith(TRAINER_DIR) and counter.train_args.eval_strategy == "epoch"


class StopAfterTwoSteps(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 2:
            control.should_training_stop = True


def test_a_callback_that_stops_training_stops_the_final_training_and_the_run_finishes(tmp_path, pool):
    trainer = run(tmp_path, pool, callbacks=[StopAfterTwoSteps()], num_train_epochs=3)
    assert trainer.progress["final"]["steps"] == 2 and trainer.done
    # The surrogate trained all its epochs: the callback sees only the final training's steps.
    assert trainer.progress["rounds"]["1"]["surrogate"]["steps"] == 3 * 2


def test_early_stopping_stops_the_final_training(tmp_path, pool, eval_dataset):
    # A threshold no evaluation can beat: the first evaluation without improvement stops training.
    stopper = EarlyStoppingCallback(early_stopping_patience=1, early_stopping_threshold=2.0)
    trainer = run(tmp_path, pool, eval_dataset, callbacks=[stopper], num_train_epochs=6, eval_strategy="epoch",
                  save_strategy="epoch", load_best_model_at_end=True, metric_for_best_model="accuracy")  # fmt: skip
    final = trainer.progress["final"]
    steps_per_epoch = math.ceil(final["labeled"] / 8)
    assert final["steps"] < 6 * steps_per_epoch and final["epochs"] < 6
    assert len(final["curve"]) < 6
    assert trainer.done and (trainer.run_dir.fused_dir / "config.json").is_file()


EARLY_STOPPING_REFUSALS = [
    (dict(), False, "no evaluation set"),
    (dict(load_best_model_at_end=False), True, "eval_strategy: no never evaluates"),
    (dict(eval_strategy="epoch"), True, "load_best_model_at_end: false"),
]


@pytest.mark.parametrize("overrides, with_eval, message", EARLY_STOPPING_REFUSALS)
@pytest.mark.parametrize("added", [False, True], ids=["callbacks", "add_callback"])
def test_early_stopping_without_what_it_needs_is_refused_before_the_run_directory(
    tmp_path, pool, eval_dataset, overrides, with_eval, message, added
):
    args = make_config(tmp_path, **overrides)
    stopper = EarlyStoppingCallback()
    with pytest.raises(ValueError, match=f"EarlyStoppingCallback.*{message}"):
        trainer = PruneFuseTrainer(tiny_resnet_config(), args=args, train_dataset=pool,
                                   eval_dataset=eval_dataset if with_eval else None,
                                   callbacks=None if added else [stopper])  # fmt: skip
        trainer.add_callback(stopper)
        trainer.train()
    # The stock Trainer makes output_dir when it is built; the run writes nothing there.
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_label_smoothing_changes_the_final_trainings_loss(tmp_path, pool):
    # Without distillation the final loss is the cross-entropy alone.
    plain = run(tmp_path / "plain", pool, num_train_epochs=3, distill_alpha=0.0).progress["final"]
    smoothed = run(tmp_path / "smoothed", pool, num_train_epochs=3, distill_alpha=0.0,
                   label_smoothing_factor=0.4).progress["final"]  # fmt: skip
    # Smoothed targets (0.7 on the class, 0.1 elsewhere) have an entropy no model can go below.
    floor = -(0.7 * math.log(0.7) + 3 * 0.1 * math.log(0.1))
    assert smoothed["train_loss"] >= floor > 0
    assert smoothed["train_loss"] != pytest.approx(plain["train_loss"])


def test_data_seed_reaches_the_trainings(tmp_path, pool):
    first = run(tmp_path / "a", pool, selection_seed=3).progress
    second = run(tmp_path / "b", pool, selection_seed=3, data_seed=11).progress
    # Same labeled examples, another order of batches.
    assert first["queries"]["1"]["pool_indices"] == second["queries"]["1"]["pool_indices"]
    assert first["rounds"]["1"]["surrogate"]["train_loss"] != second["rounds"]["1"]["surrogate"]["train_loss"]


def test_eval_on_start_evaluates_the_final_model_before_its_first_step(tmp_path, pool, eval_dataset):
    trainer = run(tmp_path, pool, eval_dataset, eval_on_start=True)
    curve = trainer.progress["final"]["curve"]
    assert curve[0]["step"] == 0 and [point["step"] for point in curve].count(0) == 1
    assert curve[-1]["step"] == trainer.progress["final"]["steps"]


# (settings, what the message names); each is refused by PruneFuseTrainer or PruneFuseConfig before any work.
REFUSED = {
    "metric_for_best_model": (dict(eval_strategy="epoch", save_strategy="epoch", load_best_model_at_end=True,
                                   metric_for_best_model="f1"), r"metric_for_best_model: 'f1'.*'accuracy', 'loss'"),  # fmt: skip
    "save_strategy best": (dict(save_strategy="best"), r"save_strategy: best needs metric_for_best_model"),
    "eval_strategy without an evaluation set": (dict(eval_strategy="epoch"), r"eval_strategy: epoch.*no evaluation"),
    "eval_on_start without an evaluation set": (dict(eval_on_start=True), r"eval_on_start: True.*no evaluation"),
    "group_by_length": (dict(train_sampling_strategy="group_by_length"), r"train_sampling_strategy: group_by_length"),
    "neftune_noise_alpha": (dict(neftune_noise_alpha=5.0), r"neftune_noise_alpha: 5.0"),
    "gradient_checkpointing": (dict(gradient_checkpointing=True), r"gradient_checkpointing: true, but ResNetFor"),
    "label_names": (dict(label_names=["label"]), r"label_names: \['label'\]"),
    "prediction_loss_only": (dict(prediction_loss_only=True), r"prediction_loss_only: true"),
    "batch_eval_metrics": (dict(batch_eval_metrics=True), r"batch_eval_metrics: true"),
    "eval_do_concat_batches": (dict(eval_do_concat_batches=False), r"eval_do_concat_batches: false"),
    "use_liger_kernel": (dict(use_liger_kernel=True), r"use_liger_kernel: true"),
    "parallelism_config": (dict(parallelism_config={"tp_size": 2}), r"parallelism_config"),
    "dataloader_persistent_workers": (dict(dataloader_persistent_workers=True), r"dataloader_persistent_workers"),
    "ignore_data_skip": (dict(ignore_data_skip=True), r"ignore_data_skip: true.*--resume"),
    "enable_jit_checkpoint": (dict(enable_jit_checkpoint=True), r"enable_jit_checkpoint: true"),
    "hub_strategy": (dict(push_to_hub=True, hub_strategy="all_checkpoints"), r"hub_strategy: all_checkpoints"),
    "fsdp": (dict(fsdp="full_shard"), r"fsdp shards each model"),
    "deepspeed": (dict(deepspeed='{"train_batch_size": "auto"}'), r"deepspeed: .*this machine has none"),
    "resume_from_checkpoint": (dict(resume_from_checkpoint="run/checkpoint-4"), r"resume_from_checkpoint: .*--resume"),
    "optim": (dict(optim="adamw_bnb_8bit", optim_args=None), r"optim: adamw_bnb_8bit .*bitsandbytes"),
    "lr_scheduler_type": (dict(lr_scheduler_type="cosine_with_min_lr"), r"lr_scheduler_type: cosine_with_min_lr.*min_lr"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(REFUSED))
def test_settings_that_would_be_ignored_or_stop_the_run_are_refused_before_any_work(
    tmp_path, pool, eval_dataset, name
):
    overrides, message = REFUSED[name]
    if name == "optim" and importlib.util.find_spec("bitsandbytes"):
        pytest.skip("bitsandbytes is installed: its optimizers are built")
    with pytest.raises(ValueError, match=message):
        PruneFuseTrainer(tiny_resnet_config(), args=make_config(tmp_path, **overrides), train_dataset=pool,
                         eval_dataset=None if "without an evaluation set" in name else eval_dataset)  # fmt: skip
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("task", ["object-detection", "image-segmentation"])
def test_label_smoothing_is_refused_for_detection_and_segmentation(tmp_path, task):
    if task == "object-detection":
        pool = synthetic_detection_pool(16, items=detection_items(), image_size=48, scales=(16, 24), seed=0)
        model = tiny_detr()
    else:
        pool = synthetic_segmentation_pool(
            16, items=detection_items(), image_size=32, scales=(12, 16), seed=0
        )
        model = SegformerConfig(hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 1, 1, 2], depths=[1, 1, 1, 1],
                                decoder_hidden_size=16, num_labels=11,
                                architectures=["SegformerForSemanticSegmentation"])  # fmt: skip
    args = make_config(tmp_path, initial_labeled_size=8, label_smoothing_factor=0.1)
    with pytest.raises(ValueError, match=rf"label_smoothing_factor: 0.1 .*{task} model trains with its own"):
        PruneFuseTrainer(model, args=args, train_dataset=pool)
    assert not (tmp_path / "run").exists()


def test_detection_metrics_are_accepted_for_the_best_model(tmp_path):
    pool = synthetic_detection_pool(16, items=detection_items(), image_size=48, scales=(16, 24), seed=0)
    args = make_config(tmp_path, initial_labeled_size=8, save_strategy="best", metric_for_best_model="map_50",
                       eval_strategy="epoch", optim="adamw_torch", optim_args=None)  # fmt: skip
    trainer = PruneFuseTrainer(tiny_detr(), args=args, train_dataset=pool, eval_dataset=pool.select(range(4)))
    assert trainer.task.name == "object-detection" and trainer.evaluates_whole_set  # box lists: not gathered
    # A detector's evaluation reads per-image box lists batch by batch: unconcatenated batches are fine, where
    # classification's accuracy reads one array.
    PruneFuseTrainer(tiny_detr(), args=dataclasses.replace(args, eval_do_concat_batches=False), train_dataset=pool,
                     eval_dataset=pool.select(range(4)))  # fmt: skip
    with pytest.raises(ValueError, match=r"eval_do_concat_batches: false .*; accuracy reads one array"):
        PruneFuseTrainer(tiny_resnet_config(), args=make_config(tmp_path, eval_do_concat_batches=False),
                         train_dataset=make_image_dataset(16))  # fmt: skip
    with pytest.raises(ValueError, match=r"metric_for_best_model: 'accuracy'.*'map', 'map_50'"):
        PruneFuseTrainer(tiny_detr(), args=dataclasses.replace(args, metric_for_best_model="accuracy"),
                         train_dataset=pool, eval_dataset=pool.select(range(4)))  # fmt: skip
