"""COCO mean average precision of a detector: mAP@[.5:.95], mAP@50, mAP@75, by object size, mAR@100 and AP per
class, as the transformers `run_object_detection.py` example reports them.

The example computes them with torchmetrics' `MeanAveragePrecision`, which hands the work to pycocotools'
`COCOeval` but needs torchvision to be importable (to convert boxes). Here the same `COCOeval` is called directly,
so the numbers are the reference COCO numbers without torchvision.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)

# COCOeval.stats positions (pycocotools' summarize order) and the names torchmetrics gives them.
COCO_STAT_NAMES = (
    "map",
    "map_50",
    "map_75",
    "map_small",
    "map_medium",
    "map_large",
    "mar_1",
    "mar_10",
    "mar_100",
)


def mean_average_precision(
    predictions: list[dict],
    targets: list[dict],
    class_names: list[str] | None = None,
    box_format: str = "xyxy",
) -> dict[str, float]:
    """
    COCO detection metrics of `predictions` against `targets`, one dict per image.

    Args:
        predictions (`list[dict]`): Per image `boxes` `(N, 4)` in pixels, `scores` `(N,)` and `labels` `(N,)` (what
            an image processor's `post_process_object_detection` returns).
        targets (`list[dict]`): Per image `boxes` `(M, 4)` in pixels and `labels` `(M,)`.
        class_names (`list[str]`, *optional*): With them, one `map_<name>` entry per class (AP@[.5:.95]; -1 for a
            class without any ground-truth box, as COCO and torchmetrics report it).
        box_format (`str`, *optional*, defaults to `"xyxy"`): `xyxy` (pascal_voc corners) or `xywh` (COCO).

    Returns:
        `dict[str, float]`: `map`, `map_50`, `map_75`, `map_small`, `map_medium`, `map_large`, `mar_1`, `mar_10`,
        `mar_100`, and `map_<class name>` per class. -1 where nothing defines the value (no ground truth).

    Example:

    ```python
    >>> box = {"boxes": [[0, 0, 10, 10]], "labels": [0]}
    >>> round(mean_average_precision([{**box, "scores": [0.9]}], [box])["map"], 6)
    1.0
    ```
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(predictions) != len(targets):
        raise ValueError(
            f"{len(predictions)} predictions for {len(targets)} targets: give one of each per image."
        )
    if box_format not in ("xyxy", "xywh"):
        raise ValueError(f"box_format must be 'xyxy' or 'xywh', got {box_format!r}.")
    ground_truth, detections = [], []
    labels_seen = set()
    for image_id, (prediction, target) in enumerate(zip(predictions, targets)):
        for box, label in zip(_boxes(target["boxes"], box_format), _values(target["labels"])):
            labels_seen.add(int(label))
            ground_truth.append(_annotation(len(ground_truth) + 1, image_id, box, int(label)))
        scores = _values(prediction["scores"])
        for box, label, score in zip(
            _boxes(prediction["boxes"], box_format), _values(prediction["labels"]), scores
        ):
            labels_seen.add(int(label))
            detections.append(
                {**_annotation(len(detections) + 1, image_id, box, int(label)), "score": float(score)}
            )
    num_classes = (
        len(class_names) if class_names is not None else (max(labels_seen) + 1 if labels_seen else 0)
    )
    category_ids = list(range(max(num_classes, max(labels_seen) + 1 if labels_seen else 0)))
    images = [{"id": image_id} for image_id in range(len(targets))]
    categories = [{"id": class_id} for class_id in category_ids]
    results = {name: -1.0 for name in COCO_STAT_NAMES}
    per_class = np.full(len(category_ids), -1.0)
    if images and category_ids:
        # pycocotools prints its progress; library code does not print.
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = _coco(COCO, images, categories, ground_truth)
            coco_dt = _coco(COCO, images, categories, detections)
            evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        results = {name: float(value) for name, value in zip(COCO_STAT_NAMES, evaluator.stats)}
        # precision: [iou thresholds, recall thresholds, classes, area ranges, max detections]; area "all", 100.
        precision = evaluator.eval["precision"][:, :, :, 0, -1]
        for k in range(len(category_ids)):
            values = precision[:, :, k]
            values = values[values > -1]
            per_class[k] = float(values.mean()) if values.size else -1.0
    if class_names is not None:
        for class_id, name in enumerate(class_names):
            results[f"map_{name}"] = float(per_class[class_id]) if class_id < len(per_class) else -1.0
    return results


def _coco(coco_class, images, categories, annotations):
    coco = coco_class()
    coco.dataset = {"images": images, "categories": categories, "annotations": annotations}
    coco.createIndex()
    return coco


def _annotation(annotation_id: int, image_id: int, box: np.ndarray, label: int) -> dict:
    x, y, w, h = (float(v) for v in box)
    return {"id": annotation_id, "image_id": image_id, "category_id": label, "bbox": [x, y, w, h],
            "area": w * h, "iscrowd": 0}  # fmt: skip


def _values(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values).reshape(-1)


def _boxes(boxes, box_format: str) -> np.ndarray:
    if isinstance(boxes, torch.Tensor):
        boxes = boxes.detach().cpu().float().numpy()
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if box_format == "xyxy":
        boxes = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    return boxes


def detection_compute_metrics(image_processor, class_names: list[str] | None = None, threshold: float = 0.0):
    """
    A `compute_metrics` for the `Trainer` evaluating a detector, as in transformers' `run_object_detection.py`:
    predictions go through `image_processor.post_process_object_detection` at each image's original size; the
    targets (the processor's labels: boxes as normalized `[cx, cy, w, h]`, `orig_size`) are scaled back to pixels.

    Set `eval_do_concat_batches=False` in the `TrainingArguments` (the labels are a list of dicts per batch); a
    flat list of label dicts with stacked predictions is accepted too.

    Args:
        image_processor ([`~transformers.BaseImageProcessor`]): The detector's processor (e.g. `DetrImageProcessorPil`).
        class_names (`list[str]`, *optional*): For the `map_<class>` entries.
        threshold (`float`, *optional*, defaults to 0.0): Score threshold of the post-processing (0 keeps every query,
            as the example does: COCO AP needs the low-score detections too).

    Returns:
        `Callable[[EvalPrediction], dict[str, float]]`.
    """

    @torch.no_grad()
    def compute_metrics(eval_pred) -> dict[str, float]:
        prediction_batches, label_batches = _batches(eval_pred.predictions, eval_pred.label_ids)
        predictions, targets = [], []
        for outputs, labels in zip(prediction_batches, label_batches):
            logits, pred_boxes = _logits_and_boxes(outputs)
            sizes = [tuple(int(v) for v in _values(label["orig_size"])) for label in labels]
            for label, (height, width) in zip(labels, sizes):
                boxes = torch.as_tensor(np.asarray(label["boxes"], dtype=np.float32)).reshape(-1, 4)
                scale = torch.tensor([width, height, width, height], dtype=torch.float32)
                corners = torch.cat([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], dim=1)
                targets.append({"boxes": corners * scale, "labels": _values(label["class_labels"])})
            output = _DetectionOutput(logits=torch.as_tensor(logits), pred_boxes=torch.as_tensor(pred_boxes))
            predictions.extend(
                image_processor.post_process_object_detection(output, threshold=threshold, target_sizes=sizes)
            )
        return mean_average_precision(predictions, targets, class_names=class_names)

    return compute_metrics


class _DetectionOutput(dict):
    """The two fields `post_process_object_detection` reads, as attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _batches(predictions, label_ids):
    # eval_do_concat_batches=False: a list of per-batch prediction tuples and a list of per-batch label lists.
    if isinstance(label_ids, (list, tuple)) and label_ids and isinstance(label_ids[0], (list, tuple)):
        return predictions, label_ids
    return [predictions], [list(label_ids)]


def _logits_and_boxes(outputs):
    # The Trainer passes the model output's tensors in field order without the loss (and a `loss_dict` when the
    # labels were given): logits come first and pred_boxes second among the [batch, queries, ...] arrays.
    if not isinstance(outputs, (list, tuple)):
        raise ValueError("Detection predictions must hold the model's logits and pred_boxes.")
    arrays = [np.asarray(v) for v in outputs if isinstance(v, (np.ndarray, torch.Tensor)) and np.ndim(v) == 3]
    if len(arrays) < 2 or arrays[1].shape[-1] != 4:
        raise ValueError(
            "Detection predictions must hold `logits` [batch, queries, classes] then `pred_boxes` [batch, queries, 4]; "
            f"got arrays of shapes {[a.shape for a in arrays]}."
        )
    return arrays[0], arrays[1]
