"""How `PruneFuseTrainer` sets up a run whose examples carry annotations the model's image processor transforms with
the image (object detection: boxes follow the resize; semantic segmentation: masks are resized with the pixels). The
run's steps are the same as for classification; what differs is checked and built here, before any work: the task,
the pool and evaluation set (validated by the task, with the options its `run_options` reads from the settings), the
model of the task's Auto class, its image processor, and the run's [`AnnotatedExamples`].
"""

from __future__ import annotations

import copy
import os

import numpy as np
import torch
import transformers
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel, Trainer, set_seed
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.utils import logging

from ..annotation.labels import LabelBatch
from ..data.image_processor import model_num_channels, pretrained_image_processor
from ..data.images import first_image
from ..data.pool import DataPool
from ..data.validation import check_labeling_budget
from ..pruning.modeling import has_weights
from ..pruning.prune import prune_model
from ..pruning.support import check_supported_model
from ..selection.gradient_embedding import HeadCalls
from ..selection.scoring import active_dropout_layers
from ..selection.strategies import get_strategy
from ..tasks import get_task, task_for_model
from ..tasks.classification import CLASSIFICATION
from ..utils.hub_ids import check_hub_model
from .run_state import initialized_run
from .task_examples import AnnotatedExamples, annotated_outputs
from .training_settings import check_model_settings

logger = logging.get_logger(__name__)

# The run setting of a task's column option where their names differ: the guide's mask column is `label`.
_COLUMN_SETTINGS = {"mask_column": "label_column"}


def annotated_task(model, args):
    """
    The run's task when it is not image classification (set by `args.task`, else inferred from the model's class
    or config), else `None`.

    Raises:
        `ValueError`: `args.task` names a task the model has no class for.
    """
    config = _model_config(model)
    if args.task is not None:
        task = get_task(args.task)
        model_type = getattr(config, "model_type", None)
        if task is not CLASSIFICATION and model_type is not None and model_type not in task.model_types():
            raise ValueError(
                f"task: {task.name} needs a model with an {task.auto_model_class} class; '{model_type}' has none. "
                f"Use a model of {sorted(task.model_types())[:6]}..., or another task."
            )
    else:
        try:
            task = task_for_model(model if isinstance(model, PreTrainedModel) else config)
        except ValueError:
            return None  # the classification checks name what the model is and what to use instead
    return None if task is CLASSIFICATION else task


def model_class_names(model) -> list[str] | None:
    """
    The class names a model's config gives (`id2label`, in id order), or `None` when it gives none of its own
    (transformers' defaults `LABEL_0`, `LABEL_1`, ...).

    Example:

    ```python
    >>> model_class_names(SegformerConfig(id2label={0: "road", 1: "car"}))
    ['road', 'car']
    ```
    """
    config = _model_config(model)
    id2label = getattr(config, "id2label", None) or {}
    names = [id2label.get(i) for i in range(len(id2label))]
    if not names or any(not name or name == f"LABEL_{i}" for i, name in enumerate(names)):
        return None
    return [str(name) for name in names]


def _model_config(model):
    if isinstance(model, PreTrainedModel):
        return model.config
    if isinstance(model, PretrainedConfig):
        return model
    if isinstance(model, dict) and "model_type" in model:
        values = dict(model)
        return AutoConfig.for_model(values.pop("model_type"), **values)
    if isinstance(model, (str, os.PathLike)):
        try:
            return AutoConfig.from_pretrained(model, local_files_only=True)
        except (OSError, ValueError):
            return None
    return None


def init_annotated_run(trainer, task, model, args, train_dataset, eval_dataset, processing_class, callbacks,
                       compute_metrics, *, recipe, resume_command) -> None:  # fmt: skip
    """`PruneFuseTrainer.__init__` for `task`: every check first, then the pruned surrogate, then the `Trainer`."""
    _check_settings(task, args)
    if train_dataset is None:
        raise ValueError(
            "PruneFuseTrainer needs the pool as `train_dataset` (a datasets.Dataset or a DataPool)."
        )
    pool = train_dataset if isinstance(train_dataset, DataPool) else DataPool(train_dataset)
    options = task.run_options(args)
    column, option = options[task.annotation_option], task.annotation_option
    trainer.task = task
    human = args.annotation == "human"
    # People annotate a human run's pool: it may have no annotation column (its images are all it needs).
    annotated = column in pool.dataset.column_names
    if (not annotated and not human) or args.image_column not in pool.dataset.column_names:
        model_name = type(model).__name__ if isinstance(model, PreTrainedModel) else "this model"
        raise ValueError(
            f"The pool has no column {column!r} or {args.image_column!r} (its columns are "
            f"{pool.dataset.column_names}): a {task.name} run with {model_name} reads each image and its annotations "
            f"({', '.join(task.columns)}). Set {_COLUMN_SETTINGS.get(option, option)} / image_column, or use an "
            "*ForImageClassification model for a classification dataset."
        )
    if annotated:
        trainer.class_names = task.class_names(pool.dataset, column, args.class_names)
    elif args.class_names is not None:
        trainer.class_names = list(args.class_names)
    elif model_class_names(model) is not None:  # a checkpoint that names its classes (config.id2label)
        trainer.class_names = model_class_names(model)
        logger.info(f"class_names: the model's id2label, {trainer.class_names[:10]}.")
    else:
        raise ValueError(
            f"class_names: None, and the pool has no {column!r} column to read the classes from: a {task.name} run "
            "with annotation: human needs the class names annotators choose from. Set class_names: [name, ...] (CLI: "
            "--class_names), in class-id order, or start from a model whose config names its classes (id2label)."
        )
    # What can be refused without reading every image and its annotations, first.
    check_labeling_budget(args, len(pool))
    trainer.strategy = get_strategy(args.strategy)
    outputs = annotated_outputs(task, trainer.strategy)  # a strategy the task cannot rank
    set_seed(args.seed)
    dense = build_task_model(model, task, trainer.class_names)
    check_supported_model(dense, pruning_ratio=args.pruning_ratio)
    check_model_settings(dense, args)
    if "mc_scores" in outputs:
        active_dropout_layers(dense)  # raises, naming the model and the config fields that add dropout
    if "embeddings" in outputs:
        HeadCalls(dense)  # raises, naming the model, when no layer can give its logits
    trainer.pruned_at_init = None
    if args.pruning_ratio > 0 and not initialized_run(args):
        with torch.random.fork_rng():
            trainer.pruned_at_init = prune_model(dense, args.pruning_ratio, importance=args.importance)

    if annotated:
        pool.dataset = task.validate(pool.dataset, class_names=trainer.class_names, **options)
        if human:
            logger.info(f"annotation: human: the pool's {column!r} column is not trained on; the run trains on the "
                        "annotations people give for its queries.")  # fmt: skip
    if eval_dataset is not None:
        eval_dataset = _validated(task, eval_dataset, options, trainer.class_names, "the evaluation set")
    trainer.initial_labels = LabelBatch(np.zeros(0, np.int64), np.zeros(0, np.int64), source="none")
    processor = processing_class if processing_class is not None else pretrained_image_processor(model)
    if processor is None:
        processor = task_image_processor(
            dense.config, args.image_size, first_image(pool.dataset, args.image_column)
        )
    trainer.examples = AnnotatedExamples(task, pool.dataset, processor, trainer.class_names, options,
                                         task.score_options(args, trainer.class_names),
                                         num_channels=model_num_channels(dense.config))  # fmt: skip
    if human:  # the labeled set is trained on with the annotations people gave (the run's store)
        trainer.examples.people_labels = lambda: trainer.examples.label_store(trainer.run_dir.path)
    first = trainer.examples.prepared(pool.dataset.select([0]), with_annotations=False)[0]
    input_shape = tuple(first["pixel_values"].shape)
    for name, value in task.training_arguments.items():
        setattr(args, name, value)
    Trainer.__init__(trainer, model=dense, args=args, data_collator=task.collate, processing_class=processor,
                     eval_dataset=None if eval_dataset is None else trainer.examples.prepared(eval_dataset),
                     callbacks=callbacks, compute_metrics=compute_metrics if compute_metrics is not None else
                     task.compute_metrics(processor, class_names=trainer.class_names))  # fmt: skip
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.preprocessor = trainer.pool_pixels = None
    trainer.init_run_fields(pool, eval_dataset, input_shape, recipe, resume_command)


def validated_annotations(trainer, dataset, what: str, allow_unlabeled: bool):
    """A dataset given to `evaluate()` / `predict()`, validated by the run's task (without annotations only where
    `allow_unlabeled`)."""
    options = trainer.examples.data_options
    if isinstance(dataset, DataPool):
        dataset = dataset.dataset
    if allow_unlabeled and trainer.examples.annotation_column not in dataset.column_names:
        return dataset
    return _validated(trainer.task, dataset, options, trainer.class_names, what)


def _validated(task, dataset, options: dict, class_names: list[str], what: str):
    if isinstance(dataset, DataPool):
        dataset = dataset.dataset
    try:
        return task.validate(dataset, class_names=class_names, **options)
    except ValueError as error:
        raise ValueError(f"{what.capitalize()}: {error}") from None


def _check_settings(task, args) -> None:
    """Refuse, by name, the settings that are image classification's only."""
    refused = {
        "annotation": (
            args.annotation == "human" and task.ingest_labels is None,
            "human",
            "simulated (the annotations of the pool's own column)",
        ),
        "seed_labels": (
            args.seed_labels is not None,
            args.seed_labels,
            "none (with annotation: human, people label the first query of initial_labeled_size images)",
        ),
        "annotation_resolve": (
            args.annotation_resolve == "majority",
            "majority",
            "ground_truth, latest or none (a majority of box sets or masks is not defined)",
        ),
        "selector": (args.selector == "linear_probe", "linear_probe", "trained"),
        "surrogate_distill_epochs": (args.surrogate_distill_epochs > 0, args.surrogate_distill_epochs, "0"),
        "augment": (args.augment, True, "false (augmentations that move annotations are not applied)"),
    }
    if "distill_alpha" in args.method_overrides and args.distill_alpha > 0:
        refused["distill_alpha"] = (True, args.distill_alpha, "0 (the models train with their own loss)")
    for name, (is_set, value, fix) in refused.items():
        if is_set:
            raise ValueError(
                f"{name}: {value!r} is for image classification runs; a {task.name} run needs {name}: {fix}."
            )
    if args.distill_alpha > 0:
        logger.info(
            f"An {task.name} run trains with the model's own loss: distill_alpha of method {args.method} is 0."
        )
        args.distill_alpha = 0.0


def build_task_model(model, task, class_names: list[str]) -> PreTrainedModel:
    """
    The dense model of a `task` run, of the task's Auto class, with `class_names` as its labels: a model (used as it
    is, its label count checked), a config or a dict with `model_type` (random weights), or a Hub id or checkpoint
    directory (its weights, the head resized to the classes).

    Raises:
        `ValueError`: a model with another label count, or a model type without a class of the task.
    """
    labels = {
        "id2label": dict(enumerate(class_names)),
        "label2id": {name: i for i, name in enumerate(class_names)},
    }
    if isinstance(model, PreTrainedModel):
        if model.config.num_labels != len(class_names):
            raise ValueError(
                f"The model has {model.config.num_labels} labels but the dataset has {len(class_names)} classes "
                f"({class_names}). Pass a config, Hub id or path instead (the head is then sized), or a model built "
                "with num_labels matching the data."
            )
        model.config.update(labels)
        return model
    path = None
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        config = AutoConfig.from_pretrained(path, local_files_only=check_hub_model("model", path))
    else:
        config = copy.deepcopy(_model_config(model))
    if config is None or config.model_type not in task.model_types():
        raise ValueError(
            f"{type(config).__name__ if config is not None else model!r} has no {task.auto_model_class} class, so it "
            f"cannot be the dense model of a {task.name} run."
        )
    if path is not None and (has_weights(path) or not os.path.exists(path)):
        dense = task.model_class().from_pretrained(path, ignore_mismatched_sizes=True, num_labels=len(class_names),
                                                   local_files_only=check_hub_model("model", path), **labels)  # fmt: skip
    else:
        config.num_labels = len(class_names)
        config.update(labels)
        dense = task.model_class().from_config(config)
    dense.config.architectures = [type(dense).__name__]
    return dense


# Model types transformers maps to no image processor whose checkpoints ship another type's (RT-DETR v2's
# `preprocessor_config.json` names `RTDetrImageProcessor`).
PROCESSOR_MODEL_TYPES = {"rt_detr_v2": "rt_detr"}


def task_image_processor(config, image_size: int | None, image) -> transformers.BaseImageProcessor:
    """
    The image processor of a model built from a config (no checkpoint brought one): the model type's processor
    (its PIL implementation; RT-DETR v2 uses RT-DETR's) resizing to `image_size` × `image_size`, else to the first
    image's size.

    Raises:
        `ValueError`: transformers has no image processor for the model type (pass `processing_class`).
    """
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

    names = IMAGE_PROCESSOR_MAPPING_NAMES.get(PROCESSOR_MODEL_TYPES.get(config.model_type, config.model_type))
    if isinstance(names, dict):
        name = names.get("pil") or next(iter(names.values()), None)
    else:
        name = next((n for n in (names or ()) if n), None)
    if name is None:
        raise ValueError(
            f"transformers has no image processor for '{config.model_type}'; pass processing_class= (the model's "
            "image processor)."
        )
    width, height = (image_size, image_size) if image_size else image.size
    return getattr(transformers, name)(size={"height": height, "width": width})
