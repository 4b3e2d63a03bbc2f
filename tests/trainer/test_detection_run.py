"""PruneFuseTrainer on an object detector: the whole run (prune, select by per-image detection scores, fuse, train),
the stock Trainer's evaluate/predict on detection datasets, a pipeline-ready fused detector, and the settings that
are refused before any work."""

import contextlib
import io
import json
import re

import numpy as np
import pytest
import torch
import yaml
from transformers import TrainerCallback, pipeline

from conftest import detection_config, detection_items, detection_model, tiny_detr
from prunefuse_hf import PruneFuseConfig, PruneFuseTrainer
from prunefuse_hf.pruning import PruningPlan, load_surrogate
from prunefuse_hf.selection import HeadCalls, get_strategy, typiclust_select
from prunefuse_hf.tasks import (
    DETECTION,
    detection_class_names,
    detection_gradient_embeddings,
    detection_image_scores,
    synthetic_detection_pool,
)
from prunefuse_hf.tasks.detection_metrics import COCO_STAT_NAMES
from prunefuse_hf.trainer.annotated_run import task_image_processor


@pytest.fixture(scope="module")
def pools():
    items = detection_items()
    pool = synthetic_detection_pool(32, items=items, image_size=48, scales=(16, 24), seed=0)
    test = synthetic_detection_pool(8, items=items, image_size=48, scales=(16, 24), seed=1)
    return pool, test


def config(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path / "run"), initial_labeled_size=12, query_size=8, num_rounds=1,
                  num_train_epochs=1, per_device_train_batch_size=8, learning_rate=1e-3, optim="adamw_torch",
                  optim_args=None, weight_decay=1e-4, scoring_batch_size=16, per_device_eval_batch_size=16,
                  strategy="least_confidence", detection_score_threshold=0.0)  # fmt: skip
    return PruneFuseConfig(**{**values, **overrides})


class StopAfterSelection(TrainerCallback):
    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "picked" in logs:
            control.should_training_stop = True


def test_detection_run_selects_by_detection_scores_fuses_and_gives_a_pipeline_ready_detector(tmp_path, pools):
    pool, test = pools
    trainer = PruneFuseTrainer(tiny_detr(), args=config(tmp_path), train_dataset=pool, eval_dataset=test,
                               callbacks=[StopAfterSelection()])  # fmt: skip
    assert trainer.task is DETECTION
    trainer.train()  # stops after select:1, with the round-1 surrogate saved
    run = tmp_path / "run"
    state = json.loads((run / "state.json").read_text())
    assert state["completed"][-1] == "select:1" and state["metric"] == "map"
    query = state["queries"]["2"]
    # The query is the 8 unlabeled images with the highest per-image scores of the trained surrogate.
    surrogate = load_surrogate(run / "surrogate").eval()
    unlabeled = np.setdiff1d(np.arange(len(pool)), state["queries"]["1"]["pool_indices"])
    prepared = trainer.examples.prepared(pool.select(unlabeled), with_annotations=False)
    batch = DETECTION.collate([prepared[i] for i in range(len(prepared))])
    with torch.no_grad():
        scores = detection_image_scores(surrogate(**batch), "least_confidence", num_labels=3, threshold=0.0)
    expected = unlabeled[np.lexsort((unlabeled, -scores.double().numpy()))[:8]]
    assert query["pool_indices"] == expected.tolist()
    np.testing.assert_allclose(query["scores"], np.sort(scores.numpy())[::-1][:8], rtol=1e-5)

    resumed = PruneFuseTrainer(tiny_detr(), args=config(tmp_path), train_dataset=pool, eval_dataset=test)
    result = resumed.train(resume_from_checkpoint=True)
    assert resumed.done and result.metrics["labeled"] == 20 and 0.0 <= result.metrics["map"] <= 1.0
    dense_init = DETECTION.model_class().from_pretrained(run / "dense_init")
    fused = DETECTION.model_class().from_pretrained(run / "fused")
    assert any(not torch.equal(a, b) for a, b in zip(dense_init.parameters(), fused.parameters()))
    assert "surrogate mAP" in (run / "report.md").read_text()
    # Each model's record keeps every number of its evaluation, the COCO stats first, then the per-class AP.
    final = json.loads((run / "metrics.json").read_text())["final"]
    assert list(final["evaluation"])[: len(COCO_STAT_NAMES)] == list(COCO_STAT_NAMES)
    assert final["evaluation"]["map"] == final["map"] and "loss" not in final["evaluation"]
    assert {f"map_{name}" for name in detection_class_names(pool)} & set(final["evaluation"])
    surrogate = json.loads((run / "state.json").read_text())["rounds"]["1"]["surrogate"]
    assert surrogate["evaluation"]["map"] == surrogate["map"]
    # The stock Trainer's methods on the datasets a detection user has.
    assert "eval_map_50" in resumed.evaluate(pool.select(range(8)))
    unlabeled_images = test.remove_columns("objects")
    predictions = resumed.predict(unlabeled_images)
    assert predictions.label_ids is None
    detector = pipeline("object-detection", model=str(run / "fused"))
    found = detector(test[0]["image"], threshold=0.0)
    assert found and {d["label"] for d in found} <= {"0", "1", "2"}
    assert set(found[0]["box"]) == {"xmin", "ymin", "xmax", "ymax"}
    # The fused model's card speaks of a detector and its mAP, and its snippet runs as printed.
    card = (run / "fused" / "README.md").read_text()
    front_matter = yaml.safe_load(card.split("---\n")[1])
    assert front_matter["pipeline_tag"] == "object-detection" and "object-detection" in front_matter["tags"]
    assert "DetrForObjectDetection object detector" in card and "surrogate mAP" in card
    assert f"It reaches a COCO mAP (IoU 0.50:0.95) of **{result.metrics['map']:.4f}**" in card
    code = card.split("## How to use")[1].split("```python\n")[1].split("```")[0]
    assert 'pipeline("object-detection", model="path/to/fused")' in code
    test[0]["image"].save(tmp_path / "image.png")
    output = io.StringIO()
    with contextlib.chdir(tmp_path), contextlib.redirect_stdout(output):
        exec(code.replace("threshold=0.5", "threshold=0.0").replace("path/to/fused", str(run / "fused")), {})
    assert output.getvalue().split()[0] in {"0", "1", "2"}


@pytest.mark.slow  # about 30 s on 2 cores
def test_an_rt_detr_run_prunes_trains_its_surrogate_with_its_own_loss_and_selects(tmp_path, pools):
    pool, test = pools
    dense = detection_model("rt_detr")
    trainer = PruneFuseTrainer(dense, args=config(tmp_path, initial_labeled_size=8), train_dataset=pool,
                               eval_dataset=test, callbacks=[StopAfterSelection()])  # fmt: skip
    assert type(trainer.processing_class).__name__ == "RTDetrImageProcessorPil"
    trainer.train()
    run = tmp_path / "run"
    state = json.loads((run / "state.json").read_text())
    assert state["completed"][-1] == "select:1"
    first, query = state["queries"]["1"]["pool_indices"], state["queries"]["2"]["pool_indices"]
    assert len(query) == 8 and not set(query) & set(first)
    surrogate = load_surrogate(run / "surrogate")
    assert type(surrogate).__name__ == "RTDetrForObjectDetection" and surrogate.config.d_model == 16
    # Trained on the labeled images: the surrogate left the dense initial weights at its kept indices.
    plan = PruningPlan.from_pretrained(run / "surrogate")
    dense_init = DETECTION.model_class().from_pretrained(run / "dense_init").state_dict()
    trained = surrogate.state_dict()
    assert any(not torch.equal(dense_init[name][plan.index(name)], trained[name]) for name in trained)


def test_rt_detr_v2_built_from_a_config_gets_the_rt_detr_image_processor():
    processor = task_image_processor(detection_config("rt_detr_v2"), 48, None)
    assert type(processor).__name__ == "RTDetrImageProcessorPil" and processor.size == {
        "height": 48,
        "width": 48,
    }


def _unlabeled_batch(trainer, pool, state):
    unlabeled = np.setdiff1d(np.arange(len(pool)), state["queries"]["1"]["pool_indices"])
    prepared = trainer.examples.prepared(pool.select(unlabeled), with_annotations=False)
    return unlabeled, DETECTION.collate([prepared[i] for i in range(len(prepared))])


def test_badge_and_cluster_margin_select_on_the_class_heads_gradients_and_the_decoder_queries(
    tmp_path, pools
):
    pool, _ = pools
    # The run's BADGE query, then cluster_margin on the run's scoring of the same surrogate (margin per image,
    # pooled decoder queries), each against the strategy on outputs computed here.
    trainer = PruneFuseTrainer(tiny_detr(), args=config(tmp_path, strategy="badge", selection_seed=5),
                               train_dataset=pool, callbacks=[StopAfterSelection()])  # fmt: skip
    trainer.train()
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    surrogate = load_surrogate(tmp_path / "run" / "surrogate").eval()
    unlabeled, batch = _unlabeled_batch(trainer, pool, state)
    with torch.no_grad(), HeadCalls(surrogate) as calls:
        outputs = surrogate(**batch)
        layer, head_input, head_output = calls.producing_call(outputs.logits)
    assert layer is surrogate.class_labels_classifier and head_output.shape[-1] == 3 + 1  # "no object" too
    embeddings = detection_gradient_embeddings(head_input, head_output, num_labels=3)
    expected = get_strategy("badge").select(8, pool_indices=unlabeled, embeddings=embeddings, seed=5 + 1)
    assert state["queries"]["2"]["pool_indices"] == expected.indices.tolist()

    margins = detection_image_scores(outputs, "margin", num_labels=3, threshold=0.0)
    expected = get_strategy("cluster_margin").select(
        8, pool_indices=unlabeled, scores=margins, features=DETECTION.pooled_features(outputs), seed=5 + 1
    )
    chosen = get_strategy("cluster_margin").select(
        8, seed=5 + 1, **{name: getattr(trainer.examples.score(surrogate, unlabeled, ("features", "scores"),
                                                               args=trainer.args, accelerator=trainer.accelerator,
                                                               measure="margin"), name)
                          for name in ("pool_indices", "scores", "features")},
    )  # fmt: skip
    assert chosen.indices.tolist() == expected.indices.tolist()


class StopAfterFirstStep(TrainerCallback):
    def on_log(self, args, state, control, logs=None, **kwargs):
        control.should_training_stop = True


def test_typiclust_draws_the_first_query_from_the_detectors_pooled_queries(tmp_path, pools):
    pool, _ = pools
    args = config(tmp_path, initial_strategy="typiclust", selection_seed=0)
    trainer = PruneFuseTrainer(tiny_detr(), args=args, train_dataset=pool, callbacks=[StopAfterFirstStep()])
    trainer.train()
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    dense = DETECTION.model_class().from_pretrained(tmp_path / "run" / "dense_init").eval()
    prepared = trainer.examples.prepared(pool, with_annotations=False)
    with torch.no_grad():
        features = DETECTION.pooled_features(
            dense(**DETECTION.collate([prepared[i] for i in range(len(pool))]))
        )
    expected = typiclust_select(12, pool_indices=np.arange(len(pool)), features=features.numpy(), seed=0)
    assert state["queries"]["1"]["strategy"] == "typiclust"
    assert state["queries"]["1"]["pool_indices"] == expected.indices.tolist()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"strategy": "bald"},
            "Strategy 'bald' needs ['mc_scores'] per image, which an object-detection run does not compute; an "
            "object-detection run selects with badge, cluster_margin, entropy, kcenter_greedy, least_confidence, "
            "margin, random.",
        ),
        ({"distill_alpha": 0.3}, "distill_alpha: 0.3 is for image classification runs"),
        ({"selector": "linear_probe", "method": "feature_proxy", "pruning_ratio": 0.0}, "selector"),
    ],
)
def test_classification_only_settings_are_refused_before_any_work(tmp_path, pools, overrides, message):
    with pytest.raises(ValueError, match=re.escape(message) if message.endswith(".") else message):
        PruneFuseTrainer(tiny_detr(), args=config(tmp_path, **overrides), train_dataset=pools[0])
    assert not (tmp_path / "run").exists()


def test_a_box_outside_its_image_is_named_before_any_work(tmp_path, pools):
    pool = pools[0]

    def widen(row, index):
        if index == 5:
            row["objects"] = {
                **row["objects"],
                "bbox": [[40.0, 40.0, 30.0, 30.0]] * len(row["objects"]["bbox"]),
            }
        return row

    broken = pool.map(widen, with_indices=True)
    with pytest.raises(ValueError, match="5"):
        PruneFuseTrainer(tiny_detr(), args=config(tmp_path), train_dataset=broken)
    assert not (tmp_path / "run").exists()


def test_task_must_match_the_model(tmp_path, pools):
    from transformers import ResNetConfig

    with pytest.raises(ValueError, match="AutoModelForObjectDetection"):
        PruneFuseTrainer(
            ResNetConfig(), args=config(tmp_path, task="object-detection"), train_dataset=pools[0]
        )


def test_resuming_with_another_detection_setting_is_refused_by_name(tmp_path, pools):
    pool = pools[0]
    PruneFuseTrainer(
        tiny_detr(), args=config(tmp_path), train_dataset=pool, callbacks=[StopAfterFirstStep()]
    ).train()
    changed = PruneFuseTrainer(
        tiny_detr(), args=config(tmp_path, detection_aggregation="sum"), train_dataset=pool
    )
    with pytest.raises(ValueError, match="detection_aggregation: the run has 'max', now 'sum'"):
        changed.train(resume_from_checkpoint=True)
