"""Query batches for annotators: the images of a round's query as a dataset with their pool indices, a
`labels.csv` template and a Label Studio import file with its labeling config; and the run's open query."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import shutil
import uuid
from pathlib import Path

import datasets
import numpy as np
from transformers.utils import logging

from ..constants import (
    IMAGE_PATH,
    LABEL_STUDIO_CONFIG,
    LABEL_STUDIO_TASKS,
    POOL_INDEX,
    QUERIES_DIR,
    QUERY_CSV,
    QUERY_DATASET_DIR,
    QUERY_FILE_NAME,
    QUERY_FILES,
    QUERY_PREDICTED_LABEL,
    QUERY_PREDICTED_SCORE,
    QUERY_SCORE,
    STATE_NAME,
)
from ..utils.io import fsync_directory
from ..utils.run_directory import RunDirectory, step_name
from .identity import file_names as file_names_of
from .label_studio import label_studio_config, label_studio_prediction
from .labels import (
    LabelError,
    check_class_names,
    check_in_pool,
    check_round,
    parse_pool_index,
    preview_values,
)
from .readers import LABEL_COLUMNS

logger = logging.get_logger(__name__)


def write_query_batch(
    directory: str | os.PathLike,
    dataset: datasets.Dataset,
    pool_indices,
    *,
    image_column: str = "image",
    class_names: list[str] | None = None,
    round: int,
    scores=None,
    predictions=None,
    prediction_scores=None,
    model_version: str | None = None,
) -> Path:
    """
    Write one round's query batch for annotators, as a whole (built beside `directory`, then renamed).

    The directory holds:
    - `dataset/`: the queried rows (`save_to_disk`, images embedded so the folder is self-contained) with
      columns `pool_index`, `file_name`, the image column, the other non-label columns, `score` when
      `scores` is given and `predicted_label`, `predicted_score` when `predictions` are; label columns
      (`ClassLabel` features and the usual label names) are left out;
    - `labels.csv`: the template to fill, header `pool_index,file_name,label` (plus `predicted_label,
      predicted_score` with predictions), one row per query, empty labels;
    - `label_studio_tasks.json`: a Label Studio import file, one task per query whose `data` holds `image` (a
      `data:` URI of the image bytes, read from the file when the dataset stores only a path: it shows in a
      stock Label Studio), `pool_index`, `file_name`, `round` and `image_path` (the pool's file, when there is
      one); with predictions, each task carries the surrogate's guess as a Label Studio prediction (its class
      in `<Choices name="label">`, its probability as `score`, `model_version`), which annotators confirm or
      correct;
    - `label_studio_config.xml` (when `class_names` is given): an image-classification labeling config whose
      single-choice `<Choices name="label">` lists the class names, so exports carry a `label` field.

    `file_name` is the basename of the image's path when the dataset stores one (prefixed with the pool index
    when two queried images share a basename), else `<pool_index>.png`.

    Args:
        directory (`str` or `os.PathLike`):
            Where to write, e.g. `RUN/queries/round_3`. Must not exist, unless it already holds this exact
            query (then it is kept as it is: annotators may be filling its `labels.csv`).
        dataset (`datasets.Dataset`):
            The pool (pool index = row), with an `Image` feature in `image_column`.
        pool_indices (array-like of int):
            The queried pool indices, in the order annotators should see them.
        image_column (`str`, defaults to `"image"`):
            The image column.
        class_names (`list[str]`, *optional*):
            The run's class names, for the Label Studio config.
        round (`int`):
            The round that made this query.
        scores (array-like of float, *optional*):
            The selection score of each queried example, stored as a `score` column in `dataset/`.
        predictions (array-like of int, *optional*):
            The surrogate's predicted class id of each queried example (needs `class_names`).
        prediction_scores (array-like of float, *optional*):
            The surrogate's probability of that class, per queried example.
        model_version (`str`, *optional*):
            Names the model that predicted (e.g. `"<run>-round<k>"`), for Label Studio.

    Returns:
        `Path`: `directory`.

    Raises:
        LabelError: a pool index repeats or is out of range; `image_column` is not an `Image` feature; `scores`
            has another length; `directory` exists and holds a different query.

    Example:

    ```python
    >>> from prunefuse_hf.annotation import write_query_batch, read_query_indices
    >>> path = write_query_batch("run/queries/round_2", pool, [31, 4, 17], class_names=["cat", "dog"], round=2)
    >>> read_query_indices(path).tolist()
    [31, 4, 17]
    ```
    """
    directory = Path(directory)
    round = check_round(round)
    indices = np.asarray(pool_indices, dtype=np.int64).reshape(-1)
    where = f"query of round {round} ({directory})"
    check_in_pool(indices, len(dataset), where)
    values, counts = np.unique(indices, return_counts=True)
    if (counts > 1).any():
        raise LabelError(
            f"{where}: pool index {preview_values(values[counts > 1])} is queried more than once."
        )
    if not isinstance(dataset.features.get(image_column), datasets.Image):
        raise LabelError(
            f"{where}: column {image_column!r} is not an Image feature (features: {dataset.features}). Pass the "
            "image column as image_column."
        )
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(scores) != len(indices):
            raise LabelError(f"{where}: {len(scores)} scores for {len(indices)} queried pool indices.")
    if class_names is not None:
        class_names = check_class_names(class_names)
    if predictions is not None:
        if class_names is None:
            raise LabelError(f"{where}: predictions need class_names (the classes they are ids into).")
        predictions = np.asarray(predictions, dtype=np.int64).reshape(-1)
        prediction_scores = np.asarray(
            np.ones(len(predictions)) if prediction_scores is None else prediction_scores, dtype=np.float64
        ).reshape(-1)
        if not len(predictions) == len(prediction_scores) == len(indices):
            raise LabelError(
                f"{where}: {len(predictions)} predictions and {len(prediction_scores)} prediction scores for "
                f"{len(indices)} queried pool indices."
            )
        bad = predictions[(predictions < 0) | (predictions >= len(class_names))]
        if bad.size:
            raise LabelError(
                f"{where}: predicted class id {preview_values(bad)} is out of range for {len(class_names)} classes."
            )
        predicted_names = [class_names[k] for k in predictions.tolist()]
    if directory.exists():
        if np.array_equal(read_query_indices(directory), indices):
            logger.info(f"{directory} already holds the query of round {round}; keeping it as it is.")
            return directory
        raise LabelError(
            f"{directory} already holds a different query. It may hold annotators' work: move it away (or ingest its "
            "labels first), then write the query again."
        )

    query = dataset.select(indices)
    dropped = [
        column
        for column in query.column_names
        if column != image_column
        and (column in LABEL_COLUMNS or column in (POOL_INDEX, QUERY_FILE_NAME, QUERY_SCORE)
             or isinstance(query.features[column], datasets.ClassLabel))
    ]  # fmt: skip
    query = query.remove_columns(dropped)
    storage = (
        query.cast_column(image_column, datasets.Image(decode=False))
        .with_format("arrow")[:]
        .column(image_column)
    )
    image_bytes = storage.combine_chunks().field("bytes").to_pylist() if len(indices) else []
    image_paths = storage.combine_chunks().field("path").to_pylist() if len(indices) else []
    file_names = file_names_of(indices.tolist(), image_paths)
    others = [column for column in query.column_names if column != image_column]
    query = query.add_column(POOL_INDEX, indices.tolist()).add_column(QUERY_FILE_NAME, file_names)
    extra = []
    if scores is not None:
        query = query.add_column(QUERY_SCORE, scores.tolist())
        extra.append(QUERY_SCORE)
    if predictions is not None:
        query = query.add_column(QUERY_PREDICTED_LABEL, predicted_names).add_column(
            QUERY_PREDICTED_SCORE, prediction_scores.tolist()
        )
        extra += [QUERY_PREDICTED_LABEL, QUERY_PREDICTED_SCORE]
    query = query.select_columns([POOL_INDEX, QUERY_FILE_NAME, image_column, *others, *extra])

    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = directory.with_name(f".{directory.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp_dir.mkdir()
        query.save_to_disk(str(tmp_dir / QUERY_DATASET_DIR))  # embeds local image files (self-contained)
        guesses = (
            list(zip(predicted_names, prediction_scores.tolist()))
            if predictions is not None
            else [None] * len(indices)
        )
        with open(tmp_dir / QUERY_CSV, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(
                [POOL_INDEX, QUERY_FILE_NAME, "label"]
                + ([QUERY_PREDICTED_LABEL, QUERY_PREDICTED_SCORE] if predictions is not None else [])
            )
            writer.writerows(
                [index, file_name, ""] + ([guess[0], f"{guess[1]:.4f}"] if guess else [])
                for index, file_name, guess in zip(indices.tolist(), file_names, guesses)
            )
        tasks = [
            {
                "data": {
                    "image": _image_reference(data, path),
                    POOL_INDEX: index,
                    QUERY_FILE_NAME: file_name,
                    "round": round,
                    **({IMAGE_PATH: os.path.abspath(path)} if data is None and path else {}),
                },
                **({"predictions": [label_studio_prediction(*guess, model_version)]} if guess else {}),
            }
            for index, file_name, data, path, guess in zip(
                indices.tolist(), file_names, image_bytes, image_paths, guesses
            )
        ]
        with open(tmp_dir / LABEL_STUDIO_TASKS, "w", encoding="utf-8") as f:
            json.dump(tasks, f, indent=1)
        if class_names is not None:
            (tmp_dir / LABEL_STUDIO_CONFIG).write_text(label_studio_config(class_names), encoding="utf-8")
        _fsync_tree(tmp_dir)
        os.replace(tmp_dir, directory)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    fsync_directory(directory.parent)
    logger.info(f"Wrote the query of round {round} ({len(indices)} examples) to {directory}.")
    return directory


def read_query_indices(directory: str | os.PathLike) -> np.ndarray:
    """
    The pool indices of a query batch, read back from its `labels.csv`.

    Args:
        directory (`str` or `os.PathLike`): A directory written by `write_query_batch`.

    Returns:
        `np.ndarray`, int64: the queried pool indices, in file order.

    Raises:
        LabelError: `labels.csv` is missing, has no `pool_index` column, or holds a cell that is not a
            non-negative integer.
    """
    path = Path(directory) / QUERY_CSV
    if not path.is_file():
        raise LabelError(
            f"{path} not found: {directory} is not a query directory written by write_query_batch."
        )
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if POOL_INDEX not in (reader.fieldnames or []):
            raise LabelError(f"{path} has no {POOL_INDEX!r} column (columns: {reader.fieldnames}).")
        indices = [parse_pool_index(row[POOL_INDEX], f"{path}, line {j + 2}") for j, row in enumerate(reader)]
    return np.array(indices, dtype=np.int64)


def _image_reference(data: bytes | None, path: str | None) -> str:
    """A `data:` URI of the image: it shows in any Label Studio without local-file serving or storage set-up."""
    if data is None:
        if not path:
            return ""
        with open(path, "rb") as f:
            data = f.read()
    from PIL import Image as PILImage

    try:
        mime = PILImage.MIME.get(PILImage.open(io.BytesIO(data)).format, "image/png")
    except Exception:  # undecodable bytes still travel; Label Studio will say what is wrong
        mime = "image/png"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_directory(Path(folder))


def surrogate_model_version(run_dir: str | os.PathLike, round: int) -> str:
    """
    The `model_version` of the predictions made by the surrogate trained in `round` (`<run>-surrogate-round<k>`,
    `<run>` the run directory's own name however it is given), in the query batch's Label Studio tasks and from the
    ML backend: Label Studio asks the backend again only for tasks without this version's predictions.

    Example:

    ```python
    >>> surrogate_model_version("runs/my-pool", 2)
    'my-pool-surrogate-round2'
    ```
    """
    return f"{Path(run_dir).resolve().name}-surrogate-round{round}"


def query_contents(directory: str | os.PathLike) -> str:
    """
    The files of a query batch that annotators use, as the "images to label" lines name them: those of
    `QUERY_FILES` present in `directory` (a classification query has no COCO template; a detection query has one).

    Args:
        directory (`str` or `os.PathLike`): A query batch (`RUN/queries/round_K`).

    Returns:
        `str`: e.g. `"dataset/, annotations.json (COCO template to fill in), labels.csv, label_studio_tasks.json"`.

    Example:

    ```python
    >>> query_contents("runs/annotated/queries/round_1")
    'dataset/, labels.csv, label_studio_tasks.json'
    ```
    """
    directory = Path(directory)
    return ", ".join(shown for name, shown in QUERY_FILES.items() if (directory / name).exists())


def query_directory(run_dir: str | os.PathLike, round: int) -> Path:
    """Where a run writes the query batch of `round` (the round its examples are labeled in)."""
    return Path(run_dir) / QUERIES_DIR / f"round_{round}"


def open_query(run_dir: str | os.PathLike) -> tuple[int, np.ndarray] | None:
    """
    The query of a run that waits for labels, from its `state.json`.

    Args:
        run_dir (`str` or `os.PathLike`): The run directory.

    Returns:
        `(round, pool_indices)` of the query whose labeling step has not finished, or `None`.

    Raises:
        LabelError: `run_dir` holds no run.
    """
    state = read_run_state(run_dir)
    waiting = [
        int(k) for k in state.get("queries", {}) if step_name("label", int(k)) not in state["completed"]
    ]
    if not waiting:
        return None
    round = min(waiting)
    return round, np.asarray(state["queries"][str(round)]["pool_indices"], dtype=np.int64)


def read_run_state(run_dir) -> dict:
    """The run's state (`RunDirectory.read_state`), or a `LabelError` when `run_dir` holds no PruneFuse run."""
    run = RunDirectory(run_dir)
    if not run.state_path.is_file():
        raise LabelError(f"{run_dir} holds no PruneFuse run ({STATE_NAME} is missing).")
    return run.read_state()
