"""What a run computes once before round 1: pool features (kept and reused), the feature proxy's selections, the
TypiClust cold start and the surrogate's label-free distillation, through `PruneFuseTrainer.train()`."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from transformers import TrainerCallback

from conftest import make_image_dataset, tiny_resnet_config
from prunefuse_hf import PruneFuseConfig, PruneFuseTrainer
from prunefuse_hf.constants import POOL_FEATURES_DIR
from prunefuse_hf.pruning import load_surrogate
from prunefuse_hf.pruning.prune import prune_model
from prunefuse_hf.trainer.features import distill_surrogate, pool_features

NUM_CLASSES = 4


def make_config(output_dir, **overrides):
    values = dict(output_dir=str(output_dir), initial_labeled_size=16, query_size=8, num_rounds=2, num_train_epochs=2,
                  per_device_train_batch_size=8, per_device_eval_batch_size=64, scoring_batch_size=32,
                  logging_steps=50, disable_tqdm=True, seed=3)  # fmt: skip
    values.update(overrides)
    return PruneFuseConfig(**values)


@pytest.fixture(scope="module")
def pool():
    return make_image_dataset(num_examples=96, num_classes=NUM_CLASSES, seed=1, mode="RGB")


def dense_config():
    return tiny_resnet_config(num_channels=3, num_labels=NUM_CLASSES)


def selected(trainer) -> dict[int, list[int]]:
    table = pq.read_table(trainer.run_dir.selection_path).to_pydict()
    rounds = {}
    for index, round_ in zip(table["pool_index"], table["round"]):
        rounds.setdefault(round_, []).append(index)
    return {r: sorted(v) for r, v in rounds.items()}


class StopAfterFirstSelection(TrainerCallback):
    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and logs.get("picked"):
            control.should_training_stop = True


def test_feature_proxy_selects_with_a_linear_head_on_features_computed_once(tmp_path, pool):
    proxy = PruneFuseTrainer(dense_config(), args=make_config(tmp_path / "proxy", method="feature_proxy"),
                             train_dataset=pool, callbacks=[StopAfterFirstSelection()])  # fmt: skip
    proxy.train()
    assert proxy.progress["completed"][-1] == "select:1"
    files = sorted(p.name for p in (tmp_path / "proxy" / POOL_FEATURES_DIR).iterdir())
    assert len(files) == 2 and files[0].startswith("dense-") and files[0].endswith(".json")
    stamp = (tmp_path / "proxy" / POOL_FEATURES_DIR / files[1]).stat().st_mtime_ns
    resumed = PruneFuseTrainer(dense_config(), args=make_config(tmp_path / "proxy", method="feature_proxy"),
                               train_dataset=pool)  # fmt: skip
    resumed.train(resume_from_checkpoint=True)
    assert resumed.done
    # The resume read the features back: the same single file, untouched; no surrogate was ever trained.
    assert sorted(p.name for p in (tmp_path / "proxy" / POOL_FEATURES_DIR).iterdir()) == files
    assert (tmp_path / "proxy" / POOL_FEATURES_DIR / files[1]).stat().st_mtime_ns == stamp
    metrics = resumed.metrics
    assert all("surrogate" not in r for r in metrics["rounds"])
    assert [r["selection"]["selector"] for r in metrics["rounds"] if "selection" in r] == ["linear_probe"] * 2
    # The one forward pass is booked as selection, in round 1's set-up, with the heads' fits.
    setup = metrics["rounds"][0]["setup"]
    macs = metrics["costs"]["dense"]["macs"]
    assert setup["parts"]["features_dense"]["examples"] == len(pool)
    assert setup["flops"] == pytest.approx(2 * macs * len(pool))
    probe_flops = sum(r["selection"]["flops"] for r in metrics["rounds"] if "selection" in r)
    assert metrics["selection"]["flops"] == pytest.approx(setup["flops"] + probe_flops)
    assert 0 < probe_flops < 0.1 * setup["flops"]

    random_run = PruneFuseTrainer(dense_config(), args=make_config(tmp_path / "random", method="random"),
                                  train_dataset=pool)  # fmt: skip
    random_run.train()
    proxy_rounds, random_rounds = selected(resumed), selected(random_run)
    assert proxy_rounds[1] == random_rounds[1]  # the same random first query
    assert proxy_rounds[2] != random_rounds[2] and proxy_rounds[3] != random_rounds[3]


def test_pool_features_are_read_back_not_recomputed(tmp_path, pool):
    trainer = PruneFuseTrainer(dense_config(), args=make_config(tmp_path, method="feature_proxy"),
                               train_dataset=pool, callbacks=[StopAfterFirstSelection()])  # fmt: skip
    trainer.train()
    calls = []
    hook = trainer.model.classifier.register_forward_pre_hook(lambda *a: calls.append(1))
    features, record = pool_features(trainer, trainer.model, "dense")
    hook.remove()
    assert calls == [] and record["reused"] and features.shape == (len(pool), 32)
    # Other weights are another key: a new pass and a new file.
    with torch.no_grad():
        trainer.model.classifier[1].weight.add_(1.0)
    _, other = pool_features(trainer, trainer.model, "dense")
    assert not other["reused"] and other["file"] != record["file"]


def test_typiclust_cold_start_picks_the_first_query_from_the_dense_features(tmp_path, pool):
    def first_query(name, **overrides):
        trainer = PruneFuseTrainer(dense_config(), args=make_config(tmp_path / name, method="dense_al", **overrides),
                                   train_dataset=pool, callbacks=[StopAfterFirstSelection()])  # fmt: skip
        trainer.train()
        return trainer

    typiclust = first_query("typiclust", initial_strategy="typiclust")
    again = first_query("again", initial_strategy="typiclust")
    drawn = first_query("random")
    query = typiclust.progress["queries"]["1"]
    assert query["strategy"] == "typiclust" and len(query["pool_indices"]) == 16
    assert query["pool_indices"] == again.progress["queries"]["1"]["pool_indices"]
    assert sorted(query["pool_indices"]) != drawn.progress["queries"]["1"]["pool_indices"]
    # Its cost (the dense model's pass over the pool, k-means) is selection cost; the random draw costs nothing.
    setup = typiclust.metrics["rounds"][0]["setup"]
    assert set(setup["parts"]) == {"typiclust", "features_dense"}
    spent, drawn_spent = typiclust.metrics["selection"]["flops"], drawn.metrics["selection"]["flops"]
    assert setup["flops"] > 0 and spent == pytest.approx(drawn_spent + setup["flops"])
    assert "setup" not in drawn.metrics["rounds"][0]


def test_label_free_distillation_brings_the_surrogates_features_closer_to_the_dense_models(tmp_path, pool):
    trainer = PruneFuseTrainer(dense_config(), args=make_config(tmp_path, method="prunefuse_distilled"),
                               train_dataset=pool, callbacks=[StopAfterFirstSelection()])  # fmt: skip
    trainer.train()
    distillation = trainer.metrics["rounds"][0]["setup"]["parts"]["distillation"]
    assert distillation["examples"] == len(pool)  # surrogate_distill_epochs 1: one pass over the pool
    assert distillation["mse_after"] < distillation["mse_before"]
    # Measured independently: the saved surrogate's features against the dense model's at the kept indices.
    dense = trainer.model
    surrogate, plan = prune_model(dense, 0.5)
    saved = load_surrogate(tmp_path / "surrogate_init")
    dense_features, _ = pool_features(trainer, dense, "dense")
    kept = plan.kept_indices["classifier.1.weight"][1]
    before, _ = pool_features(trainer, surrogate, "surrogate")
    after, _ = pool_features(trainer, saved, "surrogate")
    error_before = np.mean((before - dense_features[:, kept]) ** 2)
    error_after = np.mean((after - dense_features[:, kept]) ** 2)
    assert error_after < 0.8 * error_before
    # The distilled surrogate is what the rounds start from: round 1's surrogate was trained from it.
    assert trainer.progress["rounds"]["1"]["surrogate"]["purpose"] == "selection"
    assert json.loads((tmp_path / "state.json").read_text())["settings"]["surrogate_distill_epochs"] == 1.0


def test_distillation_refuses_features_it_cannot_pair(tmp_path, pool):
    trainer = PruneFuseTrainer(dense_config(), args=make_config(tmp_path, method="prunefuse_distilled"),
                               train_dataset=pool, callbacks=[StopAfterFirstSelection()])  # fmt: skip
    trainer.train()
    surrogate, plan = prune_model(trainer.model, 0.5)
    plan.kept_indices["classifier.1.weight"][1] = [0, 1, 2]
    with pytest.raises(ValueError, match=r"pooled features have 16 values but the dense model's .* 3"):
        distill_surrogate(trainer, surrogate, plan, np.zeros((len(pool), 32), np.float32), 0.1)
