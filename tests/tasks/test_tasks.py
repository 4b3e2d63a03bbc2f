import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForImageClassification,
    AutoModelForObjectDetection,
    BertConfig,
    ConditionalDetrConfig,
    DetrConfig,
    DetrForObjectDetection,
    ResNetConfig,
    ResNetForImageClassification,
    YolosConfig,
)

import prunefuse_hf
from prunefuse_hf.data.labels import resolve_class_names
from prunefuse_hf.data.loading import validate_image_dataset
from prunefuse_hf.data.preprocessing import ImagePreprocessor
from prunefuse_hf.selection.strategies import get_strategy
from prunefuse_hf.tasks import (
    CLASSIFICATION,
    DETECTION,
    TASKS,
    classification_image_scores,
    get_task,
    task_for_model,
)


def detr_config(**kwargs):
    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], out_features=["stage2"])
    return DetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=backbone, **kwargs
    )


def test_get_task_by_pipeline_name():
    assert get_task("image-classification") is CLASSIFICATION
    assert get_task("object-detection") is DETECTION
    assert get_task(DETECTION) is DETECTION
    assert set(TASKS) == {"image-classification", "object-detection", "image-segmentation"}
    with pytest.raises(ValueError, match=r"Unknown task 'detection'.*'object-detection'"):
        get_task("detection")


def test_model_classes_are_the_auto_classes():
    assert CLASSIFICATION.model_class() is AutoModelForImageClassification
    assert DETECTION.model_class() is AutoModelForObjectDetection
    assert "detr" in DETECTION.model_types() and "resnet" in CLASSIFICATION.model_types()


@pytest.mark.parametrize(
    "source, expected",
    [
        (ResNetConfig(num_labels=3), "image-classification"),
        (detr_config(), "object-detection"),
        (ConditionalDetrConfig(use_timm_backbone=False, backbone_config=ResNetConfig()), "object-detection"),
        (YolosConfig(), "object-detection"),
        (DetrForObjectDetection, "object-detection"),
        (ResNetForImageClassification, "image-classification"),
    ],
)
def test_task_inferred_from_config_or_class(source, expected):
    assert task_for_model(source).name == expected


def test_task_inferred_from_model_instances_and_architectures():
    detr = DetrForObjectDetection(detr_config(d_model=16, encoder_layers=1, decoder_layers=1, num_queries=4,
                                              encoder_ffn_dim=16, decoder_ffn_dim=16))  # fmt: skip
    resnet = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8], depths=[1]))
    assert task_for_model(detr) is DETECTION
    assert task_for_model(resnet) is CLASSIFICATION
    # A saved config names its architecture: that wins over the model type.
    config = ResNetConfig(architectures=["DetrForObjectDetection"])
    assert task_for_model(config) is DETECTION


def test_task_inference_refuses_unknown_models():
    with pytest.raises(ValueError, match=r"No task handles model type 'bert'.*Set `task`"):
        task_for_model(BertConfig())


def test_task_inference_refuses_ambiguous_model_types(monkeypatch):
    # A model type two tasks claim (as MobileNetV2 is in classification and segmentation) needs `task`.
    twin = dataclasses.replace(CLASSIFICATION, name="image-twin")
    monkeypatch.setitem(TASKS, "image-twin", twin)
    with pytest.raises(ValueError, match=r"serves several tasks.*image-twin.*set `task`"):
        task_for_model(ResNetConfig())


def test_task_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DETECTION.name = "other"
    with pytest.raises(TypeError):
        DETECTION.training_arguments["remove_unused_columns"] = True
    assert DETECTION.training_arguments["remove_unused_columns"] is False


def test_classification_points_at_the_existing_functions():
    assert CLASSIFICATION.validate is validate_image_dataset
    assert CLASSIFICATION.class_names is resolve_class_names
    assert CLASSIFICATION.prepare is ImagePreprocessor
    assert CLASSIFICATION.columns == ("image", "label")
    assert CLASSIFICATION.metric_names[0] == CLASSIFICATION.card_metric == "accuracy"
    assert CLASSIFICATION.label_studio_tag == "Choices"
    assert DETECTION.label_studio_tag == "RectangleLabels"
    assert DETECTION.card_metric == "map"


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_says_what_its_cards_call_its_models(name):
    # The card code reads this and never the task's name: a new task writes its card text in its own module.
    task = get_task(name)
    card = task.card
    snippet = card.quickstart("me/model", num_channels=3, labels=["cat", "dog"])
    assert f'{card.variable} = pipeline("{task.name}", model="me/model")' in snippet
    assert task.distills is (task is CLASSIFICATION)
    assert card.loss == ("plain cross-entropy" if task is CLASSIFICATION else "the model's own loss")
    assert card.metric_phrase.endswith(card.metric_name) or card.metric_name == "mAP"


def test_a_one_channel_classifier_card_loads_the_model_without_pipeline():
    # pipeline() feeds RGB, which a one-channel model cannot take: the snippet converts to gray itself.
    snippet = CLASSIFICATION.card.quickstart("me/gray", num_channels=1, labels=["cat"])
    assert "pipeline" not in snippet.split("#")[0] and 'Image.open("image.png").convert("L")' in snippet
    assert 'AutoModelForImageClassification.from_pretrained("me/gray")' in snippet
    assert snippet.endswith(
        'print(model.config.id2label[logits.argmax(-1).item()])  # a class name, e.g. "cat"'
    )


@pytest.mark.parametrize("measure", ["least_confidence", "entropy", "margin"])
def test_classification_scores_are_the_strategies_scores(measure):
    logits = torch.randn(6, 4)
    expected = get_strategy(measure).compute_scores(torch.softmax(logits, -1).numpy())
    np.testing.assert_allclose(classification_image_scores(logits, measure).numpy(), expected, rtol=1e-6)


def test_classification_scores_refuse_strategies_that_need_more_than_probs():
    with pytest.raises(ValueError, match="kcenter_greedy"):
        classification_image_scores(torch.randn(2, 3), "kcenter_greedy")


def test_lower_packages_never_import_tasks():
    root = Path(prunefuse_hf.__file__).parent
    pattern = re.compile(r"^\s*(from\s+(\.\.|prunefuse_hf\.)tasks|import\s+prunefuse_hf\.tasks)", re.M)
    for package in ("data", "pruning", "selection", "annotation", "utils", "metrics"):
        for file in (root / package).rglob("*.py"):
            assert not pattern.search(file.read_text()), f"{file} imports tasks/"


# Examples that need nothing outside the test (the Task and synthetic pool examples read Fashion-MNIST).
SELF_CONTAINED_EXAMPLES = [
    "prunefuse_hf.tasks",
    "prunefuse_hf.tasks.get_task",
    "prunefuse_hf.tasks.task_for_model",
    "prunefuse_hf.tasks.detection.prepare_detection",
    "prunefuse_hf.tasks.detection_data.convert_bbox",
    "prunefuse_hf.tasks.detection_data.validate_detection_dataset",
    "prunefuse_hf.tasks.detection_metrics.mean_average_precision",
    "prunefuse_hf.tasks.segmentation.segmentation_image_scores",
    "prunefuse_hf.selection.gradient_embedding.last_layer_gradients",
    "prunefuse_hf.selection.gradient_embedding.HeadCalls",
    "prunefuse_hf.trainer.task_examples.annotated_outputs",
]


@pytest.mark.parametrize("qualified_name", SELF_CONTAINED_EXAMPLES)
def test_examples_run(qualified_name):
    import doctest
    import importlib
    import inspect

    try:
        module = obj = importlib.import_module(qualified_name)
    except ImportError:
        module_name, name = qualified_name.rsplit(".", 1)
        module = importlib.import_module(module_name)
        obj = getattr(module, name)
    doc = "\n".join(
        "" if line.strip().startswith("```") else line for line in inspect.getdoc(obj).splitlines()
    )
    test = doctest.DocTestParser().get_doctest(doc, dict(vars(module)), qualified_name, None, 0)
    assert test.examples
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    assert runner.failures == 0, qualified_name
