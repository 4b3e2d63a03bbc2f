"""The semantic-segmentation task: data checks, preparation, per-pixel scores, pooled features, mean IoU, the
synthetic pool, and a stock `transformers.Trainer` step through the task on tiny models built from config."""

import io
import json
import math

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from transformers import (
    MobileNetV2ForSemanticSegmentation,
    MobileNetV2ImageProcessorPil,
    SegformerConfig,
    SegformerForSemanticSegmentation,
    SegformerImageProcessorPil,
    Trainer,
    TrainingArguments,
    UperNetConfig,
    ViTImageProcessorPil,
)
from transformers.trainer_utils import EvalPrediction

from conftest import SEGMENTATION_NUM_LABELS, SEGMENTATION_TINY_CONFIGS, segmentation_model
from prunefuse_hf.selection import HeadCalls
from prunefuse_hf.tasks import (
    CLASSIFICATION,
    SEGMENTATION,
    collate_segmentation,
    get_task,
    load_segmentation_dataset,
    mean_iou,
    open_mask,
    prepare_segmentation,
    read_id2label,
    reduce_mask_labels,
    segmentation_class_names,
    segmentation_compute_metrics,
    segmentation_gradient_embeddings,
    segmentation_image_scores,
    segmentation_pooled_features,
    segmentation_preprocess_logits,
    synthetic_segmentation_pool,
    task_for_model,
    validate_segmentation_dataset,
)
from prunefuse_hf.tasks.segmentation_metrics import confusion_matrix

CLASSES = ["sky", "road", "car"]


def mask_image(array):
    return PIL.Image.fromarray(np.asarray(array, dtype=np.uint8))


def segmentation_dataset(masks, sizes=None):
    """Rows of gray images (default 4x2) with the given masks (arrays, PIL images or raw values)."""
    sizes = sizes or [(4, 2)] * len(masks)
    rows = {
        "image": [PIL.Image.new("RGB", size, (60, 60, 60)) for size in sizes],
        "label": [mask_image(m) if isinstance(m, (list, np.ndarray)) else m for m in masks],
    }
    return datasets.Dataset.from_dict(
        rows, features=datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    )


GOOD_MASK = [[0, 1, 2, 255], [0, 0, 1, 1]]


def items_dataset(num=12, num_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(num):
        pixels = np.zeros((28, 28), dtype=np.uint8)
        pixels[6:22, 8:20] = rng.integers(120, 255)
        images.append(pixels)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=num_classes)}
    )
    return datasets.Dataset.from_dict(
        {"image": images, "label": [i % num_classes for i in range(num)]}, features
    )


# ----- masks and class names -----


def test_valid_dataset_passes_and_names_come_from_the_arguments():
    dataset = segmentation_dataset([GOOD_MASK, [[2, 2, 2, 2], [1, 1, 1, 1]]])
    assert validate_segmentation_dataset(dataset, class_names=CLASSES) is dataset
    assert segmentation_class_names(dataset, "label", CLASSES) == CLASSES
    assert segmentation_class_names(dataset, "label", {"2": "car", "0": "sky", "1": "road"}) == CLASSES


def test_reduce_labels_allows_the_background_and_one_more_id():
    # ADE20k style: 0 = background (not a class), 1..3 the three classes.
    dataset = segmentation_dataset([[[0, 1, 2, 3], [3, 3, 0, 255]]])
    assert validate_segmentation_dataset(dataset, class_names=CLASSES, reduce_labels=True) is dataset
    with pytest.raises(
        ValueError, match=r"class ids 3 are outside the classes \(the 3 class names give ids 0..2"
    ):
        validate_segmentation_dataset(dataset, class_names=CLASSES)
    assert reduce_mask_labels(np.array([0, 1, 3, 255])).tolist() == [255, 0, 2, 255]


def rgb_mask():
    colors = np.zeros((2, 4, 3), dtype=np.uint8)
    colors[:, :2] = (255, 0, 0)
    return PIL.Image.fromarray(colors)


def stored(image) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


@pytest.mark.parametrize(
    "bad, message",
    [
        (
            lambda: stored(mask_image(np.zeros((3, 4)))),
            "pool index 1: the mask is 4x3 but its image is 4x2; give the image a mask of its own size",
        ),
        (
            lambda: stored(mask_image([[0, 1, 7, 9], [0, 0, 0, 0]])),
            "pool index 1: class ids 7, 9 are outside the classes (the 3 class names give ids 0..2, 255 is ignored); "
            "add the classes to class_names, map those pixels to a class or to the ignore index",
        ),
        (
            lambda: stored(rgb_mask()),
            "pool index 1: the mask is an RGB color image (e.g. color (255, 0, 0)) and no palette says which class "
            "each color is; pass `palette`",
        ),
        (
            lambda: {"bytes": b"not a png", "path": "masks/b.png"},
            "pool index 1: the mask (masks/b.png) cannot be decoded (",
        ),
        (lambda: None, "pool index 1: no mask (the value is None); give the image its mask, or drop the row"),
    ],
    ids=["size", "class-id", "rgb-without-palette", "undecodable", "missing"],
)
def test_refusals_name_pool_index_value_and_fix(bad, message):
    image = stored(PIL.Image.new("RGB", (4, 2)))
    rows = [{"image": image, "label": stored(mask_image(GOOD_MASK))}, {"image": image, "label": bad()}]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    dataset = datasets.Dataset.from_list(rows, features=features)
    with pytest.raises(ValueError) as error:
        validate_segmentation_dataset(dataset, class_names=CLASSES)
    text = str(error.value)
    assert text.startswith("1 of 2 masks are invalid: ") and message in text, text
    assert text.endswith("Fix or drop these rows before the run.")


def test_many_bad_rows_are_counted_and_the_first_listed():
    dataset = segmentation_dataset([[[5, 0, 0, 0], [0, 0, 0, 0]]] * 8)
    with pytest.raises(ValueError, match=r"8 of 8 masks.*pool index 0.*pool index 4.*\(and 3 more\)"):
        validate_segmentation_dataset(dataset, class_names=CLASSES)


def test_missing_columns_and_unknown_names_are_refused_with_the_fix():
    dataset = segmentation_dataset([GOOD_MASK]).rename_column("label", "annotation")
    with pytest.raises(
        ValueError, match=r"no column 'label'.*\['image', 'annotation'\].*`annotation`.*`mask_column`"
    ):
        validate_segmentation_dataset(dataset, class_names=CLASSES)
    assert validate_segmentation_dataset(dataset, mask_column="annotation", class_names=CLASSES) is dataset
    with pytest.raises(ValueError, match=r"no column 'pixels'.*`image_column`"):
        validate_segmentation_dataset(
            dataset, image_column="pixels", mask_column="annotation", class_names=CLASSES
        )
    with pytest.raises(
        ValueError, match=r"class names of this segmentation dataset are unknown.*Pass class_names"
    ):
        validate_segmentation_dataset(dataset, mask_column="annotation")
    with pytest.raises(ValueError, match=r"ids must be 0..1 without gaps; missing \[1\]"):
        read_id2label({"0": "a", "2": "b"})
    with pytest.raises(ValueError, match="256 classes"):
        segmentation_class_names(dataset, "annotation", [str(i) for i in range(256)])


def test_masks_are_read_as_ids_never_colors():
    ids = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    palette_image = PIL.Image.fromarray(ids, mode="L").convert("P")
    palette_image.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [200, 200, 200] * 253)
    assert open_mask(palette_image).tolist() == ids.tolist()  # VOC: the palette index is the class id
    gray_rgb = PIL.Image.fromarray(np.stack([ids] * 3, -1))
    assert open_mask(gray_rgb).tolist() == ids.tolist()
    colors = np.array([[[0, 0, 0], [250, 0, 0]]], dtype=np.uint8)
    assert open_mask(colors, palette=[(0, 0, 0), (250, 0, 0)]).tolist() == [[0, 1]]
    assert open_mask(colors, palette={(250, 0, 0): 2, (0, 0, 0): 0}).tolist() == [[0, 2]]
    with pytest.raises(ValueError, match=r"color \(250, 0, 0\) is not in the palette; add it to `palette`"):
        open_mask(colors, palette=[(0, 0, 0)], pool_index=3)
    sixteen = PIL.Image.fromarray(np.array([[0, 3]], dtype=np.uint16))
    assert open_mask(sixteen).tolist() == [[0, 3]]


def test_rgb_masks_validate_with_a_palette():
    dataset = segmentation_dataset([rgb_mask()])
    assert (
        validate_segmentation_dataset(dataset, class_names=CLASSES, palette=[(0, 0, 0), (255, 0, 0)])
        is dataset
    )


# ----- loading -----


def test_image_folder_with_masks_and_id2label_json(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for name, value in (("a", 1), ("b", 2)):
        PIL.Image.new("RGB", (4, 2)).save(tmp_path / "images" / f"{name}.jpg")
        mask_image(np.full((2, 4), value)).save(tmp_path / "masks" / f"{name}.png")
    (tmp_path / "id2label.json").write_text(json.dumps({str(i): n for i, n in enumerate(CLASSES)}))
    dataset = load_segmentation_dataset(str(tmp_path))
    assert dataset["file_name"] == ["a.jpg", "b.jpg"]
    assert np.asarray(dataset[1]["label"]).tolist() == [[2] * 4] * 2
    assert segmentation_class_names(dataset) == CLASSES
    PIL.Image.new("RGB", (4, 2)).save(tmp_path / "images" / "c.jpg")
    with pytest.raises(
        ValueError, match=r"1 of 3 images .* have no mask .*\['c.jpg'\]\); add a mask of the same"
    ):
        load_segmentation_dataset(str(tmp_path))


def test_saved_dataset_reads_id2label_beside_it_and_validates(tmp_path):
    good = tmp_path / "good"
    segmentation_dataset([GOOD_MASK]).save_to_disk(str(good))
    (good / "id2label.json").write_text(json.dumps(CLASSES))
    loaded = load_segmentation_dataset(str(good))
    assert loaded.num_rows == 1 and segmentation_class_names(loaded) == CLASSES
    bad = tmp_path / "bad"
    segmentation_dataset([[[0, 0, 0, 0], [0, 0, 0, 4]]]).save_to_disk(str(bad))
    with pytest.raises(ValueError, match="pool index 0: class ids 4 are outside"):
        load_segmentation_dataset(str(bad), class_names=CLASSES)


# ----- preparation and collate -----


def test_prepare_gives_the_model_inputs_and_applies_reduce_labels():
    dataset = segmentation_dataset([[[0, 1, 2, 3], [3, 3, 0, 255]]])
    plain = prepare_segmentation(SegformerImageProcessorPil(size={"height": 2, "width": 4}))(dataset[:1])
    assert plain["labels"][0].tolist() == [[0, 1, 2, 3], [3, 3, 0, 255]]
    assert tuple(plain["pixel_values"][0].shape) == (3, 2, 4)
    # The processor's do_reduce_labels is the default, applied once, with the processors' rule.
    reducing = SegformerImageProcessorPil(size={"height": 2, "width": 4}, do_reduce_labels=True)
    reduced = prepare_segmentation(reducing)(dataset[:1])
    assert reduced["labels"][0].tolist() == [[255, 0, 1, 2], [2, 2, 255, 255]]
    explicit = prepare_segmentation(
        SegformerImageProcessorPil(size={"height": 2, "width": 4}), reduce_labels=True
    )
    assert explicit(dataset[:1])["labels"][0].tolist() == reduced["labels"][0].tolist()
    # Masks resize with nearest-neighbor: only ids that were there.
    upsized = prepare_segmentation(SegformerImageProcessorPil(size={"height": 8, "width": 8}))(dataset[:1])
    assert set(upsized["labels"][0].unique().tolist()) == {0, 1, 2, 3, 255}


def test_prepare_unlabeled_pools_and_refuse_processors_without_masks():
    transform = prepare_segmentation(SegformerImageProcessorPil(size={"height": 8, "width": 8}))
    unlabeled = transform({"image": [PIL.Image.new("L", (5, 5))]})
    assert list(unlabeled) == ["pixel_values"] and tuple(unlabeled["pixel_values"][0].shape) == (3, 8, 8)
    with pytest.raises(
        ValueError, match=r"ViTImageProcessorPil takes no `segmentation_maps`.*SegformerImageProcessorPil"
    ):
        prepare_segmentation(ViTImageProcessorPil())


def test_collate_pads_pixels_and_labels_with_the_ignore_index():
    examples = [
        {"pixel_values": torch.ones(3, 2, 4), "labels": torch.zeros(2, 4, dtype=torch.long), "pool_index": 5},
        {"pixel_values": torch.ones(3, 3, 3), "labels": torch.ones(3, 3, dtype=torch.long), "pool_index": 9},
    ]
    batch = collate_segmentation(examples)
    assert tuple(batch["pixel_values"].shape) == (2, 3, 3, 4) and tuple(batch["labels"].shape) == (2, 3, 4)
    assert batch["labels"][0, 2].tolist() == [255] * 4 and batch["labels"][1, :, 3].tolist() == [255] * 3
    assert batch["pixel_values"][0, :, 2].abs().sum() == 0
    assert batch["pool_index"].tolist() == [5, 9]


TRAINER_MODELS = {
    "SegformerForSemanticSegmentation": lambda: SegformerImageProcessorPil(size={"height": 32, "width": 32}),
    # UperNet checkpoints ship SegFormer's processor.
    "UperNetForSemanticSegmentation/convnext": lambda: SegformerImageProcessorPil(
        size={"height": 32, "width": 32}
    ),
    "MobileNetV2ForSemanticSegmentation": lambda: MobileNetV2ImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ),
}


@pytest.mark.parametrize("key", list(TRAINER_MODELS))
def test_the_stock_trainer_trains_and_evaluates_a_segmenter_through_the_task(key, tmp_path):
    pool = synthetic_segmentation_pool(8, items=items_dataset(), image_size=40, scales=(16, 24), seed=0)
    names = SEGMENTATION.class_names(pool)
    assert names == ["background", "0", "1", "2"]
    SEGMENTATION.validate(pool)
    image_processor = TRAINER_MODELS[key]()
    prepared = pool.with_transform(SEGMENTATION.prepare(image_processor))
    batch = SEGMENTATION.collate([prepared[i] for i in range(2)])
    assert tuple(batch["pixel_values"].shape) == (2, 3, 32, 32) and batch["labels"].dtype == torch.long
    model = segmentation_model(key, num_labels=len(names)).train()
    assert task_for_model(model) is SEGMENTATION
    before = [p.detach().clone() for p in model.parameters()]
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, per_device_eval_batch_size=4, max_steps=1,
        learning_rate=1e-2, report_to=[], use_cpu=True, save_strategy="no", **SEGMENTATION.training_arguments,
    )  # fmt: skip
    trainer = Trainer(
        model=model, args=args, train_dataset=prepared, eval_dataset=prepared, data_collator=SEGMENTATION.collate,
        compute_metrics=SEGMENTATION.compute_metrics(image_processor, class_names=names),
    )  # fmt: skip
    trainer.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    metrics = trainer.evaluate()
    assert {"eval_mean_iou", "eval_overall_accuracy", "eval_iou_background", "eval_accuracy_2"} <= set(
        metrics
    )
    assert 0.0 <= metrics["eval_mean_iou"] <= 1.0


# ----- acquisition scores and features -----


def logits_of(probs):
    """Logits `[B, C, H, W]` whose softmax over C is `probs` given as `[B, H, W, C]`."""
    return torch.log(torch.tensor(probs, dtype=torch.float64)).permute(0, 3, 1, 2).float()


def test_a_certain_pixel_scores_zero_and_a_uniform_one_the_maximum():
    classes = 4
    certain = logits_of([[[[1.0, 0.0, 0.0, 0.0]] * 2] * 2])
    uniform = torch.zeros(1, classes, 2, 2)
    maximum = {"least_confidence": 1 - 1 / classes, "entropy": np.log(classes), "margin": 1.0}
    for measure, expected in maximum.items():
        for aggregation in ("mean", "max", "class_weighted"):
            assert segmentation_image_scores(certain, measure, aggregation=aggregation).item() == 0.0
            score = segmentation_image_scores(uniform, measure, aggregation=aggregation)
            assert score.item() == pytest.approx(expected, abs=1e-6) and score.dtype == torch.float32


def test_aggregations_known_values():
    # Pixels (least confidence): a certain (0), b tie of classes 0 and 1 (0.5), c class 1 (0.3), d class 2 (0.4).
    probs = [[[[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]], [[0.2, 0.7, 0.1], [0.2, 0.2, 0.6]]]]
    logits = logits_of(probs)

    def score(**options):
        return segmentation_image_scores(logits, "least_confidence", **options).item()

    assert score(aggregation="mean") == pytest.approx((0 + 0.5 + 0.3 + 0.4) / 4, abs=1e-6)
    assert score(aggregation="max") == pytest.approx(0.5, abs=1e-6)
    # Classes predicted: 0 on a and b (mean 0.25), 1 on c (0.3), 2 on d (0.4).
    assert score(aggregation="class_weighted") == pytest.approx((0.25 + 0.3 + 0.4) / 3, abs=1e-6)
    weighted = score(aggregation="class_weighted", class_weights=[1.0, 0.0, 3.0])
    assert weighted == pytest.approx((0.25 + 3 * 0.4) / 4, abs=1e-6)
    ignore = torch.tensor([[[False, True], [False, False]]])
    assert score(aggregation="mean", ignore_mask=ignore) == pytest.approx(0.7 / 3, abs=1e-6)
    assert score(aggregation="max", ignore_mask=ignore) == pytest.approx(0.4, abs=1e-6)
    assert score(ignore_mask=torch.ones(1, 2, 2, dtype=torch.bool)) == 0.0
    # An ignore mask at label resolution is resized (nearest) to the logits'.
    assert score(ignore_mask=ignore.repeat_interleave(2, 1).repeat_interleave(2, 2)) == pytest.approx(
        0.7 / 3, abs=1e-6
    )
    margin = segmentation_image_scores(logits, "margin", aggregation="max").item()
    assert margin == pytest.approx(1.0, abs=1e-6)  # the tie of b
    entropy = segmentation_image_scores(logits, "entropy", aggregation="mean").item()
    terms = [
        0.0,
        np.log(2),
        -sum(p * np.log(p) for p in (0.2, 0.7, 0.1)),
        -sum(p * np.log(p) for p in (0.2, 0.2, 0.6)),
    ]
    assert entropy == pytest.approx(np.mean(terms), abs=1e-6)


def test_scores_at_the_target_size_and_refusals():
    logits = torch.randn(2, 3, 4, 4)
    native = segmentation_image_scores(logits, "entropy")
    upsampled = segmentation_image_scores(logits, "entropy", target_size=(16, 16))
    assert native.shape == upsampled.shape == (2,) and not torch.equal(native, upsampled)
    with pytest.raises(ValueError, match="aggregation must be one of"):
        segmentation_image_scores(logits, aggregation="sum")
    with pytest.raises(ValueError, match="least_confidence, entropy, margin or bald"):
        segmentation_image_scores(logits, "kcenter_greedy")
    with pytest.raises(ValueError, match=r"must be \[batch, classes, height, width\]"):
        segmentation_image_scores(torch.randn(2, 3))
    with pytest.raises(ValueError, match="class_weights must be 3 non-negative numbers"):
        segmentation_image_scores(logits, aggregation="class_weighted", class_weights=[1, 2])


def test_scores_and_features_from_a_real_segformer():
    model = segmentation_model("SegformerForSemanticSegmentation")
    with torch.no_grad():
        outputs = model(pixel_values=torch.randn(3, 3, 32, 32), output_hidden_states=True)
    scores = SEGMENTATION.image_scores(outputs, "entropy", aggregation="max")
    assert scores.shape == (3,) and torch.isfinite(scores).all()
    features = SEGMENTATION.pooled_features(outputs)
    torch.testing.assert_close(features, outputs.hidden_states[-1].mean((2, 3)))
    assert features.shape == (3, model.config.hidden_sizes[-1])
    with pytest.raises(ValueError, match="output_hidden_states=True"):
        segmentation_pooled_features({"logits": outputs.logits})


@pytest.mark.parametrize("key", list(SEGMENTATION_TINY_CONFIGS))
def test_pooled_features_of_every_segmentation_family(key):
    model = segmentation_model(key)
    with torch.no_grad():
        outputs = model(pixel_values=torch.randn(2, 3, 32, 32), output_hidden_states=True)
    features = segmentation_pooled_features(outputs)
    last = outputs.hidden_states[-1]
    assert features.shape == (2, last.shape[1] if last.ndim == 4 else last.shape[-1])
    assert torch.isfinite(features).all() and not torch.equal(features[0], features[1])


# ----- metric -----


def evaluate_mean_iou(predictions, references, num_labels, ignore_index):
    """evaluate's mean_iou definition, written out with its histograms (the reference the confusion matrix meets)."""
    totals = np.zeros((4, num_labels))
    for pred, label in zip(predictions, references):
        keep = label != ignore_index
        pred, label = pred[keep], label[keep]
        hist = lambda v: np.histogram(v, bins=num_labels, range=(0, num_labels - 1))[0]  # noqa: E731
        intersect = hist(pred[pred == label])
        totals += [intersect, hist(pred), hist(label), hist(pred) + hist(label) - intersect]
    intersect, _, labeled, union = totals
    with np.errstate(divide="ignore", invalid="ignore"):
        return intersect / union, intersect / labeled, intersect.sum() / labeled.sum()


def test_mean_iou_known_values_with_the_ignore_index():
    labels = np.array([[0, 0, 1], [1, 2, 255]])
    predictions = np.array([[0, 1, 1], [1, 1, 0]])
    result = mean_iou(predictions, labels, num_labels=4)
    # Pairs (label, prediction): (0,0) (0,1) (1,1) (1,1) (2,1); the 255 pixel is not counted.
    np.testing.assert_allclose(result["per_category_iou"][:3], [1 / 2, 2 / 4, 0 / 1])
    np.testing.assert_allclose(result["per_category_accuracy"][:3], [1 / 2, 2 / 2, 0 / 1])
    assert np.isnan(result["per_category_iou"][3])  # neither labeled nor predicted: undefined, skipped
    assert result["mean_iou"] == pytest.approx(1 / 3) and result["mean_accuracy"] == pytest.approx(1 / 2)
    assert result["overall_accuracy"] == pytest.approx(3 / 5)
    assert mean_iou(predictions, labels, num_labels=4, nan_to_num=0)["per_category_iou"][3] == 0
    perfect = mean_iou(labels.clip(0, 2), labels, num_labels=3)
    assert perfect["mean_iou"] == perfect["overall_accuracy"] == 1.0
    reduced = mean_iou(np.array([[0, 1]]), np.array([[1, 0]]), num_labels=2, reduce_labels=True)
    assert reduced["overall_accuracy"] == 1.0  # the 0 label became 255 and the 1 label class 0


def test_mean_iou_matches_evaluates_histograms_on_random_maps():
    rng = np.random.default_rng(0)
    predictions = [rng.integers(0, 5, size=(6, 7)) for _ in range(4)]
    references = [rng.choice([0, 1, 2, 3, 4, 7, 255], size=(6, 7)) for _ in range(4)]  # 7: an id outside
    iou, accuracy, overall = evaluate_mean_iou(predictions, references, num_labels=5, ignore_index=255)
    result = mean_iou(predictions, references, num_labels=5)
    np.testing.assert_allclose(result["per_category_iou"], iou)
    np.testing.assert_allclose(result["per_category_accuracy"], accuracy)
    assert result["overall_accuracy"] == pytest.approx(overall)
    assert confusion_matrix(predictions, references, 5).sum() == sum(
        int((r != 255).sum()) for r in references
    )
    with pytest.raises(ValueError, match="upsample the logits to the label size"):
        mean_iou([np.zeros((2, 2))], [np.zeros((4, 4))], num_labels=2)


def test_compute_metrics_upsamples_logits_to_the_labels():
    labels = np.zeros((1, 4, 4), dtype=np.int64)
    labels[0, :, 2:] = 1
    labels[0, 0, 0] = 255
    logits = np.zeros((1, 2, 2, 2), dtype=np.float32)  # a quarter-resolution prediction, as SegFormer's
    logits[0, 0, :, 0] = logits[0, 1, :, 1] = 5.0
    compute = segmentation_compute_metrics(None, class_names=["bg", "fg"])
    metrics = compute(EvalPrediction(predictions=logits, label_ids=labels))
    assert metrics["mean_iou"] == 1.0 and metrics["overall_accuracy"] == 1.0
    assert metrics["iou_bg"] == metrics["accuracy_fg"] == 1.0
    ids = segmentation_preprocess_logits(torch.from_numpy(logits), torch.from_numpy(labels))
    assert ids.tolist() == [[[0, 0, 1, 1]] * 4]
    assert compute(EvalPrediction(predictions=ids.numpy(), label_ids=labels))["mean_iou"] == 1.0
    three = segmentation_compute_metrics(None, class_names=["bg", "fg", "other"])(
        EvalPrediction(
            predictions=np.concatenate([logits, np.zeros((1, 1, 2, 2), np.float32)], 1), label_ids=labels
        )
    )
    assert three["iou_other"] == -1.0 and three["mean_iou"] == 1.0  # undefined: -1, left out of the mean


# ----- synthetic pool -----


def test_synthetic_pool_masks_are_the_items_pixels():
    items = items_dataset()
    pool = synthetic_segmentation_pool(
        30, items=items, image_size=48, scales=(16, 24), image_format="png", seed=2
    )
    assert pool.num_rows == 30 and segmentation_class_names(pool) == ["background", "0", "1", "2"]
    assert validate_segmentation_dataset(pool) is pool
    for row in pool.select(range(5)):
        mask = np.asarray(row["label"])
        assert mask.shape == (48, 48) and sorted(np.unique(mask).tolist()) == row["classes"]
        assert 0 in row["classes"] and len(row["classes"]) >= 2
        pixels = np.asarray(row["image"], dtype=np.float32).mean(-1)
        assert pixels[mask > 0].mean() > pixels[mask == 0].mean() + 50  # items are brighter than the canvas
    again = synthetic_segmentation_pool(
        30, items=items, image_size=48, scales=(16, 24), image_format="png", seed=2
    )
    assert np.array_equal(np.asarray(again[3]["label"]), np.asarray(pool[3]["label"]))
    assert np.array_equal(np.asarray(again[3]["image"]), np.asarray(pool[3]["image"]))
    other = synthetic_segmentation_pool(
        30, items=items, image_size=48, scales=(16, 24), image_format="png", seed=3
    )
    assert other["classes"] != pool["classes"]
    with pytest.raises(ValueError, match="must fit"):
        synthetic_segmentation_pool(1, items=items, image_size=16, scales=(32,))


def test_synthetic_pool_with_some_item_classes():
    pool = synthetic_segmentation_pool(
        20, items=items_dataset(), item_classes=[2, 0], image_size=48, scales=(16,)
    )
    assert segmentation_class_names(pool) == ["background", "2", "0"]
    assert validate_segmentation_dataset(pool) is pool
    assert {c for row in pool["classes"] for c in row} == {0, 1, 2}
    with pytest.raises(
        ValueError, match=r"item_classes must be distinct class ids of the items \(0..2\), got \[3\]"
    ):
        synthetic_segmentation_pool(1, items=items_dataset(), item_classes=[3])


# ----- task -----


def test_the_task_by_name_and_from_models():
    assert get_task("image-segmentation") is SEGMENTATION
    assert SEGMENTATION.model_class().__name__ == "AutoModelForSemanticSegmentation"
    assert SEGMENTATION.label_studio_tag == "BrushLabels" and SEGMENTATION.card_metric == "mean_iou"
    assert SEGMENTATION.metric_names[0] == "mean_iou" and SEGMENTATION.columns == ("image", "label")
    assert task_for_model(UperNetConfig()) is SEGMENTATION
    assert task_for_model(SegformerForSemanticSegmentation) is SEGMENTATION
    assert task_for_model(MobileNetV2ForSemanticSegmentation) is SEGMENTATION
    assert task_for_model(SegformerConfig(architectures=["SegformerForSemanticSegmentation"])) is SEGMENTATION
    assert (
        task_for_model(SegformerConfig(architectures=["SegformerForImageClassification"])) is CLASSIFICATION
    )
    # A bare SegFormer (or MobileNetV2) config names no head: both tasks claim the model type.
    with pytest.raises(ValueError, match=r"'segformer' serves several tasks.*image-segmentation.*set `task`"):
        task_for_model(SegformerConfig())


SEGMENTATION_EXAMPLES = [
    "prunefuse_hf.tasks.segmentation.prepare_segmentation",
    "prunefuse_hf.tasks.segmentation.segmentation_image_scores",
    "prunefuse_hf.tasks.segmentation_masks.open_mask",
    "prunefuse_hf.tasks.segmentation_masks.reduce_mask_labels",
    "prunefuse_hf.tasks.segmentation_data.read_id2label",
    "prunefuse_hf.tasks.segmentation_data.validate_segmentation_dataset",
    "prunefuse_hf.tasks.segmentation_metrics.mean_iou",
]


@pytest.mark.parametrize("qualified_name", SEGMENTATION_EXAMPLES)
def test_segmentation_examples_run(qualified_name):
    import doctest
    import importlib
    import inspect

    module_name, name = qualified_name.rsplit(".", 1)
    module = importlib.import_module(module_name)
    doc = "\n".join(
        "" if line.strip().startswith("```") else line
        for line in inspect.getdoc(getattr(module, name)).splitlines()
    )
    test = doctest.DocTestParser().get_doctest(doc, dict(vars(module)), qualified_name, None, 0)
    assert test.examples
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    assert runner.failures == 0, qualified_name


# ----- BADGE's gradient embedding and BALD per pixel -----


def _autograd_last_layer_gradient(model, pixels, ignore=None):
    """Per image, autograd's gradient of the mean per-pixel cross-entropy with argmax labels with respect to the
    weight of the layer that gave the logits (at that layer's own resolution)."""
    gradients = []
    for row in range(len(pixels)):
        with HeadCalls(model) as calls:
            logits = model(pixel_values=pixels[row : row + 1]).logits
            layer, _, output = calls.producing_call(logits)
            labels = output.argmax(1)
            if ignore is not None:
                labels[
                    torch.nn.functional.interpolate(ignore[row : row + 1, None].float(), output.shape[-2:])[
                        :, 0
                    ]
                    > 0
                ] = 255
            loss = torch.nn.functional.cross_entropy(output, labels, ignore_index=255)
            (gradient,) = torch.autograd.grad(loss, layer.weight)
        gradients.append(gradient.reshape(-1))
    return torch.stack(gradients)


@pytest.mark.parametrize("key", list(SEGMENTATION_TINY_CONFIGS))
def test_badge_embedding_is_autograds_last_layer_gradient_of_the_argmax_pixel_loss(key):
    model = segmentation_model(key)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), HeadCalls(model) as calls:
        head_input, head_output = calls.producing(model(pixel_values=pixels).logits)
        embeddings = segmentation_gradient_embeddings(head_input, head_output)
    assert embeddings.shape == (2, SEGMENTATION_NUM_LABELS * head_input.shape[1])
    torch.testing.assert_close(embeddings, _autograd_last_layer_gradient(model, pixels), rtol=1e-4, atol=1e-7)


def test_badge_embedding_leaves_ignored_pixels_out_of_the_sum_and_the_count():
    model = segmentation_model("SegformerForSemanticSegmentation")
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ignore = torch.zeros(2, 32, 32, dtype=torch.bool)
    ignore[0, :, 16:] = True  # the right half of the first image (padding, or the ignore index)
    ignore[1] = True  # every pixel of the second
    with torch.no_grad(), HeadCalls(model) as calls:
        head = calls.producing(model(pixel_values=pixels).logits)
        embeddings = segmentation_gradient_embeddings(*head, ignore_mask=ignore)
    expected = _autograd_last_layer_gradient(model, pixels[:1], ignore[:1])
    torch.testing.assert_close(embeddings[:1], expected, rtol=1e-4, atol=1e-7)
    assert torch.equal(embeddings[1], torch.zeros_like(embeddings[1]))  # nothing counted: no gradient
    with pytest.raises(ValueError, match=r"per-pixel classifier's input \[B, D, h, w\]"):
        segmentation_gradient_embeddings(torch.zeros(2, 4), torch.zeros(2, 3))


def test_bald_per_pixel_is_the_mutual_information_of_the_passes_aggregated():
    # Two passes over 2 pixels of 2 classes: pixel 0 agrees (p = (0.5, 0.5) both times), pixel 1 flips between
    # (0.9, 0.1) and (0.1, 0.9): its mutual information is H(0.5, 0.5) - H(0.9, 0.1) = log 2 - 0.3251.
    first = torch.log(torch.tensor([[[[0.5, 0.9]], [[0.5, 0.1]]]]))  # [B=1, C=2, h=1, w=2]
    second = torch.log(torch.tensor([[[[0.5, 0.1]], [[0.5, 0.9]]]]))
    entropy = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    information = math.log(2) - entropy
    assert segmentation_image_scores(iter([first, second]), "bald").item() == pytest.approx(information / 2)
    assert segmentation_image_scores(
        iter([first, second]), "bald", aggregation="max"
    ).item() == pytest.approx(information)
    ignore = torch.tensor([[[False, True]]])
    assert segmentation_image_scores([first, second], "bald", ignore_mask=ignore).item() == 0.0
    with pytest.raises(ValueError, match="measure 'bald' scores the outputs of several MC-dropout passes"):
        segmentation_image_scores(first, "bald")
