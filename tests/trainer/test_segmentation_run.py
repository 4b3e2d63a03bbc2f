"""PruneFuseTrainer on a semantic segmenter: the whole run (prune, select by per-image pixel-uncertainty scores or by
pooled encoder features, fuse, train), the stock Trainer's evaluate/predict on segmentation datasets, a
pipeline-ready fused segmenter, and the settings that are refused before any work."""

import json

import numpy as np
import pytest
import torch
from transformers import SegformerConfig, TrainerCallback, pipeline

from conftest import detection_items, segmentation_model
from prunefuse_hf import PruneFuseConfig, PruneFuseTrainer
from prunefuse_hf.pruning import load_surrogate
from prunefuse_hf.selection import HeadCalls, get_strategy, typiclust_select
from prunefuse_hf.tasks import (
    SEGMENTATION,
    segmentation_gradient_embeddings,
    segmentation_image_scores,
    synthetic_segmentation_pool,
)

CLASSES = ["background", "0", "1", "2"]


@pytest.fixture(scope="module")
def pools():
    items = detection_items()
    pool = synthetic_segmentation_pool(24, items=items, image_size=32, scales=(12, 16), seed=0)
    test = synthetic_segmentation_pool(6, items=items, image_size=32, scales=(12, 16), seed=1)
    return pool, test


def tiny_segformer(num_labels=len(CLASSES)):
    """The config of a SegFormer small enough to train in a test (4 stages, widths 8-32). Its `architectures` say
    which head it is, as a checkpoint's config does (`segformer` also has an image-classification head)."""
    return SegformerConfig(hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 1, 1, 2], depths=[1, 1, 1, 1],
                           decoder_hidden_size=16, classifier_dropout_prob=0.0, drop_path_rate=0.0,
                           num_labels=num_labels, architectures=["SegformerForSemanticSegmentation"])  # fmt: skip


def config(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path / "run"), initial_labeled_size=8, query_size=6, num_rounds=1,
                  num_train_epochs=1, per_device_train_batch_size=8, learning_rate=1e-3, optim="adamw_torch",
                  optim_args=None, weight_decay=1e-4, scoring_batch_size=16, per_device_eval_batch_size=16,
                  strategy="entropy", image_size=32)  # fmt: skip
    return PruneFuseConfig(**{**values, **overrides})


class StopAfterSelection(TrainerCallback):
    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "picked" in logs:
            control.should_training_stop = True


def test_segmentation_run_selects_by_pixel_scores_fuses_and_gives_a_pipeline_ready_segmenter(tmp_path, pools):
    pool, test = pools
    args = config(tmp_path, segmentation_aggregation="class_weighted")
    trainer = PruneFuseTrainer(tiny_segformer(), args=args, train_dataset=pool, eval_dataset=test,
                               callbacks=[StopAfterSelection()])  # fmt: skip
    assert trainer.task is SEGMENTATION and trainer.class_names == CLASSES
    trainer.train()  # stops after select:1, with the round-1 surrogate saved
    run = tmp_path / "run"
    state = json.loads((run / "state.json").read_text())
    assert state["completed"][-1] == "select:1" and state["metric"] == "mean_iou"
    assert state["settings"]["segmentation_aggregation"] == "class_weighted"
    first = state["queries"]["1"]
    # Images whose masks hold each class, among the first query's.
    assert 0 < first["class_counts"]["background"] <= 8 and set(first["class_counts"]) <= set(CLASSES)
    # The query is the 6 unlabeled images with the highest per-image scores of the trained surrogate.
    query = state["queries"]["2"]
    surrogate = load_surrogate(run / "surrogate").eval()
    unlabeled = np.setdiff1d(np.arange(len(pool)), first["pool_indices"])
    prepared = trainer.examples.prepared(pool.select(unlabeled), with_annotations=False)
    batch = SEGMENTATION.collate([prepared[i] for i in range(len(prepared))])
    with torch.no_grad():
        scores = segmentation_image_scores(surrogate(**batch), "entropy", aggregation="class_weighted")
    expected = unlabeled[np.lexsort((unlabeled, -scores.double().numpy()))[:6]]
    assert query["pool_indices"] == expected.tolist()
    np.testing.assert_allclose(query["scores"], np.sort(scores.numpy())[::-1][:6], rtol=1e-5)

    resumed = PruneFuseTrainer(tiny_segformer(), args=config(tmp_path, segmentation_aggregation="class_weighted"),
                               train_dataset=pool, eval_dataset=test)  # fmt: skip
    result = resumed.train(resume_from_checkpoint=True)
    assert resumed.done and result.metrics["labeled"] == 14 and 0.0 <= result.metrics["mean_iou"] <= 1.0
    dense_init = SEGMENTATION.model_class().from_pretrained(run / "dense_init")
    fused = SEGMENTATION.model_class().from_pretrained(run / "fused")
    assert any(not torch.equal(a, b) for a, b in zip(dense_init.parameters(), fused.parameters()))
    assert fused.config.id2label == dict(enumerate(CLASSES))
    assert "surrogate mIoU" in (run / "report.md").read_text()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["metric"] == "mean_iou" and metrics["final"]["mean_iou"] == result.metrics["mean_iou"]
    # Its record keeps every number of the evaluation: the task's metrics first, then per class.
    evaluation = metrics["final"]["evaluation"]
    assert (
        list(evaluation)[:3] == ["mean_iou", "mean_accuracy", "overall_accuracy"]
        and "iou_background" in evaluation
    )
    # The stock Trainer's methods on the datasets a segmentation user has.
    evaluation = resumed.evaluate(pool.select(range(6)))
    assert {"eval_mean_iou", "eval_overall_accuracy", "eval_iou_background"} <= set(evaluation)
    predictions = resumed.predict(test.remove_columns("label"))
    assert predictions.label_ids is None and predictions.predictions.shape[:2] == (6, len(CLASSES))
    segmenter = pipeline("image-segmentation", model=str(run / "fused"))
    found = segmenter(test[0]["image"])
    assert found and {segment["label"] for segment in found} <= set(CLASSES)
    assert found[0]["mask"].size == test[0]["image"].size


def test_kcenter_greedy_selects_on_pooled_encoder_features(tmp_path, pools):
    pool, _ = pools
    trainer = PruneFuseTrainer(tiny_segformer(), args=config(tmp_path, strategy="kcenter_greedy"), train_dataset=pool,
                               callbacks=[StopAfterSelection()])  # fmt: skip
    trainer.train()
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    picked = state["queries"]["2"]["pool_indices"]
    assert len(picked) == len(set(picked)) == 6
    assert not set(picked) & set(state["queries"]["1"]["pool_indices"])
    # The surrogate's config is left as it was saved: hidden states are asked for only while features are read.
    assert trainer.trained_surrogate[1].config.output_hidden_states is False


def _unlabeled_batch(trainer, pool, state):
    unlabeled = np.setdiff1d(np.arange(len(pool)), state["queries"]["1"]["pool_indices"])
    prepared = trainer.examples.prepared(pool.select(unlabeled), with_annotations=False)
    return unlabeled, SEGMENTATION.collate([prepared[i] for i in range(len(prepared))])


def test_badge_selects_on_the_pixel_classifiers_gradient_embeddings(tmp_path, pools):
    pool, _ = pools
    args = config(tmp_path, strategy="badge", selection_seed=3)
    trainer = PruneFuseTrainer(
        tiny_segformer(), args=args, train_dataset=pool, callbacks=[StopAfterSelection()]
    )
    trainer.train()
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    # The expected query: BADGE on each unlabeled image's gradient of its argmax pixel loss with respect to the
    # surrogate's decode_head.classifier weights, from one forward pass of the saved surrogate.
    surrogate = load_surrogate(tmp_path / "run" / "surrogate").eval()
    unlabeled, batch = _unlabeled_batch(trainer, pool, state)
    with torch.no_grad(), HeadCalls(surrogate) as calls:
        head = calls.producing(surrogate(**batch).logits)
    assert head[0].shape[1] == surrogate.decode_head.classifier.in_channels
    embeddings = segmentation_gradient_embeddings(*head)
    expected = get_strategy("badge").select(6, pool_indices=unlabeled, embeddings=embeddings, seed=3 + 1)
    assert state["queries"]["2"]["pool_indices"] == expected.indices.tolist()
    assert trainer.progress["rounds"]["1"]["selection"]["scored_examples"] == 16


def test_bald_selects_on_the_mutual_information_of_mc_dropout_pixels(tmp_path, pools):
    pool, _ = pools
    args = config(tmp_path, strategy="bald", mc_samples=3)
    model = tiny_segformer()
    model.classifier_dropout_prob = 0.5  # SegFormer's decode head then has a dropout layer MC dropout samples
    trainer = PruneFuseTrainer(model, args=args, train_dataset=pool, callbacks=[StopAfterSelection()])
    trainer.train()
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    surrogate = load_surrogate(tmp_path / "run" / "surrogate").eval()
    unlabeled, batch = _unlabeled_batch(trainer, pool, state)
    # The 3 passes of the one scoring batch, seeded by its first row (0), dropout on and everything else in eval.
    dropout = [m for m in surrogate.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
    assert dropout
    torch.manual_seed(0)
    for layer in dropout:
        layer.train()
    with torch.no_grad():
        passes = [surrogate(**batch) for _ in range(3)]
    scores = segmentation_image_scores(passes, "bald").double().numpy()
    expected = unlabeled[np.lexsort((unlabeled, -scores))[:6]]
    assert state["queries"]["2"]["pool_indices"] == expected.tolist()
    np.testing.assert_allclose(state["queries"]["2"]["scores"], np.sort(scores)[::-1][:6], rtol=1e-5)
    assert trainer.progress["rounds"]["1"]["selection"]["scored_examples"] == 16 * 3


def test_cluster_margin_takes_the_most_uncertain_image_of_each_cluster(tmp_path, pools):
    pool, _ = pools
    args = config(tmp_path, strategy="cluster_margin", selection_seed=0)
    trainer = PruneFuseTrainer(
        tiny_segformer(), args=args, train_dataset=pool, callbacks=[StopAfterSelection()]
    )
    trainer.train()
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    surrogate = load_surrogate(tmp_path / "run" / "surrogate").eval()
    unlabeled, batch = _unlabeled_batch(trainer, pool, state)
    with torch.no_grad():
        outputs = surrogate(**batch, output_hidden_states=True)
    margins = segmentation_image_scores(outputs, "margin")
    expected = get_strategy("cluster_margin").select(
        6, pool_indices=unlabeled, scores=margins, features=SEGMENTATION.pooled_features(outputs), seed=1
    )
    assert state["queries"]["2"]["pool_indices"] == expected.indices.tolist()
    np.testing.assert_allclose(state["queries"]["2"]["scores"], expected.scores, rtol=1e-5)


def test_typiclust_draws_the_first_query_from_the_dense_models_pooled_features(tmp_path, pools):
    pool, _ = pools
    args = config(tmp_path, initial_strategy="typiclust", selection_seed=0)
    trainer = PruneFuseTrainer(
        tiny_segformer(), args=args, train_dataset=pool, callbacks=[StopAfterFirstStep()]
    )
    trainer.train()
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    dense = SEGMENTATION.model_class().from_pretrained(tmp_path / "run" / "dense_init").eval()
    prepared = trainer.examples.prepared(pool, with_annotations=False)
    batch = SEGMENTATION.collate([prepared[i] for i in range(len(prepared))])
    with torch.no_grad():
        features = SEGMENTATION.pooled_features(dense(**batch, output_hidden_states=True))
    expected = typiclust_select(8, pool_indices=np.arange(len(pool)), features=features.numpy(), seed=0)
    first = state["queries"]["1"]
    assert first["strategy"] == "typiclust" and first["pool_indices"] == expected.indices.tolist()
    assert state["rounds"]["1"]["setup"]["parts"]["features_dense"]["examples"] == len(pool)
    # The features are kept in the run directory, keyed by the pool and the weights.
    assert len(list((tmp_path / "run" / "pool_features").glob("dense-*.npy"))) == 1


def test_random_selection_and_a_second_round(tmp_path, pools):
    pool, test = pools
    args = config(tmp_path, method="random", num_rounds=2, query_size=4)
    trainer = PruneFuseTrainer(tiny_segformer(), args=args, train_dataset=pool, eval_dataset=test)
    result = trainer.train()
    assert result.metrics["labeled"] == 16
    assert [len(trainer.progress["queries"][str(k)]["pool_indices"]) for k in (1, 2, 3)] == [8, 4, 4]
    # The reported mean IoU is the final model's, as the stock Trainer's evaluate() computes it on the same set.
    assert result.metrics["mean_iou"] == pytest.approx(trainer.evaluate(test)["eval_mean_iou"], abs=1e-6)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"strategy": "bald"},
            "SegformerForSemanticSegmentation has no active dropout.*classifier_dropout_prob",
        ),
        ({"distill_alpha": 0.3}, "distill_alpha: 0.3 is for image classification runs"),
        ({"augment": True}, "augment: True is for image classification runs"),
        ({"label_column": "mask"}, "The pool has no column 'mask' .* Set label_column"),
        ({"segmentation_aggregation": "sum"}, "segmentation_aggregation"),
    ],
)
def test_settings_that_cannot_run_are_refused_before_any_work(tmp_path, pools, overrides, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        PruneFuseTrainer(tiny_segformer(), args=config(tmp_path, **overrides), train_dataset=pools[0])
    assert not (tmp_path / "run").exists()


def test_a_mask_with_an_unknown_class_is_named_before_any_work(tmp_path, pools):
    import PIL.Image

    pool = pools[0]

    def break_mask(row, index):
        if index == 5:
            row["label"] = PIL.Image.fromarray(np.full((32, 32), 9, dtype=np.uint8))
        return row

    broken = pool.map(break_mask, with_indices=True)
    with pytest.raises(ValueError, match="pool index 5: class ids 9 are outside the classes"):
        PruneFuseTrainer(tiny_segformer(), args=config(tmp_path), train_dataset=broken)
    assert not (tmp_path / "run").exists()


def test_a_model_with_another_label_count_is_refused(tmp_path, pools):
    from transformers import SegformerForSemanticSegmentation

    torch.manual_seed(0)
    with pytest.raises(ValueError, match="has 7 labels but the dataset has 4 classes"):
        PruneFuseTrainer(SegformerForSemanticSegmentation(tiny_segformer(7)), args=config(tmp_path),
                         train_dataset=pools[0])  # fmt: skip


class StopAfterFirstStep(TrainerCallback):
    def on_log(self, args, state, control, logs=None, **kwargs):
        control.should_training_stop = True


def test_resuming_with_another_segmentation_setting_is_refused_by_name(tmp_path, pools):
    pool = pools[0]
    PruneFuseTrainer(
        tiny_segformer(), args=config(tmp_path), train_dataset=pool, callbacks=[StopAfterFirstStep()]
    ).train()
    changed = PruneFuseTrainer(
        tiny_segformer(), args=config(tmp_path, segmentation_aggregation="max"), train_dataset=pool
    )
    with pytest.raises(ValueError, match="segmentation_aggregation: the run has 'mean', now 'max'"):
        changed.train(resume_from_checkpoint=True)


def test_reduce_labels_makes_the_background_the_ignore_index(tmp_path, pools):
    # ADE20k's layout: 0 is a background that is not a class, ids 1..K are the K classes.
    pool = pools[0].remove_columns("classes")
    args = config(tmp_path, reduce_labels=True, class_names=["0", "1", "2"])
    trainer = PruneFuseTrainer(tiny_segformer(3), args=args, train_dataset=pool)
    assert trainer.class_names == ["0", "1", "2"] and trainer.model.config.num_labels == 3
    labels = np.asarray(trainer.examples.train_dataset(np.arange(2))[0]["labels"])
    stored = np.asarray(pool[0]["label"], dtype=np.int64)
    np.testing.assert_array_equal(labels, np.where(stored == 0, 255, stored - 1))
    assert trainer.examples.class_counts(np.arange(len(pool)))["0"] > 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"strategy": "bald"}, "SegformerForSemanticSegmentation has no active dropout"),
        ({"initial_labeled_size": 20, "query_size": 6}, "initial_labeled_size"),
        ({"optim": "adamw_bnb_8bit"}, "optim: adamw_bnb_8bit .* cannot be built"),
    ],
)
def test_settings_are_refused_before_any_mask_is_decoded(tmp_path, pools, overrides, message):
    import datasets

    if "optim" in overrides and __import__("importlib").util.find_spec("bitsandbytes"):
        pytest.skip("bitsandbytes is installed: its optimizers are built")
    # Every mask unreadable: a check that decoded the masks first would name them instead of the setting.
    broken = pools[0].cast_column("label", datasets.Image(decode=False))
    broken = broken.map(lambda row: {"label": {"bytes": b"not an image", "path": None}})
    broken = broken.cast_column("label", datasets.Image())
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        PruneFuseTrainer(tiny_segformer(), args=config(tmp_path, **overrides), train_dataset=broken)
    assert not (tmp_path / "run").exists()


# 17 s (UperNet) to 57 s (DeepLabV3: the general pruning path) each on a busy 2-core machine: behind the slow marker.
@pytest.mark.slow
@pytest.mark.parametrize(
    "key",
    [
        "UperNetForSemanticSegmentation/convnext",
        "UperNetForSemanticSegmentation/swin",
        "MobileNetV2ForSemanticSegmentation",
    ],
)
def test_upernet_and_deeplabv3_runs_prune_select_fuse_and_give_a_pipeline_ready_segmenter(
    tmp_path, pools, key
):
    pool, test = pools
    dense = segmentation_model(key, num_labels=len(CLASSES), id2label=dict(enumerate(CLASSES)))
    trainer = PruneFuseTrainer(
        dense, args=config(tmp_path, strategy="margin"), train_dataset=pool, eval_dataset=test
    )
    result = trainer.train()
    run = tmp_path / "run"
    assert trainer.done and result.metrics["labeled"] == 14 and 0.0 <= result.metrics["mean_iou"] <= 1.0
    state = json.loads((run / "state.json").read_text())
    assert len(state["queries"]["2"]["pool_indices"]) == 6 and state["queries"]["2"]["strategy"] == "margin"
    # The surrogate is the same class, narrower; the fused model is the dense class with the surrogate's training in it.
    surrogate = load_surrogate(run / "surrogate")
    assert type(surrogate) is type(dense)
    assert sum(p.numel() for p in surrogate.parameters()) < 0.6 * sum(p.numel() for p in dense.parameters())
    dense_init = SEGMENTATION.model_class().from_pretrained(run / "dense_init")
    fused = SEGMENTATION.model_class().from_pretrained(run / "fused")
    assert type(fused) is type(dense) and fused.config.id2label == dict(enumerate(CLASSES))
    assert any(not torch.equal(a, b) for a, b in zip(dense_init.parameters(), fused.parameters()))
    found = pipeline("image-segmentation", model=str(run / "fused"))(test[0]["image"])
    assert found and {segment["label"] for segment in found} <= set(CLASSES)
