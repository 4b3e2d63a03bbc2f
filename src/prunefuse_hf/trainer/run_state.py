"""What `state.json` records of a run, and the checks that a run may resume: the settings that change results,
the state version, and the pool (the rows already trained on hold the same pixels); a run's state opened
([`open_run`]) and written after each step ([`save_run_state`])."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa

from ..annotation.identity import check_query_rows, unlabeled_queries
from ..constants import DENSE_INIT_DIR, IMAGE_PATH, ROW_DIGESTS, STATE_NAME
from ..data.pixel_dataset import PixelDataset
from ..utils.io import json_default, redact_secrets
from ..utils.run_directory import RunDirectory

STATE_VERSION = 4
# Versions this one resumes: 2 kept the per-image arrays inline in state.json; 3 keeps them beside it (npz) but
# the labeled rows' digests in state.json; 4 keeps the digests in the npz too.
READABLE_STATE_VERSIONS = (2, 3, 4)
# Labeled rows whose pixels a resume compares with the run's digests.
CHECKED_ROWS = 2048
# Settings that change what a run selects, trains or measures: resuming with other values is refused, by name.
RESULT_FIELDS = (
    "method", "pruning_ratio", "importance", "strategy", "fusion", "distill_alpha", "distill_temperature",
    "initial_labeled_size", "seed_labels", "query_size", "num_rounds", "seed", "data_seed", "selection_seed",
    "annotation", "initial_strategy", "selector", "surrogate_distill_epochs",
    "surrogate_init", "fusion_init", "copy_norm_stats", "sync_every", "eval_dense_every_round", "mc_samples",
    "image_column", "label_column", "class_names", "image_size", "augment",
    "num_train_epochs", "max_steps", "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps",
    "optim", "optim_args", "weight_decay", "lr_scheduler_type", "warmup_steps", "label_smoothing_factor",
    "max_grad_norm", "surrogate_num_train_epochs", "surrogate_learning_rate",
    "surrogate_per_device_train_batch_size", "bf16", "fp16", "eval_strategy", "eval_steps", "sync_batchnorm",
    "task", "objects_column", "bbox_format", "detection_aggregation", "detection_score_threshold",
    "reduce_labels", "segmentation_aggregation", "proxy_refresh_every", "dropquery_dropout",
)  # fmt: skip


# Settings added after runs of state version 3 were written: such a run ran with these values, so it resumes.
ADDED_SETTINGS = {"initial_strategy": "random", "selector": "trained", "surrogate_distill_epochs": 0.0,
                  "task": None, "objects_column": "objects", "bbox_format": "coco", "detection_aggregation": "max",
                  "detection_score_threshold": 0.5, "reduce_labels": False, "segmentation_aggregation": "mean",
                  "proxy_refresh_every": 0, "dropquery_dropout": 0.75}  # fmt: skip


def result_settings(args, processor, input_shape: tuple, pool_size: int, eval_dataset) -> dict:
    """The settings a run records and a resume must match: `RESULT_FIELDS`, the preprocessing (the processor and
    the input shape), the pool's size and the evaluation set's size and fingerprint, as read back from JSON."""
    settings = {name: getattr(args, name, None) for name in RESULT_FIELDS}
    settings["preprocessing"] = {"processor": processor.to_dict(), "input_shape": list(input_shape)}
    settings["pool_size"] = pool_size
    settings["eval_set"] = None
    if eval_dataset is not None:
        settings["eval_set"] = {"num_rows": len(eval_dataset), "fingerprint": eval_dataset._fingerprint}
    # As they read back from state.json, so that a resume compares like with like.
    return json.loads(json.dumps(settings, default=json_default))


def check_resumable(progress: dict, current: dict, run_dir: RunDirectory) -> None:
    """
    Refuse to resume a run written by another state version or with other result settings.

    Raises:
        `ValueError`: naming the state versions, or each changed setting with the run's value and the new one.
    """
    if progress.get("version") not in READABLE_STATE_VERSIONS:
        raise ValueError(
            f"{run_dir.state_path} was written by another prunefuse-hf version (state version "
            f"{progress.get('version')}, this one reads versions {', '.join(map(str, READABLE_STATE_VERSIONS))}); "
            "finish it with the version that started it, or start a new run in another output_dir."
        )
    saved = progress["settings"]
    saved = {**ADDED_SETTINGS, **saved}
    changed = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
    if "pool_size" in changed:
        before, now = changed.pop("pool_size")
        others = "; ".join(f"{k}: the run has {old!r}, now {new!r}" for k, (old, new) in changed.items())
        raise ValueError(
            f"Cannot resume {run_dir.path}: the pool is not the run's: it had {before} images, it has {now} now "
            "(images were added to or removed from it)"
            + (f"; and other settings differ ({others})" if others else "")
            + ". Restore the pool (its folder) as it was, or start a new run (another output_dir) on the new pool."
        )
    if changed:
        details = "; ".join(f"{k}: the run has {old!r}, now {new!r}" for k, (old, new) in changed.items())
        raise ValueError(
            f"Cannot resume {run_dir.path} with different settings ({details}). Resume with the run's "
            "settings, or start a new run in another output_dir."
        )


def check_same_pool(progress: dict, digests_of, run_dir: RunDirectory) -> np.ndarray:
    """
    Refuse to resume on another pool. A pool is the same when the rows the run already trained on hold the same
    pixels: a repaired file, a re-encoded image of the same content or a moved folder still resume. At most
    `CHECKED_ROWS` labeled rows, evenly spread, are read: another pool differs in nearly every row, and a resume
    reads a few thousand rows whatever the number labeled (seconds for a 1M-image run at 224 px).

    Args:
        progress (`dict`): The run's state.
        digests_of (`Callable[[np.ndarray], np.ndarray]`): The digest of each given pool row as the run computes
            it (`PixelExamples.row_digests`: the decoded pixels; `AnnotatedExamples.row_digests`: image bytes and
            annotations).
        run_dir ([`RunDirectory`]): The run, named in the error.

    Returns:
        `np.ndarray`: the pixel digest of every pool row (`uint64`, 0 where the row is not labeled), as the run
        keeps them; a state written before digests were arrays (a dict in `state.json`) is converted.

    Raises:
        `ValueError`: naming how many checked rows changed and some of their pool indices.
    """
    pool = progress["pool"]
    digests = pool.get(ROW_DIGESTS)
    if not isinstance(digests, np.ndarray):  # state versions 2 and 3: `{"pool index": "hex digest"}`
        digests = np.zeros(pool["num_examples"], dtype=np.uint64)
        for index, digest in progress.pop(ROW_DIGESTS, {}).items():
            digests[int(index)] = int(digest, 16)
    known = np.flatnonzero(digests)
    rows = known[np.linspace(0, len(known) - 1, min(len(known), CHECKED_ROWS)).astype(np.int64)]
    changed = rows[digests_of(rows) != digests[rows]]
    if len(changed):
        raise ValueError(
            f"Cannot resume {run_dir.path}: the pool is not the run's. {len(changed)} of the {len(rows)} labeled "
            f"rows checked hold other pixels now (pool index {changed[:5].tolist()}). Load the same dataset, "
            "split and revision (with the same max_pool_size and seed), and keep the run's pixel_cache_format "
            "(JPEG pixels differ from raw ones by a few levels)."
        )
    return digests


def row_digests(pixels, rows: np.ndarray) -> np.ndarray:
    """A digest of each row's decoded pixels (8-byte BLAKE2b as `uint64`, never 0), read 512 rows at a time as
    `PixelDataset` reads batches (one copy out of a raw cache, no per-row formatting). `pixels` is the pixel
    dataset, or a `PixelDataset` over all its rows (whose views of the cache are then reused: building them reads
    every Arrow chunk's type, 0.3 s at 1M rows)."""
    digests = np.empty(len(rows), dtype=np.uint64)
    if not len(rows):
        return digests
    reader = pixels.select(rows) if isinstance(pixels, PixelDataset) else PixelDataset(pixels, rows)
    for start in range(0, len(rows), 512):
        batch = reader.batch(np.arange(start, min(start + 512, len(rows)))).numpy()
        for offset, row in enumerate(batch):
            digest = hashlib.blake2b(np.ascontiguousarray(row).tobytes(), digest_size=8).digest()
            digests[start + offset] = int.from_bytes(digest, "big") or 1  # 0 means "not labeled"
    return digests


def relative_image_paths(dataset: datasets.Dataset, column: str) -> list[str | None]:
    """The file each example came from (image folders, datasets that keep paths), relative to the folder all the
    pool's files share, so no local directory travels with a pushed subset; `None` where an image has no path.

    The paths are read from the `path` field of the column's Arrow storage: no image's bytes are read or decoded
    (the bytes of a memory-mapped pool stay on disk), so this costs about a second per million images."""
    if not isinstance(dataset.features[column], datasets.Image):
        return []
    stored = dataset.data.table.column(column)
    if pa.types.is_struct(stored.type):
        index = stored.type.get_field_index("path")
        paths = pa.chunked_array([chunk.field(index) for chunk in stored.chunks], pa.string())
    else:  # the column holds paths as strings
        paths = stored.cast(pa.string())
    if dataset._indices is not None:  # a selected, shuffled or split view: its rows in the dataset's order
        paths = paths.take(dataset._indices.column(0))
    paths = paths.to_pylist()
    local = [p for p in paths if p and os.path.isabs(p)]
    root = os.path.commonpath(local) if local else None
    if root is not None and len(local) == 1:
        root = os.path.dirname(root)
    return [os.path.relpath(p, root) if root and p and os.path.isabs(p) else p for p in paths]


def initialized_run(args) -> bool:
    """Whether `args.output_dir` holds a run whose `init` step is done, that a trainer with `args` would resume."""
    state = Path(args.output_dir) / STATE_NAME
    if args.overwrite_output_dir or not state.is_file():
        return False
    try:
        return "init" in json.loads(state.read_text(encoding="utf-8")).get("completed", [])
    except (OSError, ValueError):
        return False


def open_run(trainer, resume: bool) -> None:
    """
    Open `trainer`'s run directory: a new run's empty state, or a resumed run's state read back and checked (the
    settings that change results, the pool's rows, the images of queries waiting for labels), its pool restored and
    its dense initialization θ0 loaded as the trainer's model.

    Args:
        trainer ([`PruneFuseTrainer`]): The trainer whose `run_dir` is opened; sets its `progress`.
        resume (`bool`): Continue the run in `run_dir` instead of starting one.

    Raises:
        `RunDirectoryError`: `run_dir` holds files and neither resuming nor overwriting, or nothing to resume.
        `ValueError`: resuming with settings or a pool that differ from the run's (named in the message).
    """
    args, run_dir = trainer.args, trainer.run_dir
    if trainer.is_world_process_zero():
        run_dir.prepare(resume=resume, overwrite=args.overwrite_output_dir)
    trainer.accelerator.wait_for_everyone()
    current = result_settings(args, trainer.processing_class, trainer.input_shape, len(trainer.pool),
                              trainer.raw_eval_dataset)  # fmt: skip
    if not resume:
        trainer.progress = {"version": STATE_VERSION, "completed": [], "settings": current,
                            "resume_command": trainer.resume_command,
                            "method_overrides": args.method_overrides, "recipe": redact_secrets(trainer.recipe),
                            "class_names": trainer.class_names, "task": trainer.task.name,
                            "metric": trainer.examples.metric, "annotation_resolve": args.annotation_resolve,
                            "rounds": {}, "final": {}}  # fmt: skip
        return
    progress = run_dir.read_state()
    # Labels waiting to be used go on the images annotators were shown (named when the pool changed).
    for record in unlabeled_queries(progress):
        check_query_rows(record, trainer.pool.dataset, args.image_column,
                         pool_size=progress["pool"]["num_examples"], what=f"Cannot resume {run_dir.path}")  # fmt: skip
    check_resumable(progress, current, run_dir)
    trainer.labeled_row_digests = check_same_pool(progress, trainer.examples.row_digests, run_dir)
    trainer.pool.load_state_dict(progress["pool"], check_fingerprint=False)
    # An older readable state is saved as this one; the policy for answers that disagree is the resume's.
    trainer.progress = {**progress, "version": STATE_VERSION, "annotation_resolve": args.annotation_resolve}
    dense_init = trainer.task.model_class().from_pretrained(run_dir / DENSE_INIT_DIR)
    trainer.model = trainer.model_wrapped = dense_init.to(args.device)


def save_run_state(trainer) -> None:
    """
    Write `trainer`'s run state: `state.json` (atomically) and, when examples were labeled since the last save, the
    selection file and the pool's arrays. Only the rows labeled since the last save are read (their digests): a save
    costs O(changes), whatever the pool's size.

    Args:
        trainer ([`PruneFuseTrainer`]): The trainer whose `progress` and `pool` are written.
    """
    if trainer.labeled_row_digests is None:
        trainer.labeled_row_digests = np.zeros(len(trainer.pool), dtype=np.uint64)
    digests, labeled = trainer.labeled_row_digests, trainer.pool.labeled_indices
    new = labeled[digests[labeled] == 0]
    digests[new] = trainer.examples.row_digests(new)
    trainer.progress["pool"][ROW_DIGESTS] = digests
    if trainer.is_world_process_zero():
        # The selection file and the pool arrays change only when examples are labeled: a step that labels
        # nothing writes only the small state.json, whatever the pool's size.
        if (
            trainer.run_dir.pool_arrays_changed(trainer.progress)
            or not trainer.run_dir.selection_path.is_file()
        ):
            trainer.pool.save_selection(trainer.run_dir.selection_path, class_names=trainer.class_names,
                                        references=_example_references(trainer))  # fmt: skip
        trainer.run_dir.write_state(trainer.progress)
    trainer.accelerator.wait_for_everyone()


def _example_references(trainer) -> dict | None:
    # The labeled images' files, relative to the pool's common folder (read once per run).
    if trainer.pool_image_paths is None:
        trainer.pool_image_paths = relative_image_paths(trainer.pool.dataset, trainer.args.image_column)
    if not any(trainer.pool_image_paths):
        return None
    labeled = trainer.pool.labeled_indices.tolist()
    return {IMAGE_PATH: {i: trainer.pool_image_paths[i] for i in labeled}}
