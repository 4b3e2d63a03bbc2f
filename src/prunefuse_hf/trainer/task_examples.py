"""The examples of a run, as its steps read them, for each task: the labeled set to train on, the inner trainer that
trains and evaluates a model, the pool's scores and features for selection, and a digest of each row (that a resume
is on the same pool).

- [`PixelExamples`] (image classification): the pool decoded once into the run's pixel cache, class ids as labels,
  the [`DistillationTrainer`].
- [`AnnotatedExamples`] (object detection, semantic segmentation): each image goes through the task's `prepare` (the
  model's image processor, with its boxes or mask) as it is read, the stock `Trainer` with the task's collator, loss
  and metric.

The trainer builds one of them; the steps (`trainer/steps.py`) call only these methods.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
from collections import Counter

import numpy as np
from transformers import Trainer
from transformers.utils import logging

from ..annotation.labels import LabelBatch
from ..annotation.oracle import oracle_labels
from ..annotation.queries import write_query_batch
from ..annotation.store import LabelStore
from ..data.pixel_dataset import PixelDataset
from ..selection.scoring import score_pool
from .distillation_trainer import DistillationTrainer
from .run_state import row_digests
from .whole_set_evaluation import WholeSetEvaluation

logger = logging.get_logger(__name__)


class PixelExamples:
    """
    Image classification's examples: rows of the pool's pixel cache with their class ids.

    Args:
        pool_pixels: The pool's decoded pixels (`ImagePreprocessor.pixel_dataset`).
        preprocessor ([`ImagePreprocessor`]): The run's preprocessing (normalization on the device, augmentation).
        pool ([`DataPool`]): The pool (its dataset's label column is the oracle; its `labels` the labeled ids).
        label_column (`str`): The pool's label column.
        class_names (`list[str]`): The run's classes.
    """

    metric = "accuracy"
    metric_names = ("accuracy",)

    def __init__(self, pool_pixels, preprocessor, pool, label_column: str, class_names: list[str]):
        self.pool_pixels, self.preprocessor, self.pool = pool_pixels, preprocessor, pool
        self.label_column, self.class_names = label_column, class_names

    def outputs(self, strategy) -> tuple[str, ...]:
        """What `score` computes for `strategy` (the model outputs it `needs`)."""
        return tuple(sorted(strategy.needs))

    def oracle_labels(self, indices: np.ndarray) -> LabelBatch:
        """The simulated annotator: the pool's label column at `indices`."""
        return oracle_labels(self.pool.dataset, self.label_column, indices, self.class_names)

    def label_store(self, run_dir) -> LabelStore:
        """The run's store of people's class labels (`RUN/labels.parquet`)."""
        return LabelStore(run_dir, self.class_names)

    def stored_labels(self, store: LabelStore, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(which of `indices` are labeled, their class ids) from `store`."""
        labels = store.as_array(len(self.pool))[indices]
        return labels >= 0, labels

    def query_guesses(self, model, indices: np.ndarray, *, args, accelerator) -> dict:
        """The surrogate's class and probability for each queried image (`predictions`, `prediction_scores`)."""
        # Scoring only the query costs query_size forward passes.
        guesses = self.score(model, np.sort(indices), ("probs",), args=args, accelerator=accelerator)
        probs = guesses.probs[np.searchsorted(guesses.pool_indices, indices)].numpy()
        return {
            "predictions": probs.argmax(axis=1).tolist(),
            "prediction_scores": probs.max(axis=1).round(4).tolist(),
        }

    def write_query(self, directory, indices: np.ndarray, query: dict, *, image_column: str, round: int,
                    model_version: str):  # fmt: skip
        """Write the query batch of `round` for annotators ([`write_query_batch`]: CSV template, Label Studio
        `Choices` import with the surrogate's class as a pre-annotation)."""
        return write_query_batch(directory, self.pool.dataset, indices, image_column=image_column,
                                 class_names=self.class_names, round=round, scores=query["scores"],
                                 predictions=query.get("predictions"), prediction_scores=query.get("prediction_scores"),
                                 model_version=model_version)  # fmt: skip

    def class_counts(self, indices: np.ndarray, labels: np.ndarray) -> Counter:
        """Examples per class name among the newly labeled `indices` (with their class ids `labels`)."""
        return Counter(self.class_names[int(y)] for y in labels)

    def train_dataset(self, indices: np.ndarray) -> PixelDataset:
        """The labeled rows `indices` with their class ids."""
        return PixelDataset(self.pool_pixels, indices, self.pool.labels[indices])

    def inner_trainer(
        self, model, args, *, train_dataset=None, eval_dataset=None, teacher=None, callbacks=None
    ):
        """The trainer of one model of the run (distilling from `teacher` when given)."""
        return DistillationTrainer(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                                   teacher_model=teacher, preprocessor=self.preprocessor, callbacks=callbacks)  # fmt: skip

    def score(self, model, indices: np.ndarray, outputs: tuple[str, ...], *, args, accelerator, gather: bool = True,
              measure: str | None = None):  # fmt: skip
        """`score_pool` of `model` on the pool rows `indices` (see [`score_pool`]); `measure` is read from the
        probabilities by the strategy itself."""
        return score_pool(model, PixelDataset(self.pool_pixels, indices), indices, batch_size=args.scoring_batch_size,
                          outputs=outputs, accelerator=accelerator, gather=gather, mc_samples=args.mc_samples,
                          preprocess=self.preprocessor.normalize, num_workers=args.dataloader_num_workers,
                          show_progress=not args.disable_tqdm)  # fmt: skip

    def row_digests(self, rows: np.ndarray) -> np.ndarray:
        """A digest of each row's decoded pixels (`uint64`, never 0)."""
        return row_digests(self._pool_reader, rows)

    @functools.cached_property
    def _pool_reader(self) -> PixelDataset:
        # Built once: every run step that saves the run state digests the rows it labeled through it.
        return PixelDataset(self.pool_pixels, np.arange(len(self.pool_pixels)))


def annotated_outputs(task, strategy) -> tuple[str, ...]:
    """
    What a detection or segmentation run scores for `strategy`: its `per_image_outputs` (an image holds many
    detections or pixels, so the task reduces them per image while the pool is scored: `scores` with the strategy's
    `measure`, `mc_scores` over MC-dropout passes, pooled `features`, BADGE's gradient `embeddings`).

    Args:
        task ([`~prunefuse_hf.tasks.Task`]): The run's task.
        strategy ([`~prunefuse_hf.selection.SelectionStrategy`]): The run's strategy.

    Returns:
        `tuple[str, ...]`: the `score_pool` outputs, e.g. `("scores",)` for `least_confidence`, `("embeddings",)`
        for `badge`.

    Raises:
        `ValueError`: a strategy the task cannot rank (one that needs outputs the task does not compute per image:
            BALD's MC-dropout scores for object detection), naming the strategies that run.

    Example:

    ```python
    >>> from prunefuse_hf.selection import get_strategy
    >>> from prunefuse_hf.tasks import get_task
    >>> annotated_outputs(get_task("object-detection"), get_strategy("badge"))
    ('embeddings',)
    ```
    """
    from ..selection.strategies import STRATEGIES

    if not strategy.needs:
        return ()
    outputs = strategy.per_image_outputs
    if not outputs or not outputs <= task.per_image_outputs:
        runs = sorted(
            name
            for name, cls in STRATEGIES.items()
            if not cls.needs or (cls.per_image_outputs and cls.per_image_outputs <= task.per_image_outputs)
        )
        missing = sorted(outputs - task.per_image_outputs) if outputs else sorted(strategy.needs)
        raise ValueError(
            f"Strategy '{strategy.name}' needs {missing} per image, which an {task.name} run does not compute; an "
            f"{task.name} run selects with {', '.join(runs)}."
        )
    return tuple(sorted(outputs))


class AnnotatedExamples:
    """
    The examples of a task whose annotations go through the model's image processor with the image (object
    detection: boxes are resized with it; semantic segmentation: masks are): rows of the pool, prepared by the task
    as they are read.

    Args:
        task ([`Task`]): The run's task (its `prepare`, `collate`, `image_scores`, `pooled_features`,
            `compute_metrics`, `metric_names`, `training_arguments`, `annotation_option`, `class_counts`,
            `feature_config`).
        pool (`datasets.Dataset`): The pool, validated by the task.
        image_processor ([`~transformers.BaseImageProcessor`]): The model's processor (saved with every checkpoint).
        class_names (`list[str]`): The run's classes.
        data_options (`dict`): The task's `validate` / `prepare` options (its `run_options`: e.g. `image_column`,
            `objects_column`, `bbox_format`; `mask_column`, `reduce_labels`).
        score_options (`dict`): The task's `image_scores` options besides the measure (its `score_options`: e.g.
            `aggregation`, `threshold`, `num_labels`).
        num_channels (`int`, *optional*, defaults to 3): The model's input channels.

    With `annotation: human`, `people_labels` is set (a callable returning the run's store of the annotations people
    gave, the task's `label_store`): the labeled rows are trained on with those, not with the pool's column.
    """

    people_labels = None

    def __init__(self, task, pool, image_processor, class_names, data_options: dict, score_options: dict,
                 num_channels: int = 3):  # fmt: skip
        self.task, self.pool, self.image_processor, self.class_names = (
            task,
            pool,
            image_processor,
            class_names,
        )
        self.data_options, self.score_options = dict(data_options), score_options
        self.prepare_options = {**self.data_options, "num_channels": num_channels}
        self.annotation_column = self.data_options[task.annotation_option]
        self.metric_names = task.metric_names
        self.metric = task.metric_names[0]

    def outputs(self, strategy) -> tuple[str, ...]:
        """What `score` computes for `strategy` (see [`annotated_outputs`])."""
        return annotated_outputs(self.task, strategy)

    def oracle_labels(self, indices: np.ndarray) -> None:
        """`None`: the simulated annotator reveals the pool's own annotations (the rows are trained on as stored)."""
        return None

    def label_store(self, run_dir):
        """The run's store of the annotations people gave (the task's `label_store`).

        Raises:
            `ValueError`: the task has no human-annotation path."""
        if self.task.label_store is None:
            raise ValueError(
                f"annotation: human has no {self.task.name} path yet; set annotation: simulated."
            )
        return self.task.label_store(run_dir, self.class_names)

    def stored_labels(self, store, indices: np.ndarray) -> tuple[np.ndarray, None]:
        """(which of `indices` people annotated, `None`: the annotations are read from `store` when trained on)."""
        return np.isin(indices, store.labeled_indices), None

    def query_guesses(self, model, indices: np.ndarray, *, args, accelerator) -> dict:
        """The surrogate's annotations of each queried image (`predictions`: the task's `query_predictions`, kept
        above the run's score threshold), carried by the query as pre-annotations."""
        import datasets

        from ..data.images import open_image

        column = self.data_options["image_column"]
        rows = self.pool.select(np.asarray(indices).tolist()).cast_column(
            column, datasets.Image(decode=False)
        )
        images = [open_image(value, pool_index=int(i)) for i, value in zip(indices.tolist(), rows[column])]
        # Boxes are kept above the run's score threshold; a mask has none (every pixel gets its argmax).
        options = {"threshold": self.score_options["threshold"]} if "threshold" in self.score_options else {}
        predictions = self.task.query_predictions(model, self.image_processor, images,
                                                  num_channels=self.prepare_options["num_channels"], **options)  # fmt: skip
        return {"predictions": predictions}

    def write_query(self, directory, indices: np.ndarray, query: dict, *, image_column: str, round: int,
                    model_version: str):  # fmt: skip
        """Write the query batch of `round` for annotators (the task's `write_query`: for boxes a COCO template and a
        Label Studio `RectangleLabels` import, for masks empty mask templates and a `BrushLabels` import, the
        surrogate's guesses as pre-annotations)."""
        return self.task.write_query(directory, self.pool, indices, image_column=image_column,
                                     class_names=self.class_names, round=round, scores=query["scores"],
                                     predictions=query.get("predictions"), model_version=model_version,
                                     **{self.task.annotation_option: self.annotation_column})  # fmt: skip

    def labeled_rows(self, indices: np.ndarray):
        """The pool rows `indices` with the annotations the run trains on: people's (`people_labels`, in the
        annotation column: COCO boxes, masks of class ids) with human annotation, else the pool's own."""
        rows = self.pool.select(np.asarray(indices).tolist())
        if self.people_labels is None:
            return rows
        store = self.people_labels()
        annotations = store.annotations(np.asarray(indices).tolist())
        if self.annotation_column in rows.column_names:
            rows = rows.remove_columns(self.annotation_column)
        return rows.add_column(self.annotation_column, annotations, feature=store.annotation_feature)

    def class_counts(self, indices: np.ndarray, labels=None) -> Counter:
        """Per class name, what the annotations of the rows `indices` hold of it (the task's `class_counts`)."""
        return self.task.class_counts(
            self.labeled_rows(indices), self.class_names, **self.annotation_options()
        )

    def annotation_options(self) -> dict:
        """The task's options for the annotations trained on: the run's, with human annotation those that read
        people's as the store keeps them (boxes as COCO pixels, masks as class ids)."""
        if self.people_labels is None:
            return dict(self.data_options)
        return {**self.data_options, **getattr(self.task.label_store, "prepare_options", {})}

    def prepared(self, dataset, *, with_annotations: bool = True):
        """`dataset` as the model reads it (the task's `prepare` as a transform); without its annotations when
        scoring (the pool's labels are not read to select)."""
        if not with_annotations and self.annotation_column in dataset.column_names:
            dataset = dataset.remove_columns(self.annotation_column)
        return dataset.with_transform(self.task.prepare(self.image_processor, **self.prepare_options))

    def train_dataset(self, indices: np.ndarray):
        """The labeled rows `indices` with their annotations (see `labeled_rows`), prepared."""
        rows = self.labeled_rows(indices)
        if self.people_labels is None:
            return self.prepared(rows)
        options = {**self.prepare_options, **self.annotation_options()}
        return rows.with_transform(self.task.prepare(self.image_processor, **options))

    def inner_trainer(
        self, model, args, *, train_dataset=None, eval_dataset=None, teacher=None, callbacks=None
    ):
        """The stock `Trainer` with the task's collator, the model's own loss and the task's metric."""
        if teacher is not None:
            raise ValueError(
                f"Distillation from the surrogate (distill_alpha > 0) is for image classification; a "
                f"{self.task.name} run trains with the model's own loss: set distill_alpha: 0."
            )
        args = (
            dataclasses.replace(args, **self.task.training_arguments)
            if self.task.training_arguments
            else args
        )
        return AnnotatedTrainer(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                       data_collator=self.task.collate, callbacks=callbacks,
                       compute_metrics=self.task.compute_metrics(self.image_processor, class_names=self.class_names))  # fmt: skip

    def score(self, model, indices: np.ndarray, outputs: tuple[str, ...], *, args, accelerator, gather: bool = True,
              measure: str | None = None):  # fmt: skip
        """`score_pool` of `model` on the pool rows `indices`: `"scores"` are the task's per-image scores with the
        strategy's `measure` (`"mc_scores"`: over MC-dropout passes), `"features"` its pooled features,
        `"embeddings"` its BADGE gradient embeddings."""
        image_scores = gradient_embeddings = None
        if {"scores", "mc_scores"} & set(outputs):
            image_scores = functools.partial(self.task.image_scores, measure=measure, **self.score_options)
        if "embeddings" in outputs:
            gradient_embeddings = functools.partial(self.task.gradient_embeddings, **self.score_options)
        dataset = self.prepared(self.pool.select(np.asarray(indices)), with_annotations=False)
        settings = self.task.feature_config if "features" in outputs else {}
        with _config_values(model, settings):
            scored = score_pool(model, dataset, indices, batch_size=args.scoring_batch_size, outputs=outputs,
                                accelerator=accelerator, gather=gather, num_workers=args.dataloader_num_workers,
                                show_progress=not args.disable_tqdm, collate=self.task.collate,
                                mc_samples=args.mc_samples, image_scores=image_scores,
                                pooled_features=self.task.pooled_features,
                                gradient_embeddings=gradient_embeddings)  # fmt: skip
        if scored.embeddings is not None:
            # BADGE holds them whole (C·D numbers per image): say what they cost, as the pool grows.
            rows, width = scored.embeddings.shape
            logger.info(f"BADGE gradient embeddings: {rows} images × {width} numbers, "
                        f"{scored.embeddings.element_size() * rows * width / 2**20:.1f} MiB on this process.")  # fmt: skip
        return scored

    def row_digests(self, rows: np.ndarray) -> np.ndarray:
        """A digest of each row's stored image bytes and annotations (masks: their stored bytes; `uint64`, never
        0)."""
        import datasets

        raw = self.pool.select(np.asarray(rows))
        # Image columns (the images, and masks) are digested by their stored bytes, never by a decoded object.
        images = [name for name, feature in raw.features.items() if isinstance(feature, datasets.Image)]
        for name in images:
            raw = raw.cast_column(name, datasets.Image(decode=False))
        digests = np.empty(len(rows), dtype=np.uint64)
        for position, row in enumerate(raw):
            digest = hashlib.blake2b(digest_size=8)
            for name in images:
                digest.update(_stored_bytes(row.pop(name)))
            digest.update(repr(sorted(row.items())).encode())
            digests[position] = int.from_bytes(digest.digest(), "big") or 1
        return digests


def _stored_bytes(image) -> bytes:
    if not image:
        return b""
    content = image.get("bytes")
    if content is None and image.get("path"):
        with open(image["path"], "rb") as file:
            content = file.read()
    return content or b""


@contextlib.contextmanager
def _config_values(model, values):
    """Run `model` with these config values (e.g. `output_hidden_states=True` while pooled features are read)."""
    config = getattr(model, "config", None)
    if config is None or not values:
        yield
        return
    before = {name: getattr(config, name, None) for name in values}
    for name, value in values.items():
        setattr(config, name, value)
    try:
        yield
    finally:
        for name, value in before.items():
            setattr(config, name, value)


class AnnotatedTrainer(WholeSetEvaluation, Trainer):
    """The stock `Trainer`, evaluating the whole set on every process (see [`WholeSetEvaluation`])."""
