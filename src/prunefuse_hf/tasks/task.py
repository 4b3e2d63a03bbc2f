"""What a task (image classification, object detection, semantic segmentation) says, as one frozen dataclass.

The method never asks which task it runs: the trainer, the CLI and the Hub code call the task's functions. Each
task module under `tasks/` builds one `Task` from its own functions; the lower packages (data, pruning,
selection, annotation) never import `tasks/`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True)
class CardText:
    """
    What the model cards say of a task's models: a new task writes its card text here, and the card code never asks
    which task it renders.

    Args:
        model_kind (`str`): What a model of the task is, in a sentence (`image classifier`, `object detector`).
        variable (`str`): The name the cards' snippets give the model's pipeline (`classifier`, `detector`).
        metric_name (`str`): The headline metric (the task's `card_metric`) in a table header (`accuracy`, `mAP`).
        metric_phrase (`str`): The headline metric in a sentence, "It reaches {metric_phrase} of 0.91"
            (`an accuracy`, `a COCO mAP (IoU 0.50:0.95)`).
        loss (`str`): The final training's loss without distillation (`plain cross-entropy`).
        quickstart (`Callable`): `quickstart(source, *, num_channels, labels) -> str`: Python code that runs the
            model saved at `source` (a Hub id or a folder) on `image.png`; `labels` are its class names.

    Example:

    ```python
    >>> from prunefuse_hf.tasks import get_task
    >>> card = get_task("object-detection").card
    >>> card.model_kind, card.metric_name, card.loss
    ('object detector', 'mAP', "the model's own loss")
    >>> print(card.quickstart("me/detector", num_channels=3, labels=[]).splitlines()[2])
    detector = pipeline("object-detection", model="me/detector")
    ```
    """

    model_kind: str
    variable: str
    metric_name: str
    metric_phrase: str
    loss: str
    quickstart: Callable


@dataclass(frozen=True)
class Task:
    """
    One task of the package, described by its functions.

    Args:
        name (`str`):
            The `pipeline()` task name: `image-classification`, `object-detection`, `image-segmentation`.
        auto_model_class (`str`):
            Name of the transformers Auto class of its models (`AutoModelForObjectDetection`); see [`model_class`].
        model_mapping (`str`):
            Name of the transformers mapping from model type to model class of that Auto class
            (`MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES`), used to infer the task from a model or config.
        columns (`tuple[str, ...]`):
            The dataset columns it reads, by default name (`("image", "objects")`).
        validate (`Callable`):
            `validate(dataset, **column_options) -> dataset`: checks the dataset before any work, raising
            `ValueError` naming the pool index, the value and the fix.
        class_names (`Callable`):
            `class_names(dataset, column, given=None) -> list[str]`: the class names of a dataset.
        prepare (`Callable`):
            `prepare(image_processor, **options)`: what turns the dataset's rows into model inputs with the model's
            image processor (with the annotations, where the task has them).
        collate (`Callable`):
            `collate(examples: list[dict]) -> dict`: the batch the model takes (the Trainer's `data_collator`).
        image_scores (`Callable`):
            `image_scores(outputs, measure, **options) -> Tensor[B]`: per-image acquisition scores that the
            strategies rank, from the model's outputs, for `measure` in `least_confidence` / `entropy` / `margin`;
            higher means "pick first".
        pooled_features (`Callable`, *optional*):
            `pooled_features(outputs) -> Tensor[B, D]`: the features of the diversity strategies. `None`: read inside
            the model by `selection.score_pool` (the classifier's input).
        gradient_embeddings (`Callable`, *optional*):
            `gradient_embeddings(head_input, head_output, **score_options) -> Tensor[B, E]`: BADGE's per-image
            last-layer gradient embedding from the input and output of the layer that gave the logits (found by
            `selection.HeadCalls`), for `badge`. `None`: the task has none.
        per_image_outputs (`frozenset[str]`):
            What the task computes per image while the pool is scored, for the strategies whose
            `per_image_outputs` it covers: `scores` (`image_scores` with a measure), `mc_scores` (`image_scores`
            with `measure="bald"` over MC-dropout passes), `features` (`pooled_features`), `embeddings`
            (`gradient_embeddings`). Empty for image classification, whose strategies read class probabilities.
        compute_metrics (`Callable`, *optional*):
            A factory: `compute_metrics(image_processor=..., class_names=...) -> Callable[[EvalPrediction], dict]`
            for the `Trainer`. `None`: the trainer's default (classification accuracy).
        metric_names (`tuple[str, ...]`):
            Keys the metric returns; the first is the headline number (`accuracy`, `map`).
        annotation_formats (`tuple[str, ...]`):
            The label files it writes for annotators and reads back.
        label_studio_tag (`str`):
            The Label Studio control tag of its labeling config (`Choices`, `RectangleLabels`, `BrushLabels`).
        card_metric (`str`):
            The metric the model card reports per labeling budget.
        card ([`CardText`], *optional*):
            What the model cards say of the task's models (their name, metric, loss and quickstart snippet).
        distills (`bool`, *optional*, defaults to `False`):
            Whether the final model may distill from the surrogate (`distill_alpha`) and smooth its labels
            (`label_smoothing_factor`): a classifier's cross-entropy. `False`: the models train with their own loss
            (detectors, segmenters); their runs set `distill_alpha: 0`, and the cards say "trains with its own loss".
        ragged_labels (`bool`, *optional*, defaults to `False`):
            Whether its labels differ in size from image to image (box lists; masks at each image's own size): its
            evaluation keeps them as per-image lists, which `accelerate` cannot gather, so under several processes
            each one evaluates the whole set (see `WholeSetEvaluation`). `False`: one array (class ids), which the
            stock evaluation shards, gathers and concatenates, and which the metric reads whole (so
            `eval_do_concat_batches: false` is refused).
        training_arguments (`Mapping[str, object]`):
            `TrainingArguments` values the task needs (e.g. `remove_unused_columns=False` for detection labels).
        annotation_option (`str`):
            The keyword of `validate` / `prepare` / `run_options` naming the annotation column (`objects_column`,
            `mask_column`).
        run_options (`Callable`, *optional*):
            `run_options(args) -> dict`: the `validate` / `prepare` options (columns and their layout) from a run's
            settings (a `PruneFuseConfig`, read by field name).
        score_options (`Callable`, *optional*):
            `score_options(args, class_names) -> dict`: the `image_scores` options besides the measure, from a run's
            settings (e.g. the aggregation).
        class_counts (`Callable`, *optional*):
            `class_counts(dataset, class_names, **run_options) -> Counter`: per class name, what the rows' annotations
            hold of it (objects; images whose mask holds the class).
        feature_config (`Mapping[str, object]`):
            Config values the model runs with while `pooled_features` reads its outputs (a segmenter returns its
            encoder's `hidden_states` only with `output_hidden_states=True`).
        label_store (`Callable`, *optional*):
            `label_store(run_dir, class_names)`: the store of the annotations people gave in a run with
            `annotation: human` (its `labels` are `{pool_index: annotation}`, `labeled_indices` their pool indices,
            `annotations(indices)` their values, `annotation_feature` their `datasets` feature, `prepare_options` the
            `prepare` options that read them as stored); see [`AnnotationStore`].
            `None`: the task has no human-annotation path (image classification's is the shared `LabelStore`).
        stored_answers ([`~prunefuse_hf.annotation.edits.StoredAnswers`], *optional*):
            How the annotations its `label_store` keeps compare with a Label Studio project's, so that `label-studio
            pull` and the loop report answers edited after they were pulled. `None`: class labels' (image
            classification's).
        ingest_labels (`Callable`, *optional*):
            `ingest_labels(run_dir, source, **options) -> AddResult`: brings annotators' answers for the open query
            into that store (what `prunefuse-hf label`, `label-studio pull` and `add_labels` call).
        labels_metavar (`str`, defaults to `"FILE"`):
            What the printed hints call the value of `prunefuse-hf label RUN --labels ...` (segmentation's masks come
            as a folder too: `FILE_OR_FOLDER`).
        write_query (`Callable`, *optional*):
            `write_query(directory, dataset, indices, *, image_column, class_names, round, predictions,
            model_version, scores, <annotation_option>)`: writes a round's query batch for annotators.
        query_predictions (`Callable`, *optional*):
            `query_predictions(model, image_processor, images, *, num_channels, **options) -> list`: the trained
            surrogate's guess per queried image, carried by the query as pre-annotations (`threshold`, the run's score
            threshold, where the task's `score_options` have one).
        label_studio_predictions (`Callable`, *optional*):
            `label_studio_predictions(model, image_processor, images, *, class_names, model_version, num_channels,
            settings) -> list[dict]`: the trained surrogate's Label Studio prediction of each image (`result` in the
            task's `label_studio_tag`), what the ML backend (`prunefuse-hf label-studio backend`) answers. `None`:
            image classification's `Choices` (the backend's own), or no backend for the task.
        load_split (`Callable`, *optional*):
            `load_split(data_args, config, split) -> datasets.Dataset`: one split of a recipe's `dataset_name` (a saved
            dataset, a Hub dataset, or the task's image folder layout), as `prunefuse-hf run` reads it, unchecked (the
            trainer checks it with the run's class names).
        synthetic_name, synthetic_pool (`str`, `Callable`, *optional*):
            The `dataset_name` of the task's built-in synthetic pool, and `synthetic_pool(size, *, split, seed)`.

    Example:

    ```python
    >>> from transformers import DetrImageProcessorPil, Trainer, TrainingArguments
    >>> from prunefuse_hf.tasks import get_task, synthetic_detection_pool
    >>> task = get_task("object-detection")
    >>> pool = task.validate(synthetic_detection_pool(8, seed=0))
    >>> processor = DetrImageProcessorPil(size={"height": 96, "width": 96})
    >>> prepared = pool.with_transform(task.prepare(processor))
    >>> batch = task.collate([prepared[0], prepared[1]])
    >>> sorted(batch), tuple(batch["pixel_values"].shape)
    (['labels', 'pixel_mask', 'pixel_values'], (2, 3, 96, 96))
    >>> args = TrainingArguments("out", **task.training_arguments)  # doctest: +SKIP
    >>> trainer = Trainer(model, args, train_dataset=prepared, data_collator=task.collate,  # doctest: +SKIP
    ...                   compute_metrics=task.compute_metrics(processor, class_names=task.class_names(pool)))
    ```
    """

    name: str
    auto_model_class: str
    model_mapping: str
    columns: tuple[str, ...]
    validate: Callable
    class_names: Callable
    prepare: Callable
    collate: Callable
    image_scores: Callable
    pooled_features: Callable | None = None
    gradient_embeddings: Callable | None = None
    per_image_outputs: frozenset[str] = frozenset()
    compute_metrics: Callable | None = None
    metric_names: tuple[str, ...] = ()
    annotation_formats: tuple[str, ...] = ()
    label_studio_tag: str = ""
    card_metric: str = ""
    card: CardText | None = None
    distills: bool = False
    ragged_labels: bool = False
    training_arguments: Mapping[str, object] = field(default_factory=dict)
    annotation_option: str = ""
    run_options: Callable | None = None
    score_options: Callable | None = None
    class_counts: Callable | None = None
    feature_config: Mapping[str, object] = field(default_factory=dict)
    label_store: Callable | None = None
    stored_answers: object | None = None
    ingest_labels: Callable | None = None
    labels_metavar: str = "FILE"
    write_query: Callable | None = None
    query_predictions: Callable | None = None
    label_studio_predictions: Callable | None = None
    load_split: Callable | None = None
    synthetic_name: str = ""
    synthetic_pool: Callable | None = None

    def __post_init__(self):
        object.__setattr__(self, "training_arguments", MappingProxyType(dict(self.training_arguments)))
        object.__setattr__(self, "feature_config", MappingProxyType(dict(self.feature_config)))

    def load_pool_split(self, data_args, config):
        """
        The split a run started from a recipe selects from, before its `max_pool_size` draw, as `prunefuse-hf run`
        reads it and as a subset rebuilds it: the task's built-in synthetic pool when `dataset_name` names it
        (`max_pool_size` images, default `SYNTHETIC_POOL_SIZE`, from Fashion-MNIST's train items, seeded with
        `config.seed`; the draw then keeps it whole), else `load_split(data_args, config, data_args.train_split)`.

        Args:
            data_args (`DataArguments`): The recipe's data fields (`dataset_name`, `train_split`, `max_pool_size`,
                `annotations_file`, `dataset_revision`).
            config: The run's settings, read by field name (`seed`, the columns and layout `load_split` reads).

        Returns:
            `datasets.Dataset`: the split, unchecked (the trainer checks it with the run's class names).

        Raises:
            `ValueError`: the task has no loader of recipe datasets.
        """
        from ..constants import SYNTHETIC_POOL_SIZE

        if self.synthetic_name and data_args.dataset_name == self.synthetic_name:
            size = data_args.max_pool_size or SYNTHETIC_POOL_SIZE
            return self.synthetic_pool(size, split="train", seed=config.seed)
        if self.load_split is None:
            raise ValueError(f"The {self.name} task reads no recipe dataset (it has no load_split).")
        return self.load_split(data_args, config, data_args.train_split)

    def model_class(self):
        """The transformers Auto class of the task's models (e.g. `transformers.AutoModelForObjectDetection`)."""
        import transformers

        return getattr(transformers, self.auto_model_class)

    def model_types(self) -> Mapping[str, str]:
        """Model type -> model class name of the task's models (transformers' mapping)."""
        from transformers.models.auto import modeling_auto

        return getattr(modeling_auto, self.model_mapping)

    @property
    def class_suffix(self) -> str:
        """Suffix of the task's model class names (`ForObjectDetection`)."""
        return self.auto_model_class.removeprefix("AutoModel")

    def __repr__(self) -> str:
        return f"Task(name={self.name!r}, auto_model_class={self.auto_model_class!r})"
