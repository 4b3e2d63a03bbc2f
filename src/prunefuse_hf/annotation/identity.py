"""Labels land on the image the annotator saw. A query records, per row, what identifies its image (a digest of
its decoded pixels, its file and the file name annotators were shown); `label`, `label-studio pull` and a resumed
run compare the pool's rows with it before a label is stored or used (only the queried rows are read), and the
image references a label file carries (`image_path`, `file_name`, a Label Studio task's `image`) are compared with
it too. Any difference is refused, naming the pool index, the image the annotator saw and the one there now.
"""

from __future__ import annotations

import base64
import os
from urllib.parse import unquote

import datasets
import numpy as np
from transformers.utils import logging

from ..arguments import DataArguments, run_data_arguments
from ..constants import (
    IMAGE_PATH,
    LABEL_STUDIO_LOCAL_FILES_URL,
    LABEL_STUDIO_TASKS,
    QUERY_CSV,
    QUERY_FILE_NAME,
    QUERY_IMAGES,
)
from ..data.images import ImageDecodeError, image_identities, open_image, pixel_digest
from ..utils.run_directory import step_name
from .labels import LabelBatch, LabelError

logger = logging.get_logger(__name__)

_SHOWN = 3  # differences named in a message


def file_names(indices: list[int], paths: list[str | None]) -> list[str]:
    """The file name annotators see for each queried image: the basename of its path (prefixed with the pool
    index when two queried images share it), else `<pool_index>.png`."""
    basenames = [os.path.basename(path) if path else None for path in paths]
    counts: dict[str, int] = {}
    for name in basenames:
        if name:
            counts[name] = counts.get(name, 0) + 1
    # Image folders repeat basenames across class folders; annotators need one name per image.
    return [
        f"{index}.png" if not name else (f"{index}_{name}" if counts[name] > 1 else name)
        for index, name in zip(indices, basenames)
    ]


def query_images(dataset: datasets.Dataset, image_column: str, indices) -> dict:
    """
    What identifies each queried image, as a query records it (`state.json`, `queries.<round>.images`).

    Args:
        dataset (`datasets.Dataset`): The pool.
        image_column (`str`): Its image column.
        indices (array-like of int): The queried pool indices.

    Returns:
        `dict`: `digest` (pixel digests, see [`image_identities`]), `path` (the file of each image, `None` when it
        has none) and `file_name` (the name annotators are shown), each a list in query order.
    """
    indices = np.asarray(indices, dtype=np.int64).reshape(-1).tolist()
    digests, paths = image_identities(dataset, image_column, indices)
    return {"digest": digests, "path": paths, QUERY_FILE_NAME: file_names(indices, paths)}


def _describe(record: dict, k: int) -> str:
    path, name = record["path"][k], record[QUERY_FILE_NAME][k]
    return repr(path) if path else f"{name!r} (an image stored in the dataset)"


def check_query_rows(
    record: dict, dataset: datasets.Dataset, image_column: str, *, pool_size: int, indices=None, what: str
) -> None:
    """
    Refuse when rows of the pool are not the images a query showed annotators.

    Args:
        record (`dict`): The query as `state.json` holds it (`pool_indices` and `images`).
        dataset (`datasets.Dataset`): The pool as it is now.
        image_column (`str`): Its image column.
        pool_size (`int`): The number of images the run's pool had.
        indices (array-like of int, *optional*): The queried rows to check (default: all of them).
        what (`str`): What is refused, as the message starts.

    Raises:
        LabelError: the pool has another number of images, or a checked row holds another image (named with
            the image the annotator saw and the one there now), with the fix.
    """
    images = record.get(QUERY_IMAGES)
    if not images:
        return  # a query written before queries recorded their images
    position = {int(i): k for k, i in enumerate(record["pool_indices"])}
    wanted = position if indices is None else [int(i) for i in indices if int(i) in position]
    wanted = sorted(wanted)
    inside = [i for i in wanted if i < len(dataset)]
    digests, paths = image_identities(dataset, image_column, inside)
    now = dict(zip(inside, zip(digests, paths)))
    changed = []
    for index in wanted:
        k = position[index]
        digest, path = now.get(index, (None, None))
        if digest is not None and digest == images["digest"][k]:
            continue  # the same pixels (a moved folder or a re-encoded file still match)
        if index >= len(dataset):
            there = f"there is no pool index {index} now (the pool has {len(dataset)} images)"
        elif digest is None:
            there = f"now it is {path!r}, which cannot be read" if path else "now no image can be read there"
        elif path and path == images["path"][k]:
            there = "that file now holds other pixels"
        else:
            there = f"now it is {path!r}" if path else "now it is another image (other pixels)"
        changed.append(
            f"pool index {index} was {_describe(images, k)} when annotators were shown it, {there}"
        )
    if not changed and len(dataset) == pool_size:
        return
    size = (
        f"the pool has {len(dataset)} images now, the run's had {pool_size}"
        if len(dataset) != pool_size
        else ""
    )
    shown = "; ".join(changed[:_SHOWN]) + (
        f"; and {len(changed) - _SHOWN} more" if len(changed) > _SHOWN else ""
    )
    raise LabelError(
        f"{what}: the pool changed since the query of round {record.get('round', '?')} was written (images added, "
        f"removed, renamed or reordered), so labels would land on other images than the ones annotated: "
        + "; ".join(part for part in (size, shown) if part)
        + ". Restore the pool (its folder) as it was when the query was written, or start a new run (another "
        "output_dir) on the new pool."
    )


def check_recorded_files(record: dict, indices, *, what: str) -> None:
    """
    Without the pool at hand: refuse when a queried image's file is gone or holds other pixels than the query's.

    Raises:
        LabelError: naming the pool index and the file, with the fix.
    """
    images = record.get(QUERY_IMAGES)
    if not images:
        return
    position = {int(i): k for k, i in enumerate(record["pool_indices"])}
    changed = []
    for index in sorted(int(i) for i in indices if int(i) in position):
        k = position[index]
        path = images["path"][k]
        if not path or not os.path.isabs(path):
            continue
        try:
            same = pixel_digest(open_image(path)) == images["digest"][k]
        except ImageDecodeError:
            same = False
        if not same:
            changed.append(f"pool index {index} was {path!r} when annotators were shown it; that file is gone or "
                           "holds other pixels now")  # fmt: skip
    if changed:
        raise LabelError(
            f"{what}: the pool changed since the query of round {record.get('round', '?')} was written: "
            + "; ".join(changed[:_SHOWN])
            + (f"; and {len(changed) - _SHOWN} more" if len(changed) > _SHOWN else "")
            + ". Restore the pool (its folder) as it was when the query was written, or start a new run (another "
            "output_dir) on the new pool."
        )


def check_references(batch: LabelBatch, queries: dict, run_dir) -> None:
    """
    Refuse labels whose row names another image (`image_path`, `file_name`, a Label Studio task's `image`) than
    the query showed for that pool index, even when the pool index is one of the query's.

    Args:
        batch (`LabelBatch`): The labels read, with their references.
        queries (`dict`): `state.json`'s `queries` (round -> record).
        run_dir: The run directory, named in the fix.

    Raises:
        LabelError: naming the file, the row (task), the reference it carries and the query's, with the fix.
    """
    if not batch.references:
        return
    known = {}
    for round_, record in queries.items():
        if record.get(QUERY_IMAGES):
            for k, index in enumerate(record["pool_indices"]):
                known[int(index)] = (int(round_), record[QUERY_IMAGES], k)
    differ = []
    for j, (index, references) in enumerate(zip(batch.pool_indices.tolist(), batch.references)):
        if not references or index not in known:
            continue
        round_, images, k = known[index]
        found = _mismatch(references, images, k)
        if found:
            place = batch.places[j] if batch.places else f"row {j}"
            differ.append(
                f"{place} labels pool index {index} and refers to {found}, but pool index {index} of round "
                f"{round_}'s query is {_describe(images, k)} (file_name {images[QUERY_FILE_NAME][k]!r})"
            )
    if differ:
        raise LabelError(
            f"{batch.source}: {len(differ)} labels refer to other images than this run's query: "
            + "; ".join(differ[:_SHOWN])
            + (f"; and {len(differ) - _SHOWN} more" if len(differ) > _SHOWN else "")
            + ". These labels were given for other images (an export of another Label Studio project or run, or an "
            f"edited file): ingest the labels of this run's query (its {QUERY_CSV} or {LABEL_STUDIO_TASKS}, or "
            f"`prunefuse-hf label-studio pull {run_dir}`), or fix those rows."
        )


def _mismatch(references: dict, images: dict, k: int) -> str | None:
    """How a row's references differ from the query's image `k`, or None when they agree."""
    name, path, digest = images[QUERY_FILE_NAME][k], images["path"][k], images["digest"][k]
    given = references.get(QUERY_FILE_NAME)
    if given is not None and given != name:
        return f"file_name {given!r}"
    given = references.get(IMAGE_PATH)
    if given is not None and path and not _same_path(given, path):
        return f"image_path {given!r}"
    image = references.get("image", "")
    if image.startswith("data:") and digest:
        try:
            shown = pixel_digest(open_image(base64.b64decode(image.split(",", 1)[1])))
        except (ImageDecodeError, ValueError, IndexError):
            shown = None
        if shown != digest:
            return "an image (its data: URI) with other pixels"
    if image.startswith(LABEL_STUDIO_LOCAL_FILES_URL) and path:
        relative = unquote(image[len(LABEL_STUDIO_LOCAL_FILES_URL) :])
        if not _same_path(relative, path):
            return f"the local file {relative!r}"
    return None


def _same_path(given: str, recorded: str) -> bool:
    """Whether a path from a label file names the recorded file (it may be relative to a document root)."""
    given, recorded = os.path.normpath(given), os.path.normpath(recorded)
    if given == recorded:
        return True
    if os.path.isabs(given) and os.path.isabs(recorded):
        return False
    shorter, longer = sorted((given, recorded), key=len)
    return longer.endswith(os.sep + shorter.lstrip(os.sep))


def open_query_record(state: dict, round_: int) -> dict:
    """The query record of `round_` in `state`, with its round."""
    return {**state["queries"][str(round_)], "round": round_}


def check_label_identity(
    run_dir, state: dict, round_: int, batch: LabelBatch, *, pool=None, image_column: str | None = None
) -> None:
    """
    Before labels of the open query are stored: the images they were given for are the pool's rows now, and the
    references the label file carries are the query's.

    Args:
        run_dir: The run directory.
        state (`dict`): Its `state.json`.
        round_ (`int`): The open query's round.
        batch (`LabelBatch`): The labels read.
        pool (`datasets.Dataset`, *optional*): The pool as the run will read it; default: loaded again as the run's
            recipe loads it (only the queried rows are decoded). Without a recipe (a run started from Python) only
            the queried files are checked here, and the whole check runs when the run resumes.
        image_column (`str`, *optional*): The pool's image column (default: the run's).

    Raises:
        LabelError: naming what differs, with the fix.
    """
    check_references(batch, state.get("queries", {}), run_dir)
    record = open_query_record(state, round_)
    if not record.get(QUERY_IMAGES):
        return
    image_column = image_column or state["settings"].get("image_column") or "image"
    ingested = np.intersect1d(batch.pool_indices, np.asarray(record["pool_indices"], dtype=np.int64))
    what = f"Cannot store the labels of {batch.source}"
    if pool is None:
        pool = _pool_now(state, image_column)
    if pool is None:
        check_recorded_files(record, ingested, what=what)
        return
    check_query_rows(record, pool, image_column, pool_size=state["pool"]["num_examples"], indices=ingested,
                     what=what)  # fmt: skip


def unlabeled_queries(state: dict) -> list[dict]:
    """The query records of `state` whose labeling step has not finished (their labels are not in the pool yet)."""
    return [
        open_query_record(state, int(round_))
        for round_ in state.get("queries", {})
        if step_name("label", int(round_)) not in state.get("completed", [])
    ]


def _pool_now(state: dict, image_column: str) -> datasets.Dataset | None:
    data = run_data_arguments(state.get("recipe"))
    if data is None:
        return None
    from ..data.loading import load_run_datasets

    try:
        pool, _ = load_run_datasets(
            DataArguments(**{**data, "eval_split": None}),
            image_column,
            None,
            seed=state["settings"].get("seed", 0),
        )
    except (ValueError, OSError) as error:
        logger.warning(
            f"The run's pool ({data['dataset_name']}) cannot be loaded to check the queried images ({error}); only "
            "their files are checked now, the pool is checked when the run resumes."
        )
        return None
    return pool
