import json
import math

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from transformers import DetrImageProcessorPil, RTDetrForObjectDetection, RTDetrImageProcessorPil
from transformers.trainer_utils import EvalPrediction

from conftest import (
    DETECTION_IMAGE_SIZE,
    DETECTION_TINY_CONFIGS,
    detection_config,
    detection_items,
    detection_model,
    tiny_detr,
)
from prunefuse_hf.selection import HeadCalls
from prunefuse_hf.tasks import (
    DETECTION,
    coco_json_from_dataset,
    collate_detection,
    convert_bbox,
    detection_class_names,
    detection_compute_metrics,
    detection_features,
    detection_gradient_embeddings,
    detection_image_scores,
    detection_pooled_features,
    detection_probs,
    load_detection_dataset,
    mean_average_precision,
    prepare_detection,
    synthetic_detection_pool,
    validate_detection_dataset,
)

CLASSES = ["cat", "dog", "bird"]


def detection_dataset(objects, sizes=None, class_names=CLASSES):
    """Rows of (bbox list, category list), on gray images of `sizes` (default 40x30)."""
    sizes = sizes or [(40, 30)] * len(objects)
    rows = {
        "image": [PIL.Image.new("RGB", size, (60, 60, 60)) for size in sizes],
        "image_id": list(range(len(objects))),
        "width": [w for w, _ in sizes],
        "height": [h for _, h in sizes],
        "objects": [
            {
                "id": list(range(len(boxes))),
                "area": [float(b[2] * b[3]) for b in boxes],
                "bbox": boxes,
                "category": categories,
            }
            for boxes, categories in objects
        ],
    }
    return datasets.Dataset.from_dict(rows, features=detection_features(class_names))


def processor(size=32):
    return DetrImageProcessorPil(size={"height": size, "width": size})


# ----- validation -----


def test_valid_dataset_with_background_images_passes():
    dataset = detection_dataset([([[1, 2, 10, 8]], [0]), ([], []), ([[0, 0, 40, 30], [5, 5, 2, 2]], [2, 1])])
    assert validate_detection_dataset(dataset) is dataset
    assert detection_class_names(dataset) == CLASSES


@pytest.mark.parametrize(
    "boxes, categories, value, fix",
    [
        ([[30, 20, 15, 5]], [0], "bbox [30.0, 20.0, 15.0, 5.0] (coco) is outside the 40x30 image", "clip it"),
        ([[-3, 0, 5, 5]], [0], "bbox [-3.0, 0.0, 5.0, 5.0] (coco) is outside", "clip it"),
        (
            [[3, 4, 0, 5]],
            [0],
            "bbox [3.0, 4.0, 0.0, 5.0] (coco) has zero area",
            "drop the box or fix its size",
        ),
        ([[3, 4, 5, 5]], [3], "category 3 is outside the 3 class names", "use a listed class id"),
    ],
)
def test_refusals_name_pool_index_value_and_fix(boxes, categories, value, fix):
    # Categories outside a ClassLabel cannot be stored as one, so those rows use plain integer categories.
    features = detection_features(CLASSES)
    features["objects"]["category"] = datasets.List(datasets.Value("int64"))
    good = {"id": [0], "area": [1.0], "bbox": [[1, 1, 2, 2]], "category": [0]}
    bad = {"id": [0], "area": [1.0], "bbox": boxes, "category": categories}
    dataset = datasets.Dataset.from_dict(
        {"image": [PIL.Image.new("RGB", (40, 30))] * 2, "image_id": [0, 1], "width": [40, 40], "height": [30, 30],
         "objects": [good, bad]}, features=features,
    )  # fmt: skip
    with pytest.raises(ValueError) as error:
        validate_detection_dataset(dataset, class_names=CLASSES)
    message = str(error.value)
    assert "1 of 2 images" in message and "pool index 1, object 0" in message
    assert value in message and fix in message


@pytest.mark.parametrize("box", [[1, 2, 3], [1, 2, 3, 4, 5], [1, 2, float("nan"), 4], "1 2 3 4"])
def test_bbox_that_is_not_four_numbers_is_refused(box):
    rows = [{"bbox": [[1, 1, 2, 2]], "category": [0]}, {"bbox": [box], "category": [0]}]
    dataset = (
        datasets.Dataset.from_dict({"image": [PIL.Image.new("RGB", (40, 30))] * 2, "objects": rows})
        if not isinstance(box, str)
        else None
    )
    if dataset is None:  # Arrow cannot mix a string with number lists: give the rows as Python objects.
        dataset = datasets.Dataset.from_list(
            [
                {
                    "image": PIL.Image.new("RGB", (40, 30)),
                    "objects": {"bbox": [["1", "2", "3", "4"]], "category": [0]},
                }
            ]
        )
        where = "pool index 0, object 0"
    else:
        where = "pool index 1, object 0"
    with pytest.raises(ValueError, match=r"is not 4 numbers; write it as \[x, y, width, height\]") as error:
        validate_detection_dataset(dataset, class_names=CLASSES)
    assert where in str(error.value)


def test_missing_objects_column_is_refused_with_the_fix():
    dataset = datasets.Dataset.from_dict({"image": [PIL.Image.new("RGB", (8, 8))], "label": [0]})
    with pytest.raises(ValueError, match=r"no column 'objects'.*\['image', 'label'\].*`objects_column`"):
        validate_detection_dataset(dataset)


def test_objects_without_bbox_and_plain_categories_without_names_are_refused():
    dataset = datasets.Dataset.from_dict(
        {"image": [PIL.Image.new("RGB", (8, 8))], "objects": [{"boxes": [[1, 1, 2, 2]]}]}
    )
    with pytest.raises(ValueError, match=r"has no \['bbox', 'category'\]"):
        validate_detection_dataset(dataset)
    dataset = datasets.Dataset.from_dict(
        {"image": [PIL.Image.new("RGB", (8, 8))], "objects": [{"bbox": [[1, 1, 2, 2]], "category": [0]}]}
    )
    with pytest.raises(ValueError, match="Pass class_names"):
        validate_detection_dataset(dataset)
    assert validate_detection_dataset(dataset, class_names=["a"]) is dataset
    with pytest.raises(ValueError, match="differ from the dataset's"):
        detection_class_names(detection_dataset([([], [])]), class_names=["x", "y", "z"])


def test_many_problems_are_counted_and_the_first_listed():
    dataset = detection_dataset([([[35, 0, 10, 10]], [0])] * 8)
    with pytest.raises(
        ValueError, match=r"8 of 8 images.*pool index 0.*pool index 4.*\(and 3 more problems\)"
    ):
        validate_detection_dataset(dataset)


def test_sizes_from_image_headers_without_width_height_columns():
    dataset = detection_dataset([([[30, 20, 15, 5]], [0])]).remove_columns(["width", "height"])
    with pytest.raises(ValueError, match="outside the 40x30 image"):
        validate_detection_dataset(dataset)


# ----- box formats -----


@pytest.mark.parametrize("fmt", ["pascal_voc", "yolo"])
def test_bbox_format_round_trips(fmt):
    rng = np.random.default_rng(0)
    boxes = np.concatenate([rng.uniform(0, 50, (20, 2)), rng.uniform(1, 30, (20, 2))], axis=1)
    converted = convert_bbox(boxes, "coco", fmt, image_size=(80, 60))
    np.testing.assert_allclose(convert_bbox(converted, fmt, "coco", image_size=(80, 60)), boxes, atol=1e-9)
    for other in ("coco", "pascal_voc", "yolo"):
        through = convert_bbox(convert_bbox(converted, fmt, other, (80, 60)), other, fmt, (80, 60))
        np.testing.assert_allclose(through, converted, atol=1e-9)


def test_bbox_formats_known_values():
    assert convert_bbox([[10, 20, 30, 40]], "coco", "pascal_voc").tolist() == [[10, 20, 40, 60]]
    assert convert_bbox([[10, 20, 30, 40]], "coco", "yolo", (100, 200)).tolist() == [[0.25, 0.2, 0.3, 0.2]]
    with pytest.raises(ValueError, match="needs the image size"):
        convert_bbox([[0, 0, 1, 1]], "yolo", "coco")
    with pytest.raises(ValueError, match="from_format must be one of"):
        convert_bbox([[0, 0, 1, 1]], "xywh", "coco")


def test_validation_reads_the_bbox_format():
    # [5, 5, 38, 28] is a valid pascal_voc box of a 40x30 image but runs off it when read as COCO.
    dataset = detection_dataset([([[5, 5, 38, 28]], [0])])
    assert validate_detection_dataset(dataset, bbox_format="pascal_voc") is dataset
    with pytest.raises(ValueError, match="outside"):
        validate_detection_dataset(dataset, bbox_format="coco")
    yolo = detection_dataset([([[0.5, 0.5, 0.2, 0.2]], [1])])
    assert validate_detection_dataset(yolo, bbox_format="yolo") is yolo


# ----- loading -----


def test_coco_json_folder_round_trip(tmp_path):
    dataset = detection_dataset([([[1, 2, 10, 8]], [0]), ([], []), ([[0, 0, 40, 30], [5, 5, 2, 2]], [2, 1])])
    coco = coco_json_from_dataset(dataset)
    # Non-contiguous COCO category ids map to class ids in id order.
    for category in coco["categories"]:
        category["id"] = 10 + 5 * category["id"]
    for annotation in coco["annotations"]:
        annotation["category_id"] = 10 + 5 * annotation["category_id"]
    for image, row in zip(coco["images"], dataset):
        row["image"].save(tmp_path / image["file_name"])
    (tmp_path / "annotations.json").write_text(json.dumps(coco))
    loaded = load_detection_dataset(str(tmp_path))
    assert detection_class_names(loaded) == CLASSES
    assert loaded["objects"][1]["bbox"] == [] and loaded["objects"][1]["category"] == []
    for original, read in zip(dataset["objects"], loaded["objects"]):
        assert read["bbox"] == original["bbox"] and read["category"] == original["category"]
    assert loaded[0]["image"].size == (40, 30)
    again = load_detection_dataset(str(tmp_path), annotations="annotations.json")
    assert again["objects"] == loaded["objects"]


def test_coco_json_unknown_category_is_refused(tmp_path):
    PIL.Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    coco = {"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 1, "name": "cat"}],
            "annotations": [{"id": 7, "image_id": 1, "category_id": 2, "bbox": [0, 0, 2, 2]}]}  # fmt: skip
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    with pytest.raises(ValueError, match=r"annotation 7 names category_id 2.*add the category"):
        load_detection_dataset(str(tmp_path))


def test_load_saved_dataset_validates(tmp_path):
    detection_dataset([([[1, 2, 10, 8]], [0])]).save_to_disk(str(tmp_path / "good"))
    assert load_detection_dataset(str(tmp_path / "good")).num_rows == 1
    detection_dataset([([[1, 2, 50, 8]], [0])]).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(ValueError, match="pool index 0, object 0"):
        load_detection_dataset(str(tmp_path / "bad"))


# ----- preparation, collate, loss -----


def test_prepare_and_collate_train_a_real_detr():
    dataset = detection_dataset(
        [([[1, 2, 10, 8]], [0]), ([], []), ([[0, 0, 40, 30], [5, 5, 2, 2]], [2, 1])],
        sizes=[(40, 30), (40, 30), (40, 30)],
    )
    prepared = dataset.with_transform(prepare_detection(processor()))
    batch = collate_detection([prepared[i] for i in range(3)])
    assert tuple(batch["pixel_values"].shape) == (3, 3, 32, 32)
    assert tuple(batch["pixel_mask"].shape) == (3, 32, 32)
    assert [label["class_labels"].tolist() for label in batch["labels"]] == [[0], [], [2, 1]]
    # Boxes become normalized [cx, cy, w, h] of the image.
    np.testing.assert_allclose(batch["labels"][2]["boxes"][0].numpy(), [0.5, 0.5, 1.0, 1.0], atol=1e-6)
    model = tiny_detr()
    before = [p.detach().clone() for p in model.parameters()]
    loss = model(**batch).loss
    assert torch.isfinite(loss)
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_the_rt_detr_processor_prepares_boxes_its_loss_trains_on_and_its_sigmoid_logits_score():
    dataset = detection_dataset(
        [([[1, 2, 10, 8]], [0]), ([[0, 0, 40, 30], [5, 5, 2, 2]], [2, 1])], sizes=[(40, 30)] * 2
    )
    prepared = dataset.with_transform(
        prepare_detection(RTDetrImageProcessorPil(size={"height": 32, "width": 32}))
    )
    batch = collate_detection([prepared[i] for i in range(2)])
    assert tuple(batch["pixel_values"].shape) == (2, 3, 32, 32)
    assert [label["class_labels"].tolist() for label in batch["labels"]] == [[0], [2, 1]]
    np.testing.assert_allclose(batch["labels"][1]["boxes"][0].numpy(), [0.5, 0.5, 1.0, 1.0], atol=1e-6)
    torch.manual_seed(0)
    model = RTDetrForObjectDetection(detection_config("rt_detr"))
    before = [p.detach().clone() for p in model.parameters()]
    loss = model(**batch).loss  # varifocal, L1 and GIoU losses with denoising queries
    assert torch.isfinite(loss)
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    model.eval()
    with torch.no_grad():
        outputs = model(pixel_values=batch["pixel_values"])
    # One sigmoid logit per class (no no-object class).
    assert outputs.logits.shape == (2, model.config.num_queries, model.config.num_labels)
    scores = DETECTION.image_scores(outputs, "least_confidence", num_labels=model.config.num_labels)
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    assert DETECTION.pooled_features(outputs).shape == (2, model.config.d_model)


def test_prepare_clips_and_converts_box_formats():
    voc = detection_dataset([([[5, 5, 40.5, 30]], [1])])  # half a pixel past the edge: tolerated, clipped
    assert validate_detection_dataset(voc, bbox_format="pascal_voc") is voc
    transform = prepare_detection(processor(), bbox_format="pascal_voc")
    example = transform(voc[:1])
    np.testing.assert_allclose(
        example["labels"][0]["boxes"][0].numpy(),
        [(5 + 40) / 2 / 40, (5 + 30) / 2 / 30, 35 / 40, 25 / 30],
        atol=1e-6,
    )


def test_collate_pads_images_of_different_sizes_and_prepares_unlabeled_pools():
    processor_keep_ratio = DetrImageProcessorPil(size={"shortest_edge": 32, "longest_edge": 64}, do_pad=False)
    dataset = detection_dataset([([[1, 2, 10, 8]], [0]), ([], [])], sizes=[(40, 30), (30, 60)])
    transform = prepare_detection(processor_keep_ratio)
    examples = [transform(dataset[i : i + 1]) for i in range(2)]
    examples = [{key: value[0] for key, value in example.items()} for example in examples]
    batch = collate_detection(examples)
    height, width = batch["pixel_values"].shape[-2:]
    assert batch["pixel_mask"].sum() < height * width * 2  # padding is masked out
    unlabeled = prepare_detection(processor())({"image": [PIL.Image.new("L", (20, 20))]})
    assert "labels" not in unlabeled and tuple(unlabeled["pixel_values"][0].shape) == (3, 32, 32)


# ----- acquisition scores and features -----


def softmax_logits(probs_per_query):
    """Logits whose softmax is the given [B, Q, C + 1] probabilities."""
    return torch.log(torch.tensor(probs_per_query, dtype=torch.float64)).float()


def test_more_uncertain_image_ranks_first():
    confident = [[0.97, 0.01, 0.01, 0.01], [0.01, 0.01, 0.01, 0.97]]
    uncertain = [[0.5, 0.3, 0.1, 0.1], [0.01, 0.01, 0.01, 0.97]]
    logits = softmax_logits([confident, uncertain])
    for measure in ("least_confidence", "entropy", "margin"):
        for aggregation in ("max", "mean", "sum"):
            scores = detection_image_scores(logits, measure, num_labels=3, aggregation=aggregation)
            assert scores[1] > scores[0], (measure, aggregation)
            assert scores.dtype == torch.float32


def test_per_detection_measures_and_aggregations_known_values():
    # Two kept detections (best real class >= 0.5) and one no-object query.
    image = [[0.8, 0.1, 0.05, 0.05], [0.6, 0.3, 0.05, 0.05], [0.05, 0.05, 0.0, 0.9]]
    logits = softmax_logits([image])
    lc = [1 - 0.8, 1 - 0.6]
    for aggregation, expected in (("max", max(lc)), ("mean", sum(lc) / 2), ("sum", sum(lc))):
        score = detection_image_scores(logits, "least_confidence", num_labels=3, aggregation=aggregation)
        assert score.item() == pytest.approx(expected, abs=1e-6)
    margin = detection_image_scores(logits, "margin", num_labels=3, aggregation="sum")
    assert margin.item() == pytest.approx((1 - (0.8 - 0.1)) + (1 - (0.6 - 0.3)), abs=1e-6)
    entropy = detection_image_scores(logits, "entropy", num_labels=3, aggregation="max")
    probs = np.array([0.6, 0.3, 0.05, 0.05])
    assert entropy.item() == pytest.approx(float(-(probs * np.log(probs)).sum()), abs=1e-5)


def test_image_without_kept_detections_falls_back_to_its_top_queries():
    nothing_sure = [[0.3, 0.1, 0.1, 0.5], [0.1, 0.1, 0.1, 0.7]]
    logits = softmax_logits([nothing_sure])
    top1 = detection_image_scores(logits, "least_confidence", num_labels=3)
    assert top1.item() == pytest.approx(1 - 0.5, abs=1e-6)  # the best query: max prob is no-object, 0.5
    top2 = detection_image_scores(
        logits, "least_confidence", num_labels=3, fallback_top_k=2, aggregation="mean"
    )
    assert top2.item() == pytest.approx((0.5 + 0.3) / 2, abs=1e-6)
    none = detection_image_scores(logits, "least_confidence", num_labels=3, fallback_top_k=0)
    assert none.item() == 0.0
    for measure in ("entropy", "margin"):
        assert detection_image_scores(logits, measure, num_labels=3, fallback_top_k=0).item() == 0.0


def test_sigmoid_heads_and_bad_arguments():
    logits = torch.tensor([[[4.0, -4.0, -4.0], [-4.0, -4.0, -4.0]], [[0.1, 0.0, -4.0], [-4.0, -4.0, -4.0]]])
    probs, scores = detection_probs(logits, num_labels=3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 2))
    torch.testing.assert_close(scores, logits.sigmoid().max(-1).values)
    ranked = detection_image_scores(logits, "entropy", num_labels=3)
    assert ranked[1] > ranked[0]
    with pytest.raises(ValueError, match="expected 5 .*or 6"):
        detection_probs(logits, num_labels=5)
    with pytest.raises(ValueError, match="aggregation must be one of"):
        detection_image_scores(logits, num_labels=3, aggregation="median")
    with pytest.raises(ValueError, match="least_confidence, entropy or margin"):
        detection_image_scores(logits, "badge", num_labels=3)


def test_scores_and_features_from_a_real_detr():
    model = tiny_detr(num_queries=6).eval()
    pixel_values = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        outputs = model(pixel_values=pixel_values)
    scores = DETECTION.image_scores(outputs, "entropy", num_labels=model.config.num_labels)
    assert scores.shape == (3,) and torch.isfinite(scores).all()
    features = DETECTION.pooled_features(outputs)
    torch.testing.assert_close(features, outputs.last_hidden_state.mean(1))
    assert features.shape == (3, model.config.d_model)
    with pytest.raises(ValueError, match="no `last_hidden_state`"):
        detection_pooled_features({"logits": outputs.logits})


@pytest.mark.parametrize("model_type", list(DETECTION_TINY_CONFIGS))
def test_badge_embedding_is_autograds_class_head_gradient_of_the_argmax_query_loss(model_type):
    # DETR and YOLOS: softmax over the classes and "no object" (cross-entropy); Conditional DETR: one sigmoid per
    # class (binary cross-entropy). Every query counts, with its argmax ("no object" included) as its label.
    model = detection_model(model_type)
    pixels = torch.randn(
        2, 3, DETECTION_IMAGE_SIZE, DETECTION_IMAGE_SIZE, generator=torch.Generator().manual_seed(0)
    )
    options = {
        "num_labels": model.config.num_labels,
        "aggregation": "max",
        "threshold": 0.5,
    }  # a run's options
    with torch.no_grad(), HeadCalls(model) as calls:
        head_input, head_output = calls.producing(model(pixel_values=pixels).logits)
        embeddings = detection_gradient_embeddings(head_input, head_output, **options)
    expected = []
    for row in range(2):
        with HeadCalls(model) as calls:
            layer, _, logits = calls.producing_call(model(pixel_values=pixels[row : row + 1]).logits)
            labels = logits.argmax(-1)
            if logits.shape[-1] == model.config.num_labels:  # sigmoid head
                targets = torch.nn.functional.one_hot(labels, logits.shape[-1]).float()
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="sum")
                loss = loss / logits.shape[1]
            else:
                loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
            (gradient,) = torch.autograd.grad(loss, layer.weight)
        expected.append(gradient.reshape(-1))
    assert embeddings.shape == (2, layer.weight.numel())
    torch.testing.assert_close(embeddings, torch.stack(expected), rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match=r"class head's input \[B, Q, D\]"):
        detection_gradient_embeddings(torch.zeros(2, 4), torch.zeros(2, 3))


# ----- metric -----


def test_perfect_predictions_score_one():
    targets = [
        {"boxes": [[0, 0, 10, 10], [20, 20, 40, 50]], "labels": [0, 1]},
        {"boxes": [[5, 5, 30, 30]], "labels": [2]},
    ]
    predictions = [{**t, "scores": [0.9] * len(t["labels"])} for t in targets]
    result = mean_average_precision(predictions, targets, class_names=CLASSES)
    for key in ("map", "map_50", "map_75", "map_cat", "map_dog", "map_bird"):
        assert result[key] == pytest.approx(1.0), key


def test_one_missed_box_has_the_known_map():
    # 2 boxes of one class, 1 found: precision 1 up to recall 0.5, then nothing. COCO's 101 recall points give
    # 51 / 101 at every IoU threshold; the class without boxes reports -1.
    targets = [{"boxes": [[0, 0, 10, 10]], "labels": [0]}, {"boxes": [[10, 10, 30, 30]], "labels": [0]}]
    predictions = [{"boxes": [[0, 0, 10, 10]], "labels": [0], "scores": [0.8]},
                   {"boxes": [], "labels": [], "scores": []}]  # fmt: skip
    result = mean_average_precision(predictions, targets, class_names=CLASSES)
    assert result["map"] == pytest.approx(51 / 101) and result["map_50"] == pytest.approx(51 / 101)
    assert result["map_cat"] == pytest.approx(51 / 101)
    assert result["map_dog"] == -1.0 and result["mar_100"] == pytest.approx(0.5)


def test_box_format_of_the_metric():
    target = [{"boxes": [[2, 3, 10, 20]], "labels": [1]}]  # xywh
    shifted = [{"boxes": [[2, 3, 10, 20]], "labels": [1], "scores": [1.0]}]
    assert mean_average_precision(shifted, target, box_format="xywh")["map"] == pytest.approx(1.0)
    # The corners of that box, read as xywh, are another (larger) box.
    corners = [{"boxes": [[2, 3, 12, 23]], "labels": [1]}]
    assert mean_average_precision(shifted, corners, box_format="xywh")["map"] < 0.9
    assert mean_average_precision(
        [{"boxes": [[2, 3, 12, 23]], "labels": [1], "scores": [1.0]}], corners, box_format="xyxy"
    )["map"] == pytest.approx(1.0)


def test_compute_metrics_on_trainer_predictions():
    dataset = detection_dataset([([[1, 2, 10, 8]], [0]), ([[0, 0, 40, 30], [5, 5, 20, 10]], [2, 1])])
    image_processor = processor()
    prepared = dataset.with_transform(prepare_detection(image_processor))
    batch = collate_detection([prepared[i] for i in range(2)])
    num_queries, num_labels = 4, 3
    logits = torch.full((2, num_queries, num_labels + 1), -10.0)
    logits[..., -1] = 10.0  # unused queries say "no object"
    pred_boxes = torch.full((2, num_queries, 4), 0.5)
    for row, label in enumerate(batch["labels"]):
        for query, (box, class_id) in enumerate(zip(label["boxes"], label["class_labels"])):
            logits[row, query, class_id], logits[row, query, -1] = 10.0, -10.0
            pred_boxes[row, query] = box
    labels = [{k: v.numpy() for k, v in label.items()} for label in batch["labels"]]
    compute = detection_compute_metrics(image_processor, class_names=CLASSES)
    # eval_do_concat_batches=False: per-batch tuples (loss_dict dropped here), per-batch label lists.
    per_batch = EvalPrediction(predictions=[(logits.numpy(), pred_boxes.numpy())], label_ids=[labels])
    result = compute(per_batch)
    assert result["map"] == pytest.approx(1.0) and result["map_bird"] == pytest.approx(1.0)
    flat = EvalPrediction(predictions=(logits.numpy(), pred_boxes.numpy()), label_ids=labels)
    assert compute(flat)["map"] == pytest.approx(1.0)
    wrong = pred_boxes.clone()
    wrong[1, 0] = torch.tensor([0.1, 0.1, 0.05, 0.05])
    missed = compute(EvalPrediction(predictions=[(logits.numpy(), wrong.numpy())], label_ids=[labels]))
    assert missed["map_bird"] == 0.0 and missed["map_cat"] == pytest.approx(1.0)


# ----- synthetic pool -----


def test_synthetic_pool_properties():
    items = detection_items()
    pool = synthetic_detection_pool(60, items=items, image_size=64, scales=(16, 24, 32), seed=3)
    assert pool.num_rows == 60
    assert detection_class_names(pool) == ["0", "1", "2"]
    assert validate_detection_dataset(pool) is pool
    counts = [len(objects["bbox"]) for objects in pool["objects"]]
    assert min(counts) >= 1 and max(counts) <= 4 and len(set(counts)) > 1
    for objects in pool["objects"]:
        for x, y, w, h in objects["bbox"]:
            assert 0 <= x and 0 <= y and x + w <= 64 and y + h <= 64 and w > 0 and h > 0
            # Items are 16x12 bright rectangles at a 28-pixel scale, so every box is smaller than its paste.
            assert math.isclose(w / h, 12 / 16, rel_tol=0.25)
    image = pool[0]["image"]
    assert image.size == (64, 64) and image.mode == "RGB"
    # Objects are brighter than the textured background under their boxes.
    x, y, w, h = (int(v) for v in pool[0]["objects"]["bbox"][0])
    pixels = np.asarray(image, dtype=np.float32)
    assert pixels[y + h // 2, x + w // 2].mean() > 100


def test_synthetic_pool_is_seeded():
    items = detection_items()
    first = synthetic_detection_pool(
        10, items=items, image_size=48, scales=(16, 24), seed=1, image_format="png"
    )
    again = synthetic_detection_pool(
        10, items=items, image_size=48, scales=(16, 24), seed=1, image_format="png"
    )
    other = synthetic_detection_pool(
        10, items=items, image_size=48, scales=(16, 24), seed=2, image_format="png"
    )
    assert first["objects"] == again["objects"] != other["objects"]
    assert np.array_equal(np.asarray(first[0]["image"]), np.asarray(again[0]["image"]))
    empty = synthetic_detection_pool(
        30, items=items, image_size=48, scales=(16,), min_objects=0, max_objects=1
    )
    assert any(len(objects["bbox"]) == 0 for objects in empty["objects"])
    with pytest.raises(ValueError, match="must fit"):
        synthetic_detection_pool(1, items=items, image_size=16, scales=(32,))


def test_synthetic_pool_with_some_item_classes():
    items = detection_items()  # item i has class i % 3
    pool = synthetic_detection_pool(20, items=items, item_classes=[2, 0], image_size=48, scales=(16,))
    assert detection_class_names(pool) == ["2", "0"]
    assert validate_detection_dataset(pool) is pool
    assert {c for objects in pool["objects"] for c in objects["category"]} == {0, 1}
    only = synthetic_detection_pool(10, items=items, item_classes=[1], image_size=48, scales=(16,))
    assert detection_class_names(only) == ["1"] and {c for o in only["objects"] for c in o["category"]} == {0}
    with pytest.raises(
        ValueError, match=r"item_classes must be distinct class ids of the items \(0..2\), got \[0, 0\]"
    ):
        synthetic_detection_pool(1, items=items, item_classes=[0, 0])


def test_the_stock_trainer_trains_and_evaluates_a_detector_through_the_task(tmp_path):
    from transformers import Trainer, TrainingArguments

    pool = synthetic_detection_pool(16, items=detection_items(), image_size=48, scales=(16, 24), seed=0)
    image_processor = processor(32)
    prepared = pool.with_transform(DETECTION.prepare(image_processor))
    model = tiny_detr(num_labels=3)
    before = [p.detach().clone() for p in model.parameters()]
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=8, per_device_eval_batch_size=8, num_train_epochs=1,
        learning_rate=1e-3, report_to=[], use_cpu=True, save_strategy="no", **DETECTION.training_arguments,
    )  # fmt: skip
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=prepared,
        eval_dataset=prepared,
        data_collator=DETECTION.collate,
        compute_metrics=DETECTION.compute_metrics(image_processor, class_names=detection_class_names(pool)),
    )
    trainer.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    metrics = trainer.evaluate()
    assert {"eval_map", "eval_map_50", "eval_map_0", "eval_map_2"} <= set(metrics)
    assert 0.0 <= metrics["eval_map"] <= 1.0
