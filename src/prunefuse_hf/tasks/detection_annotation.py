"""People label boxes, the query side: an object-detection round's query batch (the images, a COCO JSON template,
a Label Studio import with a `RectangleLabels` config, and the surrogate's boxes as Label Studio predictions that
annotators correct). The boxes come back through [`read_detection_labels`] (`detection_labels.py`).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from xml.sax.saxutils import quoteattr

import datasets
import numpy as np
from transformers.utils import logging

from ..annotation.labels import LabelError, check_class_names
from ..constants import (
    COCO_TEMPLATE,
    LABEL_STUDIO_CONFIG,
    POOL_INDEX,
    QUERY_CSV,
    QUERY_FILE_NAME,
)
from .annotation_query import write_synced, write_task_query
from .detection_data import OBJECTS_COLUMN

logger = logging.get_logger(__name__)

BOX_TAG = "label"  # the RectangleLabels tag's name: JSON_MIN exports carry the boxes under it


def detection_label_studio_config(class_names: list[str]) -> str:
    """
    The Label Studio labeling config for boxes: an `<Image>` and a `<RectangleLabels name="label">` of the class
    names (no rotation handle: detectors take upright boxes).

    Example:

    ```python
    >>> print(detection_label_studio_config(["cat", "dog"]))  # doctest: +NORMALIZE_WHITESPACE
    <View>
      <Image name="image" value="$image"/>
      <RectangleLabels name="label" toName="image" canRotate="false">
        <Label value="cat"/>
        <Label value="dog"/>
      </RectangleLabels>
    </View>
    ```
    """
    labels = "".join(f"    <Label value={quoteattr(name)}/>\n" for name in check_class_names(class_names))
    return (
        "<View>\n"
        '  <Image name="image" value="$image"/>\n'
        f'  <RectangleLabels name="{BOX_TAG}" toName="image" canRotate="false">\n'
        f"{labels}"
        "  </RectangleLabels>\n"
        "</View>\n"
    )


def detection_prediction(prediction: dict, class_names: list[str], image_size: tuple[int, int], *,
                         model_version: str | None = None, where: str = "prediction") -> dict:  # fmt: skip
    """
    A Label Studio prediction (pre-annotation) of one image's boxes, for [`detection_label_studio_config`].

    Args:
        prediction (`dict`): `{"boxes": [[x, y, w, h], ...] (COCO pixels), "labels": [class id, ...], "scores":
            [float, ...]}` (`scores` optional: 1.0). Boxes are clipped to the image; boxes left empty are dropped.
        class_names (`list[str]`): The class names.
        image_size (`tuple[int, int]`): `(width, height)` of the image in pixels.
        model_version (`str`, *optional*): Names the model, e.g. `"<run>-surrogate-round1"`.
        where (`str`): Names the image in errors.

    Returns:
        `dict`: `{"model_version", "score" (mean box score, 0 without boxes), "result": [rectanglelabels results
        in percent of the image, with `original_width` / `original_height` and each box's `score`]}`.

    Raises:
        LabelError: boxes, labels and scores of other lengths, a box that is not 4 numbers, a class id out of range.

    Example:

    ```python
    >>> p = detection_prediction({"boxes": [[10, 5, 20, 10]], "labels": [1], "scores": [0.9]}, ["cat", "dog"], (40, 20))
    >>> p["result"][0]["value"]
    {'x': 25.0, 'y': 25.0, 'width': 50.0, 'height': 50.0, 'rotation': 0, 'rectanglelabels': ['dog']}
    ```
    """
    boxes = np.asarray(prediction.get("boxes", []), dtype=np.float64)
    labels = np.asarray(prediction.get("labels", []), dtype=np.int64).reshape(-1)
    scores = np.asarray(prediction.get("scores", np.ones(len(labels))), dtype=np.float64).reshape(-1)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or not np.isfinite(boxes).all():
        raise LabelError(
            f"{where}: boxes must be [[x, y, width, height], ...] in COCO pixels, got {boxes.tolist()}."
        )
    if not len(boxes) == len(labels) == len(scores):
        raise LabelError(f"{where}: {len(boxes)} boxes, {len(labels)} labels and {len(scores)} scores; give one "
                         "label and one score per box.")  # fmt: skip
    bad = labels[(labels < 0) | (labels >= len(class_names))]
    if bad.size:
        raise LabelError(f"{where}: class id {bad.tolist()} is out of range for {len(class_names)} classes.")
    width, height = image_size
    corners = np.clip(
        np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1), 0, [width, height] * 2
    )
    result = []
    for k, ((x0, y0, x1, y1), label, score) in enumerate(
        zip(corners.tolist(), labels.tolist(), scores.tolist())
    ):
        if x1 <= x0 or y1 <= y0:
            continue
        value = {"x": x0 / width * 100, "y": y0 / height * 100, "width": (x1 - x0) / width * 100,
                 "height": (y1 - y0) / height * 100, "rotation": 0, "rectanglelabels": [class_names[label]]}  # fmt: skip
        result.append({"id": f"prediction-{k}", "from_name": BOX_TAG, "to_name": "image", "type": "rectanglelabels",
                       "original_width": int(width), "original_height": int(height), "image_rotation": 0,
                       "score": round(float(score), 4), "value": value})  # fmt: skip
    kept = [r["score"] for r in result]
    return {"model_version": model_version or "prunefuse", "score": round(float(np.mean(kept)) if kept else 0.0, 4),
            "result": result}  # fmt: skip


def write_detection_query(
    directory: str | os.PathLike,
    dataset: datasets.Dataset,
    indices,
    *,
    image_column: str = "image",
    class_names: list[str],
    round: int,
    predictions=None,
    model_version: str | None = None,
    scores=None,
    objects_column: str = OBJECTS_COLUMN,
) -> Path:
    """
    Write one round's query batch for box annotators, as a whole (built beside `directory`, then renamed).

    The directory holds what classification's [`write_query_batch`] writes (`dataset/` of the queried rows with
    `pool_index` and `file_name`, without the `objects` column; `label_studio_tasks.json`, one task per image with
    its `image` as a `data:` URI, `pool_index`, `file_name`, `round` and `image_path`), and for boxes:
    - `annotations.json`: a COCO JSON template: `images` with `id` = `pool_index` = the pool index, `file_name`,
      `width`, `height` (as annotators see the image: upright); `categories` with `id` = class id; no annotations;
    - `label_studio_config.xml`: `<Image>` + `<RectangleLabels name="label">` of the class names;
    - `labels.csv`: `pool_index,file_name,width,height`, one row per image (the query's index list);
    - with `predictions`, every Label Studio task carries the surrogate's boxes (see [`detection_prediction`]).

    Args:
        directory (`str` or `os.PathLike`): Where to write; must not exist unless it holds this exact query.
        dataset (`datasets.Dataset`): The pool (pool index = row), with an `Image` feature in `image_column`.
        indices (array-like of int): The queried pool indices, in the order annotators should see them.
        image_column (`str`, defaults to `"image"`): The image column.
        class_names (`list[str]`): The class names, in id order.
        round (`int`): The round that made this query.
        predictions (`list[dict]`, *optional*): Per queried image, `{"boxes": [[x, y, w, h], ...] (COCO pixels),
            "labels": [int, ...], "scores": [float, ...]}`: the surrogate's detections.
        model_version (`str`, *optional*): Names the model that predicted, for Label Studio.
        scores (array-like of float, *optional*): The selection score per queried image (a `score` column).
        objects_column (`str`, defaults to `"objects"`): The pool's boxes column, left out of the query.

    Returns:
        `Path`: `directory`.

    Raises:
        LabelError: as [`write_query_batch`]; predictions of another length or invalid (see
            [`detection_prediction`]).

    Example:

    ```python
    >>> path = write_detection_query("run/queries/round_2", pool, [31, 4], class_names=["cat", "dog"], round=2)
    >>> json.loads((path / "annotations.json").read_text())["images"][0]["id"]
    31
    ```
    """
    class_names = check_class_names(class_names)

    def fill(query: Path, indices: np.ndarray, values: list, tasks: list) -> None:
        from ..data.images import open_image

        sizes = [open_image(value, pool_index=int(i)).size for i, value in zip(indices.tolist(), values)]
        names = [task["data"][QUERY_FILE_NAME] for task in tasks]
        if predictions is not None:
            for task, prediction, size in zip(tasks, predictions, sizes):
                where = f"query of round {round}, prediction for pool index {task['data'][POOL_INDEX]}"
                task["predictions"] = [detection_prediction(prediction, class_names, size, model_version=model_version,
                                                            where=where)]  # fmt: skip
        coco = {
            "info": {
                "description": f"PruneFuse detection query, round {round}",
                "contributor": "prunefuse-hf",
            },
            "images": [
                {"id": i, POOL_INDEX: i, "file_name": name, "width": w, "height": h}
                for i, name, (w, h) in zip(indices.tolist(), names, sizes)
            ],  # fmt: skip
            "annotations": [],
            "categories": [
                {"id": k, "name": name, "supercategory": ""} for k, name in enumerate(class_names)
            ],
        }
        rows = [[i, name, w, h] for i, name, (w, h) in zip(indices.tolist(), names, sizes)]
        write_synced(query / COCO_TEMPLATE, lambda f: json.dump(coco, f, indent=1))
        write_synced(
            query / LABEL_STUDIO_CONFIG, lambda f: f.write(detection_label_studio_config(class_names))
        )
        write_synced(query / QUERY_CSV, lambda f: csv.writer(f).writerows([[POOL_INDEX, QUERY_FILE_NAME, "width",
                                                                            "height"], *rows]))  # fmt: skip

    written = write_task_query(directory, dataset, indices, image_column=image_column, round=round, scores=scores,
                               annotation_column=objects_column, predictions=predictions, marker=COCO_TEMPLATE,
                               what="(possibly empty) prediction", fill=fill)  # fmt: skip
    if written is None:
        logger.info(f"{directory} already holds the query of round {round}; keeping it as it is.")
        return Path(directory)
    logger.info(
        f"Wrote the detection query of round {round} ({len(np.ravel(indices))} images) to {directory}."
    )
    return written


def detection_predictions(model, image_processor, images: list, *, threshold: float = 0.5, batch_size: int = 8,
                          num_channels: int = 3) -> list[dict]:  # fmt: skip
    """
    A detector's boxes on `images`, as [`write_detection_query`] takes them (the surrogate's guess that annotators
    correct): the processor's `post_process_object_detection` at the images' own sizes, boxes as COCO pixels.

    Args:
        model ([`~transformers.PreTrainedModel`]): A model of `AutoModelForObjectDetection` (the trained surrogate).
        image_processor ([`~transformers.BaseImageProcessor`]): Its processor.
        images (`list[PIL.Image.Image]`): The queried images, upright.
        threshold (`float`, defaults to 0.5): Boxes scoring below it are dropped (the run's
            `detection_score_threshold`).
        batch_size (`int`, defaults to 8): Images per forward pass.
        num_channels (`int`, defaults to 3): The model's input channels.

    Returns:
        `list[dict]`: per image, `{"boxes": [[x, y, w, h], ...], "labels": [class id, ...], "scores": [float, ...]}`.

    Example:

    ```python
    >>> detection_predictions(surrogate, processor, [PIL.Image.new("RGB", (64, 48))], threshold=0.0)[0]["labels"][:3]
    [1, 0, 1]
    ```
    """
    import torch

    from ..data.images import to_model_mode

    training, found = model.training, []
    model.eval()
    device = next(model.parameters()).device
    try:
        for start in range(0, len(images), batch_size):
            chunk = [to_model_mode(image, num_channels) for image in images[start : start + batch_size]]
            inputs = image_processor(images=chunk, return_tensors="pt")
            with torch.no_grad():
                outputs = model(
                    **{k: v.to(device) for k, v in inputs.items() if k in ("pixel_values", "pixel_mask")}
                )
            sizes = [(image.height, image.width) for image in chunk]
            for result in image_processor.post_process_object_detection(outputs, threshold=threshold,
                                                                        target_sizes=sizes):  # fmt: skip
                corners = result["boxes"].detach().cpu().double().numpy().reshape(-1, 4)
                boxes = np.concatenate([corners[:, :2], corners[:, 2:] - corners[:, :2]], axis=1)
                found.append({"boxes": boxes.round(2).tolist(), "labels": result["labels"].tolist(),
                              "scores": [round(float(s), 4) for s in result["scores"].tolist()]})  # fmt: skip
    finally:
        model.train(training)
    return found


def detection_label_studio_predictions(model, image_processor, images: list, *, class_names: list[str],
                                       model_version: str, num_channels: int = 3, settings: dict | None = None,
                                       batch_size: int = 8) -> list[dict]:  # fmt: skip
    """
    A detector's boxes on `images` as Label Studio predictions: what the ML backend answers (`/predict`), the same
    pre-annotations the query's tasks carry ([`detection_predictions`], then [`detection_prediction`]).

    Args:
        model ([`~transformers.PreTrainedModel`]): The trained surrogate (`AutoModelForObjectDetection`).
        image_processor ([`~transformers.BaseImageProcessor`]): Its processor.
        images (`list[PIL.Image.Image]`): The tasks' images, upright.
        class_names (`list[str]`): The run's class names.
        model_version (`str`): Names the model (`<run>-surrogate-round<k>`).
        num_channels (`int`, defaults to 3): The model's input channels.
        settings (`dict`, *optional*): The run's settings: boxes scoring below its `detection_score_threshold`
            (default 0.5) are dropped, as the query drops them.
        batch_size (`int`, defaults to 8): Images per forward pass.

    Returns:
        `list[dict]`: per image, `{"model_version", "score" (mean box score), "result": [rectanglelabels results in
        percent of the image, each with its `score`]}`.

    Example:

    ```python
    >>> detection_label_studio_predictions(surrogate, processor, [image], class_names=["cat", "dog"],
    ...                                    model_version="run-surrogate-round1")[0]["result"][0]["type"]
    'rectanglelabels'
    ```
    """
    threshold = (settings or {}).get("detection_score_threshold")
    found = detection_predictions(model, image_processor, images, threshold=0.5 if threshold is None else threshold,
                                  batch_size=batch_size, num_channels=num_channels)  # fmt: skip
    return [detection_prediction(prediction, class_names, image.size, model_version=model_version,
                                 where=f"image {k}") for k, (prediction, image) in enumerate(zip(found, images))]  # fmt: skip
