"""People label masks, the query side: a semantic-segmentation round's query batch (the images and an empty mask per
image in the image-folder layout [`load_segmentation_dataset`] reads, a Label Studio import with a `BrushLabels`
config, and the surrogate's masks as brush predictions that annotators correct). The masks come back through
[`read_segmentation_labels`] (`segmentation_labels.py`).
"""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
from transformers.utils import logging

from ..annotation.labels import LabelError, check_class_names
from ..constants import (
    LABEL_STUDIO_CONFIG,
    POOL_INDEX,
    QUERY_CSV,
    QUERY_FILE_NAME,
    QUERY_IMAGES_DIR,
    QUERY_MASKS_DIR,
)
from .annotation_query import write_synced, write_task_query
from .segmentation_brush import check_background, segmentation_label_studio_config, segmentation_prediction
from .segmentation_data import MASK_COLUMN
from .segmentation_masks import IGNORE_INDEX

logger = logging.get_logger(__name__)

QUERY_MASK_FILE_NAME = "mask_file_name"


def write_segmentation_query(
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
    background: int | None = None,
    mask_column: str = MASK_COLUMN,
) -> Path:
    """
    Write one round's query batch for mask annotators, as a whole (built beside `directory`, then renamed).

    The directory holds what classification's [`write_query_batch`] writes (`dataset/` of the queried rows with
    `pool_index` and `file_name`, without the mask column; `label_studio_tasks.json`, one task per image with its
    `image` as a `data:` URI, `pool_index`, `file_name`, `round` and `image_path`), and for masks:
    - `images/` and `masks/`: each queried image's file, and an empty mask of its size (an "L" PNG of 255, the
      ignore index: not labeled yet) named as its image with `.png`: the image-folder layout of
      [`load_segmentation_dataset`], so any paint tool can fill the masks with class ids;
    - `label_studio_config.xml`: `<Image>` + `<BrushLabels name="label">` + `<PolygonLabels name="polygon">` of the
      class names, `background` left out (see [`segmentation_label_studio_config`]);
    - `labels.csv`: `pool_index,file_name,mask_file_name,width,height`, one row per image (the query's index list);
    - with `predictions`, every Label Studio task carries the surrogate's mask as one brush result per class (see
      [`segmentation_prediction`]).

    Two queried images whose file names differ only in their suffix (`a.jpg`, `a.png`) are written as
    `<pool_index>_<file_name>`, so that every mask pairs with one image.

    Args:
        directory (`str` or `os.PathLike`): Where to write; must not exist unless it holds this exact query.
        dataset (`datasets.Dataset`): The pool (pool index = row), with an `Image` feature in `image_column`.
        indices (array-like of int): The queried pool indices, in the order annotators should see them.
        image_column (`str`, defaults to `"image"`): The image column.
        class_names (`list[str]`): The class names, in id order (with `reduce_labels`, the reduced ones).
        round (`int`): The round that made this query.
        predictions (`list`, *optional*): Per queried image, its predicted class ids: an array or "L"/"P" image of
            the image's size, ids in `[0, len(class_names))` or 255.
        model_version (`str`, *optional*): Names the model that predicted, for Label Studio.
        scores (array-like of float, *optional*): The selection score per queried image (a `score` column).
        background (`int`, *optional*): The class id of the pixels annotators leave unpainted in Label Studio (not
            a brush label); `None`: every class is a label and unpainted pixels stay unlabeled (255).
        mask_column (`str`, defaults to `"label"`): The pool's mask column, left out of the query.

    Returns:
        `Path`: `directory`.

    Raises:
        LabelError: as [`write_query_batch`]; predictions of another length, of another size than their image, or
            holding ids that are not classes; a `background` that is not a class id.

    Example:

    ```python
    >>> path = write_segmentation_query("run/queries/round_2", pool, [31, 4], class_names=["road", "car"], round=2)
    >>> sorted(p.name for p in (path / "masks").iterdir())
    ['31.png', '4.png']
    ```
    """
    class_names = check_class_names(class_names)
    background = check_background(background, class_names)

    def fill(query: Path, indices: np.ndarray, values: list, tasks: list) -> None:
        from ..data.images import open_image

        names = [task["data"][QUERY_FILE_NAME] for task in tasks]
        stems = [Path(name).stem for name in names]
        image_files = [
            name if stems.count(Path(name).stem) == 1 else f"{i}_{name}"
            for i, name in zip(indices.tolist(), names)
        ]
        (query / QUERY_IMAGES_DIR).mkdir()
        (query / QUERY_MASKS_DIR).mkdir()
        rows = []
        for index, value, image_file, task in zip(indices.tolist(), values, image_files, tasks):
            image = open_image(value, pool_index=index)
            target = query / QUERY_IMAGES_DIR / image_file
            if value.get("bytes"):
                target.write_bytes(value["bytes"])
            elif value.get("path") and os.path.isfile(value["path"]):
                shutil.copyfile(value["path"], target)
            else:  # a remote file (hf://...): the decoded image
                image.save(target)
            mask_file = Path(image_file).stem + ".png"
            PIL.Image.new("L", image.size, IGNORE_INDEX).save(query / QUERY_MASKS_DIR / mask_file)
            rows.append([index, task["data"][QUERY_FILE_NAME], mask_file, *image.size])
        if predictions is not None:
            for task, prediction, row in zip(tasks, predictions, rows):
                where = f"query of round {round}, prediction for pool index {task['data'][POOL_INDEX]}"
                mask = np.asarray(prediction)
                if mask.shape != (row[4], row[3]):
                    shown = (
                        "x".join(map(str, mask.shape[1::-1])) if mask.ndim == 2 else f"of shape {mask.shape}"
                    )
                    raise LabelError(f"{where}: the predicted mask is {shown}, the image {row[3]}x{row[4]}; predict "
                                     "at the image's size (segmentation_predictions, or the processor's "
                                     "post_process_semantic_segmentation with target_sizes).")  # fmt: skip
                task["predictions"] = [segmentation_prediction(mask, class_names, background=background,
                                                               model_version=model_version, where=where)]  # fmt: skip
        write_synced(
            query / LABEL_STUDIO_CONFIG,
            lambda f: f.write(segmentation_label_studio_config(class_names, background=background)),
        )
        write_synced(query / QUERY_CSV, lambda f: csv.writer(f).writerows([[POOL_INDEX, QUERY_FILE_NAME,
                                                                            QUERY_MASK_FILE_NAME, "width", "height"],
                                                                           *rows]))  # fmt: skip

    written = write_task_query(directory, dataset, indices, image_column=image_column, round=round, scores=scores,
                               annotation_column=mask_column, predictions=predictions, marker=QUERY_MASKS_DIR,
                               what="predicted mask", fill=fill)  # fmt: skip
    if written is None:
        logger.info(f"{directory} already holds the query of round {round}; keeping it as it is.")
        return Path(directory)
    logger.info(
        f"Wrote the segmentation query of round {round} ({len(np.ravel(indices))} images) to {directory}."
    )
    return written


def read_query_masks(directory: str | os.PathLike) -> list[dict]:
    """
    The images of a query written by [`write_segmentation_query`], from its `labels.csv`.

    Returns:
        `list[dict]`: per image, in query order, `{"pool_index", "file_name", "mask_file_name", "width", "height"}`.

    Raises:
        LabelError: `labels.csv` is missing or is not a segmentation query's (no `mask_file_name` column).

    Example:

    ```python
    >>> read_query_masks("run/queries/round_2")[0]
    {'pool_index': 31, 'file_name': '31.png', 'mask_file_name': '31.png', 'width': 64, 'height': 48}
    ```
    """
    path = Path(directory) / QUERY_CSV
    if not path.is_file():
        raise LabelError(
            f"{path} not found: {directory} is not a segmentation query written by write_segmentation_query."
        )
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if QUERY_MASK_FILE_NAME not in (reader.fieldnames or []):
            raise LabelError(f"{path} has no {QUERY_MASK_FILE_NAME!r} column (columns: {reader.fieldnames}): "
                             f"{directory} is not a segmentation query written by write_segmentation_query.")  # fmt: skip
        return [{POOL_INDEX: int(row[POOL_INDEX]), QUERY_FILE_NAME: row[QUERY_FILE_NAME],
                 QUERY_MASK_FILE_NAME: row[QUERY_MASK_FILE_NAME], "width": int(row["width"]),
                 "height": int(row["height"])} for row in reader]  # fmt: skip


def segmentation_predictions(model, image_processor, images: list, *, batch_size: int = 8,
                             num_channels: int = 3) -> list[np.ndarray]:  # fmt: skip
    """
    A segmenter's masks on `images`, as [`write_segmentation_query`] takes them (the surrogate's guess that
    annotators correct): the logits upsampled (bilinear) to each image's own size and their argmax, as the image
    processors' `post_process_semantic_segmentation(outputs, target_sizes=...)` computes them.

    Args:
        model ([`~transformers.PreTrainedModel`]): A model of `AutoModelForSemanticSegmentation` (the surrogate).
        image_processor ([`~transformers.BaseImageProcessor`]): Its processor.
        images (`list[PIL.Image.Image]`): The queried images, upright.
        batch_size (`int`, defaults to 8): Images per forward pass.
        num_channels (`int`, defaults to 3): The model's input channels.

    Returns:
        `list[np.ndarray]`: per image, an `(height, width)` uint8 mask of class ids.

    Example:

    ```python
    >>> segmentation_predictions(surrogate, processor, [PIL.Image.new("RGB", (64, 48))])[0].shape
    (48, 64)
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
            pixels = image_processor(images=chunk, return_tensors="pt")["pixel_values"].to(device)
            with torch.no_grad():
                logits = model(pixel_values=pixels).logits
            for k, image in enumerate(chunk):
                upsampled = torch.nn.functional.interpolate(logits[k : k + 1].float(), size=(image.height, image.width),
                                                            mode="bilinear", align_corners=False)  # fmt: skip
                found.append(upsampled[0].argmax(0).to(torch.uint8).cpu().numpy())
    finally:
        model.train(training)
    return found


def segmentation_label_studio_predictions(model, image_processor, images: list, *, class_names: list[str],
                                          model_version: str, num_channels: int = 3, settings: dict | None = None,
                                          batch_size: int = 8) -> list[dict]:  # fmt: skip
    """
    A segmenter's masks on `images` as Label Studio brush predictions: what the ML backend answers (`/predict`), one
    RLE brush result per class an image's mask holds ([`segmentation_predictions`], then
    [`segmentation_prediction`], as the query's pre-annotations).

    Args:
        model ([`~transformers.PreTrainedModel`]): The trained surrogate (`AutoModelForSemanticSegmentation`).
        image_processor ([`~transformers.BaseImageProcessor`]): Its processor.
        images (`list[PIL.Image.Image]`): The tasks' images, upright.
        class_names (`list[str]`): The run's class names (the mask's ids index them).
        model_version (`str`): Names the model (`<run>-surrogate-round<k>`).
        num_channels (`int`, defaults to 3): The model's input channels.
        settings (`dict`, *optional*): The run's settings (not read: every class the mask holds is painted).
        batch_size (`int`, defaults to 8): Images per forward pass.

    Returns:
        `list[dict]`: per image, `{"model_version", "result": [brushlabels results with `value.rle`]}`.

    Example:

    ```python
    >>> segmentation_label_studio_predictions(surrogate, processor, [image], class_names=["road", "car"],
    ...                                       model_version="run-surrogate-round1")[0]["result"][0]["type"]
    'brushlabels'
    ```
    """
    masks = segmentation_predictions(
        model, image_processor, images, batch_size=batch_size, num_channels=num_channels
    )
    return [segmentation_prediction(mask, class_names, model_version=model_version, where=f"image {k}")
            for k, mask in enumerate(masks)]  # fmt: skip
