"""Mean IoU, per-class IoU and pixel accuracy of a semantic segmenter, as the `evaluate` library's `mean_iou`
metric defines them (the metric of the transformers semantic-segmentation guide; `evaluate.load("mean_iou")`
fetches its code from the Hub, so the same definition is computed here, offline).

`mean_iou` (evaluate-metric/mean_iou, after mmsegmentation's `mean_iou`) drops the pixels whose label is the ignore
index, then counts per class, over the whole dataset (not per image): the intersection (pixels predicted `c` and
labeled `c`), the predicted area and the labeled area, from histograms over the ids `0..num_labels - 1` (ids outside
that range fall out of their histogram). Then `iou = intersection / (predicted + labeled - intersection)`,
`accuracy = intersection / labeled` per class, `mean_iou` and `mean_accuracy` their means over the classes where
they are defined (NaN skipped), and `overall_accuracy` (pixel accuracy) = total intersection / total labeled.

Here the histograms are the margins of one confusion matrix with an extra row and column for ids outside the
classes, so that every pixel is counted exactly as the histograms count it.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from .segmentation_masks import IGNORE_INDEX, reduce_mask_labels


def confusion_matrix(
    predictions, references, num_labels: int, ignore_index: int = IGNORE_INDEX, reduce_labels: bool = False
) -> np.ndarray:
    """
    The `(num_labels + 1, num_labels + 1)` pixel counts `[label, prediction]` over all pixels whose label is not
    `ignore_index` (nor negative: the Trainer pads unequal label maps with -100); row and column `num_labels` count
    ids outside `0..num_labels - 1`.

    Args:
        predictions: Predicted class ids, an array (or list of arrays) of any shape.
        references: Label ids of the same shapes.
        num_labels (`int`): The number of classes.
        ignore_index (`int`, *optional*, defaults to 255): Labels left out.
        reduce_labels (`bool`, *optional*, defaults to `False`): Apply `reduce_labels` to the references first.

    Returns:
        `np.ndarray` of int64.
    """
    matrix = np.zeros((num_labels + 1, num_labels + 1), dtype=np.int64)
    if isinstance(predictions, (np.ndarray, torch.Tensor)) and isinstance(
        references, (np.ndarray, torch.Tensor)
    ):
        predictions, references = [predictions], [references]
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions for {len(references)} references: give one of each."
        )
    for prediction, reference in zip(predictions, references):
        prediction, reference = _array(prediction), _array(reference)
        if prediction.shape != reference.shape:
            raise ValueError(
                f"A prediction of shape {prediction.shape} for a label map of shape {reference.shape}: upsample the "
                "logits to the label size before the argmax."
            )
        if reduce_labels:
            reference = reduce_mask_labels(reference, ignore_index)
        counted = (reference != ignore_index) & (reference >= 0)
        label = np.minimum(reference[counted], num_labels)
        pred = prediction[counted]
        pred = np.where((pred < 0) | (pred >= num_labels), num_labels, pred)
        matrix += np.bincount(label * (num_labels + 1) + pred, minlength=(num_labels + 1) ** 2).reshape(
            num_labels + 1, num_labels + 1
        )
    return matrix


def mean_iou(
    predictions,
    references,
    num_labels: int,
    ignore_index: int = IGNORE_INDEX,
    reduce_labels: bool = False,
    nan_to_num: float | None = None,
) -> dict:
    """
    evaluate's `mean_iou` (see the module docstring), from one confusion matrix.

    Args:
        predictions: Predicted class ids per image (arrays `(H, W)`, or one stacked array).
        references: Label ids per image, of the same shapes.
        num_labels (`int`): The number of classes.
        ignore_index (`int`, *optional*, defaults to 255): Labels left out.
        reduce_labels (`bool`, *optional*, defaults to `False`): Apply `reduce_labels` to the references first.
        nan_to_num (`float`, *optional*): Replace undefined values (a class neither labeled nor predicted) by this.

    Returns:
        `dict`: `mean_iou`, `mean_accuracy`, `overall_accuracy` (floats), `per_category_iou` and
        `per_category_accuracy` (arrays `(num_labels,)`, NaN where undefined).

    Example:

    ```python
    >>> labels = np.array([[0, 0], [1, 255]])
    >>> result = mean_iou(np.array([[0, 1], [1, 1]]), labels, num_labels=2)
    >>> float(result["mean_iou"]), float(result["overall_accuracy"]), result["per_category_iou"].tolist()
    (0.5, 0.6666666666666666, [0.5, 0.5])
    ```
    """
    matrix = confusion_matrix(predictions, references, num_labels, ignore_index, reduce_labels)
    intersection = np.diag(matrix)[:num_labels].astype(np.float64)
    labeled = matrix[:num_labels].sum(1).astype(np.float64)
    predicted = matrix[:, :num_labels].sum(0).astype(np.float64)
    union = predicted + labeled - intersection
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the mean of no defined class is NaN, as in evaluate
        iou = intersection / union
        accuracy = intersection / labeled
        result = {
            "mean_iou": np.nanmean(iou),
            "mean_accuracy": np.nanmean(accuracy),
            "overall_accuracy": intersection.sum() / labeled.sum(),
            "per_category_iou": iou,
            "per_category_accuracy": accuracy,
        }
    if nan_to_num is not None:
        result = {key: np.nan_to_num(value, nan=nan_to_num) for key, value in result.items()}
    return result


def _array(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values).astype(np.int64, copy=False)


def upsample_predictions(logits, size: tuple[int, int]) -> torch.Tensor:
    """Class ids `[B, H, W]` of logits `[B, C, h, w]` upsampled bilinearly to `size` (the guide's and
    `post_process_semantic_segmentation`'s way); a `[B, H, W]` integer input is taken as ids already."""
    logits = torch.as_tensor(logits)
    if logits.ndim == 3 and not logits.is_floating_point():
        return logits.long()
    if logits.ndim != 4:
        raise ValueError(
            f"Segmentation logits must be [batch, classes, height, width], got {tuple(logits.shape)}."
        )
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits.float(), size=tuple(size), mode="bilinear", align_corners=False)
    return logits.argmax(1)


def segmentation_preprocess_logits(logits, labels) -> torch.Tensor:
    """
    A `preprocess_logits_for_metrics` for the `Trainer`: each evaluation batch's logits become class ids at the
    labels' size right away, so that evaluation keeps `[N, H, W]` ids instead of `[N, C, h, w]` float logits.
    [`segmentation_compute_metrics`] takes either.
    """
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    return upsample_predictions(logits, tuple(labels.shape[-2:]))


def segmentation_compute_metrics(
    image_processor=None,
    class_names: list[str] | None = None,
    *,
    num_labels: int | None = None,
    ignore_index: int = IGNORE_INDEX,
):
    """
    A `compute_metrics` for the `Trainer` evaluating a segmenter, as in the transformers semantic-segmentation guide:
    the logits are upsampled (bilinear) to the labels' size, their argmax compared with the labels by [`mean_iou`].

    The labels are those of the preparation (`reduce_labels` already applied), so none is applied here. Undefined
    values (a class neither labeled nor predicted) are reported as -1, as the detection metric does.

    Args:
        image_processor (*optional*): The segmenter's processor (unused: the labels already have the processed size;
            taken for the task interface).
        class_names (`list[str]`, *optional*): The classes; with them, one `iou_<name>` and `accuracy_<name>` each.
        num_labels (`int`, *optional*): The number of classes, when `class_names` is not given (default: from the
            logits).
        ignore_index (`int`, *optional*, defaults to 255): Labels left out.

    Returns:
        `Callable[[EvalPrediction], dict[str, float]]` giving `mean_iou`, `mean_accuracy`, `overall_accuracy`
        (pixel accuracy), and the per-class entries.
    """

    @torch.no_grad()
    def compute_metrics(eval_pred) -> dict[str, float]:
        predictions, labels = eval_pred.predictions, eval_pred.label_ids
        if isinstance(predictions, (tuple, list)):
            predictions = predictions[0]
        labels = torch.as_tensor(np.asarray(labels))
        predictions = torch.as_tensor(np.asarray(predictions))
        classes = len(class_names) if class_names is not None else num_labels
        if classes is None:
            if predictions.ndim != 4:
                raise ValueError("Give class_names or num_labels when the predictions are class ids.")
            classes = predictions.shape[1]
        ids = upsample_predictions(predictions, tuple(labels.shape[-2:]))
        result = mean_iou(ids.numpy(), labels.numpy(), num_labels=classes, ignore_index=ignore_index)
        metrics = {key: _defined(result[key]) for key in ("mean_iou", "mean_accuracy", "overall_accuracy")}
        if class_names is not None:
            for name, iou, accuracy in zip(
                class_names, result["per_category_iou"], result["per_category_accuracy"]
            ):
                metrics[f"iou_{name}"] = _defined(iou)
                metrics[f"accuracy_{name}"] = _defined(accuracy)
        return metrics

    return compute_metrics


def _defined(value) -> float:
    value = float(value)
    return -1.0 if np.isnan(value) else value
