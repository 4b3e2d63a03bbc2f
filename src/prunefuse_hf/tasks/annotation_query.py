"""A round's query batch for a task whose annotators draw (boxes, masks), the frame shared by
[`write_detection_query`] and [`write_segmentation_query`]: the checks, classification's query batch
([`write_query_batch`]: the queried rows, Label Studio tasks), the task's own files, and the whole written beside its
place and renamed into it, so that a query is there entirely or not at all.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import datasets
import numpy as np

from ..annotation.labels import LabelError
from ..annotation.queries import read_query_indices, write_query_batch
from ..constants import LABEL_STUDIO_TASKS
from ..utils.io import fsync_directory


def write_task_query(directory: str | os.PathLike, dataset: datasets.Dataset, indices, *, image_column: str,
                     round: int, scores, annotation_column: str, predictions, marker: str, what: str,
                     fill: Callable) -> Path | None:  # fmt: skip
    """
    Write one round's query batch as a whole: `dataset/`, `labels.csv` and `label_studio_tasks.json` as
    [`write_query_batch`] writes them (without the pool's annotation column), then what `fill` adds.

    Args:
        directory (`str` or `os.PathLike`): Where to write; must not exist unless it holds this exact query (then it
            is kept as it is, and `None` is returned).
        dataset (`datasets.Dataset`): The pool (pool index = row), with an `Image` feature in `image_column`.
        indices (array-like of int): The queried pool indices, in the order annotators should see them.
        image_column (`str`): The image column.
        round (`int`): The round that made this query.
        scores (array-like of float, *optional*): The selection score per queried image.
        annotation_column (`str`): The pool's annotation column, left out of the query.
        predictions (`list`, *optional*): The surrogate's guess per queried image (only its length is checked here).
        marker (`str`): A file or folder only the task's query holds (how an existing query is recognized).
        what (`str`): One prediction, in messages (`"(possibly empty) prediction"`, `"predicted mask"`).
        fill (`Callable`): `fill(query, indices, values, tasks)`: writes the task's files into the staged query
            (`values` the queried images as stored: `{"bytes", "path"}`) and sets the Label Studio `tasks`'
            predictions; the tasks are written after it.

    Returns:
        `Path` (`directory`), or `None` when it already held this query.

    Raises:
        LabelError: predictions of another length, `directory` holding another query; what `fill` and
            [`write_query_batch`] refuse (nothing is left behind).
    """
    directory = Path(directory)
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if predictions is not None and len(predictions) != len(indices):
        raise LabelError(f"query of round {round} ({directory}): {len(predictions)} predictions for {len(indices)} "
                         f"queried pool indices; give one {what} per image.")  # fmt: skip
    if directory.exists():
        if (directory / marker).exists() and np.array_equal(read_query_indices(directory), indices):
            return None
        raise LabelError(f"{directory} already holds a different query. It may hold annotators' work: move it away "
                         "(or ingest its labels first), then write the query again.")  # fmt: skip
    pool = dataset.remove_columns(annotation_column) if annotation_column in dataset.column_names else dataset
    staging = directory.parent / f".{directory.name}.{uuid.uuid4().hex[:8]}.staging"
    try:
        query = write_query_batch(staging / directory.name, pool, indices, image_column=image_column, round=round,
                                  scores=scores)  # fmt: skip
        rows = pool.select(indices.tolist()).cast_column(image_column, datasets.Image(decode=False))
        tasks = json.loads((query / LABEL_STUDIO_TASKS).read_text(encoding="utf-8"))
        fill(query, indices, list(rows[image_column]), tasks)
        # No indent: a brush prediction's RLE is a list of thousands of numbers.
        write_synced(query / LABEL_STUDIO_TASKS, lambda f: json.dump(tasks, f))
        fsync_directory(query)
        os.replace(query, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    fsync_directory(directory.parent)
    return directory


def write_synced(path: Path, write: Callable) -> None:
    """Write a text file of a staged query and flush it to disk (the query is renamed into place afterwards)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
