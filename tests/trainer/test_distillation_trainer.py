from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import (
    AutoModelForImageClassification,
    EvalPrediction,
    ResNetForImageClassification,
    Trainer,
    TrainingArguments,
)

from conftest import assert_same_outputs, assert_states_equal, run_in_processes, tiny_resnet_config
from prunefuse_hf.trainer.distillation_trainer import DistillationTrainer, compute_accuracy
from prunefuse_hf.trainer.prunefuse_config import PruneFuseConfig

NUM_LABELS = 4


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(autouse=True)
def _one_thread():
    # Models this small run fastest on one thread, and intra-op threads slow to a crawl on a busy 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def toy_dataset(num_examples=64, size=16, seed=0, extra_columns=False):
    """Learnable one-channel images: a bright vertical stripe whose position is the label."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_LABELS, size=num_examples)
    pixels = rng.normal(0, 0.3, size=(num_examples, 1, size, size)).astype(np.float32)
    cell = size // NUM_LABELS
    for i, label in enumerate(labels):
        pixels[i, :, :, label * cell : (label + 1) * cell] += 2.0
    columns = {"pixel_values": list(pixels), "labels": labels.tolist()}
    if extra_columns:
        columns["pool_index"] = list(range(num_examples))
    return Dataset.from_dict(columns).with_format("torch")


def tiny_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return ResNetForImageClassification(tiny_resnet_config(num_channels=1, num_labels=NUM_LABELS, **kwargs))


def make_args(tmp_path, cls=PruneFuseConfig, **kwargs):
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        report_to="none",
        per_device_train_batch_size=16,
        per_device_eval_batch_size=32,
        learning_rate=1e-2,
        num_train_epochs=1,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        # These tests were written for the stock optimizer (PruneFuseConfig defaults to SGD with momentum).
        optim="adamw_torch",
        lr_scheduler_type="linear",
        weight_decay=0.0,
    )
    defaults.update(kwargs)
    return cls(**defaults)


def batch_of(dataset, n=8):
    return {key: value[:n] for key, value in dataset[:n].items()}


@pytest.mark.parametrize("training", [True, False])
def test_loss_without_teacher_is_the_models_cross_entropy(tmp_path, training):
    model = tiny_model().train(training)
    trainer = DistillationTrainer(model, make_args(tmp_path))
    batch = batch_of(toy_dataset(extra_columns=True))  # pool_index must not reach the model
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch)
        logits = model(pixel_values=batch["pixel_values"]).logits
        stock = model(pixel_values=batch["pixel_values"], labels=batch["labels"]).loss
    assert torch.equal(loss, F.cross_entropy(logits, batch["labels"]))
    assert torch.equal(loss, stock)


def test_alpha_zero_ignores_the_teacher(tmp_path):
    model, teacher = tiny_model(seed=0).eval(), tiny_model(seed=1)
    trainer = DistillationTrainer(model, make_args(tmp_path, distill_alpha=0.0), teacher_model=teacher)
    assert not trainer.distilling
    batch = batch_of(toy_dataset())
    with torch.no_grad():
        logits = model(pixel_values=batch["pixel_values"]).logits
        assert torch.equal(trainer.compute_loss(model, batch), F.cross_entropy(logits, batch["labels"]))


@pytest.mark.parametrize("alpha, tau", [(0.5, 4.0), (0.3, 2.0), (1.0, 1.0)])
def test_distillation_loss_matches_formula(tmp_path, alpha, tau):
    model, teacher = tiny_model(seed=0).eval(), tiny_model(seed=1)
    trainer = DistillationTrainer(
        model, make_args(tmp_path, distill_alpha=alpha, distill_temperature=tau), teacher_model=teacher
    )
    batch = batch_of(toy_dataset())
    with torch.no_grad():
        z_fused = model(pixel_values=batch["pixel_values"]).logits
        z_surrogate = teacher(pixel_values=batch["pixel_values"]).logits
        loss = trainer.compute_loss(model, batch)
    p_surrogate = torch.softmax(z_surrogate / tau, dim=-1)
    kl = (p_surrogate * (torch.log(p_surrogate) - torch.log_softmax(z_fused / tau, dim=-1))).sum(-1).mean()
    expected = (1 - alpha) * F.cross_entropy(z_fused, batch["labels"]) + alpha * tau**2 * kl
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert kl > 0


def test_alpha_and_tau_from_kwargs_with_plain_training_arguments(tmp_path):
    args = make_args(tmp_path, cls=TrainingArguments)
    trainer = DistillationTrainer(tiny_model(), args, distill_alpha=0.2, distill_temperature=3.0)
    assert (trainer.distill_alpha, trainer.distill_temperature) == (0.2, 3.0)
    trainer = DistillationTrainer(tiny_model(), args)
    assert (trainer.distill_alpha, trainer.distill_temperature) == (0.5, 4.0)
    trainer = DistillationTrainer(
        tiny_model(), make_args(tmp_path, distill_alpha=0.1, distill_temperature=2.0)
    )
    assert (trainer.distill_alpha, trainer.distill_temperature) == (0.1, 2.0)
    with pytest.raises(ValueError, match="distill_alpha must be in \\[0, 1\\], got 2"):
        DistillationTrainer(tiny_model(), args, distill_alpha=2)


def test_teacher_with_other_label_count_is_rejected(tmp_path):
    teacher = ResNetForImageClassification(tiny_resnet_config(num_channels=1, num_labels=NUM_LABELS + 1))
    with pytest.raises(ValueError, match="teacher_model has 5 labels but model has 4"):
        DistillationTrainer(tiny_model(), make_args(tmp_path), teacher_model=teacher)


def test_training_with_teacher_updates_student_only_and_logs_terms(tmp_path):
    model, teacher = tiny_model(seed=0), tiny_model(seed=1).train()
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {n: p.clone() for n, p in model.named_parameters()}
    trainer = DistillationTrainer(
        model,
        make_args(tmp_path, max_steps=4),
        teacher_model=teacher,
        train_dataset=toy_dataset(extra_columns=True),
    )
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    trainer.train()

    for name, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_before[name]), name  # running stats too: eval mode throughout
    assert all(p.grad is None for p in teacher.parameters())
    for name, param in model.named_parameters():
        assert not torch.equal(param, student_before[name]), f"{name} did not change"

    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 4
    for entry in logged:
        expected = 0.5 * entry["ce_loss"] + 0.5 * 16.0 * entry["kd_loss"]
        assert entry["loss"] == pytest.approx(expected, rel=1e-3)
    metrics = trainer.evaluate(toy_dataset(num_examples=16, seed=1))
    assert {"eval_loss", "eval_accuracy", "eval_ce_loss", "eval_kd_loss"} <= set(metrics)


def test_training_decreases_loss_on_learnable_data(tmp_path):
    train, held_out = toy_dataset(num_examples=64), toy_dataset(num_examples=32, seed=1)
    trainer = DistillationTrainer(
        tiny_model(), make_args(tmp_path, num_train_epochs=6), train_dataset=train, eval_dataset=held_out
    )
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_loss"] < 0.5 * before["eval_loss"]
    assert after["eval_accuracy"] > before["eval_accuracy"]
    assert "ce_loss" not in trainer.state.log_history[0]  # nothing extra when not distilling


def test_eval_accuracy_equals_hand_computed_accuracy(tmp_path):
    model = tiny_model(seed=3)
    eval_dataset = toy_dataset(num_examples=37, seed=2)  # not a multiple of the eval batch size
    trainer = DistillationTrainer(model, make_args(tmp_path))
    metrics = trainer.evaluate(eval_dataset)
    model.eval()
    with torch.no_grad():
        predictions = model(pixel_values=eval_dataset["pixel_values"][:]).logits.argmax(-1)
    expected = (predictions == eval_dataset["labels"][:]).float().mean().item()
    assert metrics["eval_accuracy"] == pytest.approx(expected, abs=1e-12)


def test_compute_accuracy_offline():
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    labels = np.array([1, 0, 0, 0])
    assert compute_accuracy(EvalPrediction(predictions=logits, label_ids=labels)) == {"accuracy": 0.75}
    assert compute_accuracy(EvalPrediction(predictions=(logits,), label_ids=labels)) == {"accuracy": 0.75}
    ids = logits.argmax(-1)
    assert compute_accuracy(EvalPrediction(predictions=ids, label_ids=labels)) == {"accuracy": 0.75}


def test_compute_metrics_can_be_switched_off(tmp_path):
    trainer = DistillationTrainer(tiny_model(), make_args(tmp_path), compute_metrics=None)
    metrics = trainer.evaluate(toy_dataset(num_examples=8))
    assert "eval_loss" in metrics and "eval_accuracy" not in metrics


def test_batch_larger_than_dataset_trains(tmp_path):
    model = tiny_model()
    before = {n: p.clone() for n, p in model.named_parameters()}
    trainer = DistillationTrainer(
        model,
        make_args(tmp_path, per_device_train_batch_size=64, num_train_epochs=2),
        train_dataset=toy_dataset(num_examples=5),
    )
    trainer.train()
    assert trainer.state.global_step == 2
    assert not torch.equal(model.classifier[1].weight, before["classifier.1.weight"])


def test_singleton_last_batch_with_1x1_feature_map_trains(tmp_path):
    # 8x8 inputs reach the last stage's BatchNorm as 1x1 maps; 9 examples at batch 8 leave one alone.
    dataset = toy_dataset(num_examples=9, size=8)
    args = make_args(tmp_path, per_device_train_batch_size=8, num_train_epochs=2)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        Trainer(model=tiny_model(), args=args, train_dataset=dataset).train()

    trainer = DistillationTrainer(tiny_model(), args, train_dataset=dataset)
    trainer.train()
    assert trainer.state.global_step == 2  # one full batch per epoch, the singleton dropped
    assert args.dataloader_drop_last is False  # the user's setting is restored


def test_no_example_dropped_without_singleton_batch(tmp_path):
    trainer = DistillationTrainer(
        tiny_model(),
        make_args(tmp_path, per_device_train_batch_size=8, num_train_epochs=1),
        train_dataset=toy_dataset(num_examples=10, size=8),
    )
    assert len(trainer.get_train_dataloader()) == 2


def test_gradient_accumulation_averages_micro_batches(tmp_path):
    dataset = toy_dataset(num_examples=32)
    model = tiny_model()
    initial = tiny_model()  # same seed, same weights
    args = make_args(
        tmp_path,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=2,
        max_steps=1,
        train_sampling_strategy="sequential",
    )
    trainer = DistillationTrainer(model, args, train_dataset=dataset)
    trainer.train()
    # Both micro-batches run on the initial weights; the logged loss is their mean, not their sum.
    with torch.no_grad():
        micro = [initial(**batch_of(dataset.select(range(start, start + 8)))).loss for start in (0, 8)]
    assert trainer.state.log_history[0]["loss"] == pytest.approx(((micro[0] + micro[1]) / 2).item(), abs=1e-4)


def test_checkpoint_reloads_with_identical_weights(tmp_path):
    args = make_args(tmp_path, max_steps=3, save_strategy="steps", save_steps=3)
    trainer = DistillationTrainer(
        tiny_model(), args, train_dataset=toy_dataset(), teacher_model=tiny_model(seed=1)
    )
    trainer.train()
    checkpoint = tmp_path / "out" / "checkpoint-3"
    assert (checkpoint / "model.safetensors").is_file()
    reloaded = AutoModelForImageClassification.from_pretrained(checkpoint).eval()
    model = trainer.model.eval()
    pixels = toy_dataset(num_examples=8, seed=5)["pixel_values"][:]
    with torch.no_grad():
        assert_same_outputs(reloaded(pixel_values=pixels).logits, model(pixel_values=pixels).logits)
    assert_states_equal(reloaded.state_dict(), model.state_dict())


def _train_two_processes(output_dir):
    import json
    import os

    torch.set_num_threads(1)
    dataset = toy_dataset(num_examples=9, size=8)
    args = make_args(Path(output_dir), per_device_train_batch_size=4, num_train_epochs=1)
    trainer = DistillationTrainer(tiny_model(), args, train_dataset=dataset, teacher_model=tiny_model(seed=1))
    batch_sizes = [len(batch["labels"]) for batch in trainer.get_train_dataloader()]
    trainer.train()
    result = {"batch_sizes": batch_sizes, "log_history": trainer.state.log_history, "world": args.world_size}
    with open(os.path.join(output_dir, f"rank{args.process_index}.json"), "w") as f:
        json.dump(result, f)


@pytest.mark.distributed
def test_two_processes_keep_every_batch_and_log_distillation_terms(tmp_path):
    import json

    run_in_processes(_train_two_processes, str(tmp_path), num_processes=2)
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for result in results:
        assert result["world"] == 2
        # The batch of 4 is the global batch (PruneFuseConfig splits batches over processes): 2 per process per
        # step, 9 examples in 3 steps, the last one refilled by Accelerate, so no batch has one example.
        assert result["batch_sizes"] == [2, 2, 2]
        logged = [entry for entry in result["log_history"] if "loss" in entry]
        assert len(logged) == 3 and all("ce_loss" in entry and "kd_loss" in entry for entry in logged)
    # The logged terms are averaged over processes, so every process logs the same values.
    first, second = ([entry for entry in result["log_history"] if "loss" in entry] for result in results)
    assert first == second
