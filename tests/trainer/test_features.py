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
from prunefuse_hf.pruning.cost import FORWARD_FLOPS_PER_MAC
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


def test_a_fraction_of_an_epoch_distils_on_that_share_and_runs_the_dense_model_on_it_only(tmp_path, pool):
    args = make_config(tmp_path, method="prunefuse_distilled", surrogate_distill_epochs=0.25)
    trainer = PruneFuseTrainer(dense_config(), args=args, train_dataset=pool,
                               callbacks=[StopAfterFirstSelection()])  # fmt: skip
    trainer.train()
    parts = trainer.metrics["rounds"][0]["setup"]["parts"]
    assert parts["features_dense_sample"]["examples"] == 24  # a quarter of the 96 pool examples
    assert parts["distillation"]["examples"] == 24  # 3 steps of 8
    assert parts["distillation"]["mse_after"] < parts["distillation"]["mse_before"]
    # No whole-pool dense pass: the only dense features are the sample's, not kept in the run directory.
    assert not list((tmp_path / POOL_FEATURES_DIR).glob("dense-*"))
    assert parts["features_dense_sample"]["flops"] * 4 == pytest.approx(
        FORWARD_FLOPS_PER_MAC * trainer.progress["costs"]["dense"]["macs"] * len(pool)
    )


def test_distillation_refuses_features_it_cannot_pair(tmp_path, pool):
    trainer = PruneFuseTrainer(dense_config(), args=make_config(tmp_path, method="prunefuse_distilled"),
                               train_dataset=pool, callbacks=[StopAfterFirstSelection()])  # fmt: skip
    trainer.train()
    surrogate, plan = prune_model(trainer.model, 0.5)
    plan.kept_indices["classifier.1.weight"][1] = [0, 1, 2]
    with pytest.raises(ValueError, match=r"pooled features have 16 values but the dense model's .* 3"):
        distill_surrogate(trainer, surrogate, plan, np.zeros((len(pool), 32), np.float32), 0.1)


def _labeled_before(trainer, round_: int) -> np.ndarray:
    table = pq.read_table(trainer.run_dir.selection_path).to_pydict()
    return np.array(
        sorted(i for i, r in zip(table["pool_index"], table["round"]) if r <= round_), dtype=np.int64
    )


def test_refreshed_proxy_recomputes_the_features_with_the_fine_tuned_dense_model(tmp_path, pool):
    from prunefuse_hf.selection.proxy import train_linear_probe
    from prunefuse_hf.selection.strategies import get_strategy

    args = make_config(
        tmp_path, method="feature_proxy_refreshed", query_size=8, num_rounds=2, num_train_epochs=1
    )
    trainer = PruneFuseTrainer(dense_config(), args=args, train_dataset=pool)
    trainer.train()
    completed = trainer.progress["completed"]
    # Round 1 selects on the pretrained features; round 2 first trains the dense model, then refreshes them.
    assert "train_dense:1" not in completed and completed.index("train_dense:2") < completed.index("select:2")
    metrics = trainer.metrics
    rounds = {r["round"]: r for r in metrics["rounds"]}
    setup_file = next(p["file"] for p in rounds[1]["setup"]["parts"].values() if "file" in p)
    refresh = rounds[2]["proxy_refresh"]
    assert "proxy_refresh" not in rounds[1] and "proxy_refresh" not in rounds[3]
    assert refresh["file"] != setup_file and trainer.progress["probe_features"] == refresh["file"]
    before = np.load(tmp_path / POOL_FEATURES_DIR / setup_file)
    after = np.load(tmp_path / POOL_FEATURES_DIR / refresh["file"])
    assert after.shape == before.shape and not np.allclose(after, before)
    # Round 2's query is the linear probe's on the refreshed features, exactly.
    labeled = _labeled_before(trainer, 2)
    probe = train_linear_probe(after[labeled], trainer.pool.labels[labeled], NUM_CLASSES)
    unlabeled = np.setdiff1d(np.arange(len(pool)), labeled)
    expected = get_strategy("least_confidence").select(
        8, pool_indices=unlabeled, probs=probe.probs(after[unlabeled])
    )
    assert selected(trainer)[3] == sorted(expected.indices.tolist())
    # The refresh is one dense pass over the pool; it and the dense training it read are selection cost.
    macs = metrics["costs"]["dense"]["macs"]
    assert refresh["examples"] == len(pool) and refresh["flops"] == pytest.approx(2 * macs * len(pool))
    assert rounds[2]["dense"]["purpose"] == "selection"
    booked = rounds[1]["setup"]["flops"] + refresh["flops"] + rounds[2]["dense"]["flops"]
    booked += sum(r["selection"]["flops"] for r in rounds.values() if "selection" in r)
    assert metrics["selection"]["flops"] == pytest.approx(booked)
    assert metrics["final_training"]["flops"] == pytest.approx(rounds[3]["dense"]["flops"])


def test_dropquery_selects_from_dropout_passes_of_the_probe(tmp_path, pool):
    from prunefuse_hf.selection.dropquery import DropQueryStrategy
    from prunefuse_hf.selection.proxy import normalize_features, train_linear_probe

    args = make_config(
        tmp_path, method="feature_proxy", strategy="dropquery", query_size=8, num_rounds=1, num_train_epochs=1
    )
    trainer = PruneFuseTrainer(dense_config(), args=args, train_dataset=pool)
    trainer.train()
    rounds = {r["round"]: r for r in trainer.metrics["rounds"]}
    assert rounds[1]["selection"]["strategy"] == "dropquery" and args.mc_samples == 3
    features = np.load(tmp_path / POOL_FEATURES_DIR / trainer.progress["probe_features"])
    labeled = _labeled_before(trainer, 1)
    unlabeled = np.setdiff1d(np.arange(len(pool)), labeled)
    probe = train_linear_probe(features[labeled], trainer.pool.labels[labeled], NUM_CLASSES)
    seed = args.selection_seed + 1
    expected = DropQueryStrategy().select(8, pool_indices=unlabeled, probs=probe.probs(features[unlabeled]),
                                          features=normalize_features(features[unlabeled]),
                                          mc_probs=probe.dropout_probs(features[unlabeled], 3, 0.75, seed=seed),
                                          seed=seed)  # fmt: skip
    assert selected(trainer)[2] == sorted(expected.indices.tolist())
    # The head applied once clean and three times with dropout, plus its fit.
    fit = rounds[1]["selection"]["flops"] - 4 * probe.flops(len(unlabeled))
    assert fit == pytest.approx(3 * probe.flops(len(labeled)) * probe.iterations)
