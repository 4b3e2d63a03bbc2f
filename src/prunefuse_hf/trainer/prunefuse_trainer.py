"""`PruneFuseTrainer`: a `transformers.Trainer` whose `train()` runs PruneFuse.

    trainer = PruneFuseTrainer(model, args=PruneFuseConfig(...), train_dataset=pool, eval_dataset=test)
    trainer.train()          # prune -> rounds of (train surrogate, score, select, label) -> fuse -> train fused
    trainer.save_model(dir)  # pipeline-ready fused checkpoint: weights, config with class names, processor, card
    trainer.push_to_hub()    # fused model, selected subset (and surrogate) with their cards

A run is a list of resumable steps, read top to bottom in `_plan_steps` and `_run_step`: `init` (prune θ0 into
the surrogate, draw the initial labeled set); per round r, `train_surrogate:r`, `train_dense:r` (the fused or
fresh dense model, at the last round and with `eval_dense_every_round`), `sync:r`, `select:r` (score the
unlabeled pool, write the query) and `label:r` (labels of the query come in: from the pool's label column in
simulation, from annotators otherwise); then `report`. Every step ends by writing its outputs and then
`state.json` atomically, so an interrupted run resumes at the first unfinished step with the same result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from transformers import (
    AutoConfig,
    PreTrainedModel,
    Trainer,
    TrainerCallback,
    set_seed,
)
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import TrainOutput
from transformers.utils import logging

from ..annotation.identity import check_query_rows, unlabeled_queries
from ..annotation.store import ingest_labels
from ..constants import (
    DENSE_INIT_DIR,
    IMAGE_PATH,
    PIXEL_VALUES,
    ROW_DIGESTS,
    STATE_NAME,
)
from ..data.image_processor import build_image_processor, model_num_channels, pretrained_image_processor
from ..data.images import first_image
from ..data.pixel_cache_build import usable_cores
from ..data.pixel_dataset import PixelDataset
from ..data.pool import DataPool
from ..data.preprocessing import ImagePreprocessor
from ..data.validation import check_batchnorm_batch_sizes, check_input_size, check_labeling_budget
from ..hub.cards import write_model_card
from ..hub.push import push_run
from ..pruning.modeling import build_dense_model
from ..pruning.prune import prune_model
from ..pruning.support import check_supported_model
from ..selection.scoring import active_dropout_layers, classifier_module
from ..selection.strategies import get_strategy
from ..tasks.classification import CLASSIFICATION
from ..utils.hub_ids import check_hub_model
from ..utils.io import redact_secrets
from ..utils.run_directory import RunDirectory, step_name
from ..utils.run_metrics import build_metrics
from . import steps
from .annotated_run import annotated_task, init_annotated_run, validated_annotations
from .distillation_trainer import compute_accuracy
from .inputs import labeled_rows, pixel_cache_options, prepare_eval_dataset, prepare_pool, seed_labels
from .prunefuse_config import PruneFuseConfig
from .run_logging import (
    STEP_RECORD,
    configure_package_logging,
    describe_fact,
    quiet_progress_bars,
    without_callbacks,
)
from .run_progress import RunProgress, RunProgressCallback, RunTracker
from .run_state import (
    STATE_VERSION,
    check_resumable,
    check_same_pool,
    initialized_run,
    relative_image_paths,
    result_settings,
)
from .task_examples import PixelExamples
from .training_settings import (
    check_early_stopping,
    check_model_settings,
    check_training_settings,
    user_callbacks,
)
from .whole_set_evaluation import WholeSetEvaluation

logger = logging.get_logger(__name__)

# Below this pool size, starting DataLoader workers (about a second per loader) costs more than they save.
WORKERS_MIN_IMAGES = 4096


@dataclass(frozen=True)
class Step:
    """One resumable unit of a run: `kind` is init, train_surrogate, train_dense, sync, select, label or report."""

    kind: str
    round: int = 0

    @property
    def name(self) -> str:
        return step_name(self.kind, self.round)


class PruneFuseTrainer(WholeSetEvaluation, Trainer):
    r"""
    Trainer that runs PruneFuse (Kousar, Bhatti and Moon, "PruneFuse: Efficient Data Selection via Weight Pruning
    and Network Fusion", arXiv:2603.26138): the dense model is pruned at initialization into a narrow surrogate,
    the surrogate selects the examples to label round after round, is fused back into the dense model's initial
    weights at its kept indices, and the fused model is trained on the labeled set (optionally distilling from the
    surrogate).

    Args:
        model ([`~transformers.PreTrainedModel`], `str`, [`~transformers.PretrainedConfig`] or `dict`):
            The dense image classifier: a model (its current weights are θ0), a Hub id or checkpoint directory
            (pretrained weights are pruned; the classifier head is resized to the dataset's classes), or a config
            (a `PretrainedConfig`, or a dict with `model_type`), built with random weights seeded by `args.seed`.
        args ([`PruneFuseConfig`], *optional*):
            The run's settings. A plain [`~transformers.TrainingArguments`] is converted (PruneFuse fields at their
            defaults); `None` uses `PruneFuseConfig()`.
        train_dataset (`datasets.Dataset` or [`DataPool`]):
            The pool to select from: an image column (`args.image_column`) and, in simulation, integer labels
            (`args.label_column`). A `DataPool` carries labeled rows already.
        eval_dataset (`datasets.Dataset`, *optional*):
            Every trained model is evaluated on it. Its labels are matched to the pool's by class name when both
            have names.
        processing_class ([`~transformers.BaseImageProcessor`], *optional*):
            The model's image processor. Defaults to the pretrained model's own, else one built from the run's
            settings; it is saved with every checkpoint, so `pipeline()` preprocesses as the run did.
        callbacks (`list[TrainerCallback]`, *optional*):
            Callbacks of this trainer. They see the final model's training as a stock Trainer's callbacks would:
            every event once (`on_train_begin`, `on_step_end`, `on_epoch_end`, `on_evaluate`, `on_save`, `on_log`,
            ...) with that training's `args`, `state` and `control`, so `EarlyStoppingCallback` (checked up front:
            it needs an evaluation set, `eval_strategy`, `load_best_model_at_end` and `metric_for_best_model`) or
            `control.should_training_stop` ends it early. Of the rest of the run they get `on_log` only: the
            surrogate's and other trainings' logs under a prefix (`surrogate/loss`), and each finished step's facts
            with the run's state, where `control.should_training_stop` stops the run after that step (it resumes
            from there). `report_to` integrations get every log, prefixed. Where each `TrainingArguments` field
            applies: `prunefuse_hf.trainer.training_settings.TRAINING_ARGUMENT_SCOPES`.
        compute_metrics (`Callable`, *optional*):
            Metrics of every evaluation; defaults to accuracy.
        recipe (`dict`, *optional*):
            The recipe the run was started from (recorded, secrets removed, in the state and the model card).
        resume_command (`str`, *optional*):
            The command that resumes this run, printed when it is interrupted (the CLI sets it).

    Raises:
        `ValueError`: bad input, found before anything is trained or written (missing columns, labels out of range,
            pool and evaluation classes that disagree, damaged images, a budget larger than the pool, settings the
            model cannot train with, `TrainingArguments` a run would ignore or fail on half-way, invalid Hub ids, a
            Hub model id neither cached nor reachable).

    Example:

    ```python
    >>> from transformers import ResNetConfig
    >>> from prunefuse_hf import PruneFuseConfig, PruneFuseTrainer, load_image_dataset
    >>> pool = load_image_dataset("fashion_mnist", "train").select(range(3000))
    >>> test = load_image_dataset("fashion_mnist", "test").select(range(1000))
    >>> args = PruneFuseConfig(output_dir="runs/quickstart", initial_labeled_size=500, query_size=500, num_rounds=2,
    ...                        image_size=32, num_train_epochs=3)
    >>> model = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64], depths=[1, 1, 1])
    >>> trainer = PruneFuseTrainer(model, args=args, train_dataset=pool, eval_dataset=test)
    >>> trainer.train()
    >>> trainer.evaluate()["eval_accuracy"]
    ```
    """

    _tag_names = ["prunefuse", "active-learning"]

    def __init__(
        self,
        model,
        args: PruneFuseConfig | None = None,
        train_dataset: datasets.Dataset | DataPool | None = None,
        eval_dataset: datasets.Dataset | None = None,
        processing_class=None,
        callbacks: list[TrainerCallback] | None = None,
        compute_metrics=None,
        *,
        recipe: dict | None = None,
        resume_command: str | None = None,
    ):
        args = _as_config(args)
        configure_package_logging(args)
        # ---- every check that can run before anything is built or written ----
        if isinstance(model, (str, os.PathLike)):
            check_hub_model("model", model)  # a Hub id the Hub cannot serve: refused now, not after retries
        task = annotated_task(model, args)
        check_training_settings(args, (task or CLASSIFICATION).metric_names, task_name=(task or CLASSIFICATION).name,
                                callbacks=callbacks, has_eval_set=eval_dataset is not None)  # fmt: skip
        if (
            task is not None
        ):  # detection, segmentation: images are prepared with their boxes or masks (`annotated_run`)
            init_annotated_run(self, task, model, args, train_dataset, eval_dataset, processing_class, callbacks,
                               compute_metrics, recipe=recipe, resume_command=resume_command)  # fmt: skip
            return
        self.task = CLASSIFICATION
        pool, self.class_names, self._pool_labels = prepare_pool(train_dataset, args)
        self.initial_labels = seed_labels(args, pool, self._pool_labels, self.class_names)
        if eval_dataset is not None and not isinstance(eval_dataset, PixelDataset):
            # Checked before anything is decoded; decoded below with the run's processor.
            eval_dataset, _ = labeled_rows(eval_dataset, args, self.class_names, what="the evaluation set")
        check_labeling_budget(args, len(pool) - len(self.initial_labels))
        self.strategy = get_strategy(args.strategy)

        set_seed(args.seed)
        if isinstance(model, PreTrainedModel):
            # Before its label count is compared: a ViTModel or a backbone is refused by its class, not its labels.
            check_supported_model(model, pruning_ratio=args.pruning_ratio)
        dense = build_dense_model(model, self.class_names, args.label_column)
        check_supported_model(dense, pruning_ratio=args.pruning_ratio)
        check_model_settings(dense, args)
        if "mc_probs" in self.strategy.needs:
            active_dropout_layers(dense)  # raises, naming the model, when there is none
        if (
            "features" in self.strategy.needs
            or args.initial_strategy == "typiclust"
            or (args.selector == "linear_probe" or args.surrogate_distill_epochs > 0)
        ):
            classifier_module(
                dense
            )  # raises, naming the model and what runs without features, when it has no head
        # Pruning θ0 is a new run's first step; a model that cannot be pruned at this ratio (the general path fails
        # on some architectures) is refused here, before the pool is decoded and the run directory is created. The
        # `init` step uses this surrogate. A run whose `init` is done (a resume) pruned this model already.
        self.pruned_at_init = None
        if args.pruning_ratio > 0 and not initialized_run(args):
            with torch.random.fork_rng():
                self.pruned_at_init = prune_model(dense, args.pruning_ratio, importance=args.importance)
        processor = processing_class if processing_class is not None else pretrained_image_processor(model)
        channels = model_num_channels(dense.config)
        if channels == 1:
            logger.warning(
                "The model reads one channel (num_channels: 1). Its checkpoints load with AutoImageProcessor and "
                "AutoModelForImageClassification (the card shows how); pipeline('image-classification') converts "
                "images to RGB and cannot feed it. For a pipeline-ready copy of the finished model run "
                "`prunefuse_hf.export_rgb_checkpoint(RUN/fused, OUT)` (the input convolution reads RGB through the "
                "gray conversion: same predictions on gray images), or train with num_channels: 3 (gray images are "
                "repeated)."
            )
        image = first_image(pool.dataset, args.image_column)
        sized_by_first_image = (
            processor is None and args.image_size is None and not getattr(dense.config, "image_size", None)
        )
        processor = build_image_processor(dense.config, processor, image_size=args.image_size, image=image)
        # Without any size given, the first image's size is the run's: a pool of mixed sizes is refused, not
        # silently resized (the evaluation set and predict() inputs are resized, as pipeline() does).
        self.preprocessor = ImagePreprocessor(processor, channels, args.image_column, augment=args.augment)
        pool_preprocessor = dataclasses.replace(
            self.preprocessor, uniform_size=image.size if sized_by_first_image else None
        )
        # Decoding every image once is also the check that every image decodes (the error names the file).
        with _main_process_first(args), quiet_progress_bars(show_inner=not args.disable_tqdm):
            self.pool_pixels = pool_preprocessor.pixel_dataset(pool.dataset, **pixel_cache_options(args),
                                                               desc="Decoding the pool")  # fmt: skip
            prepared_eval = None
            if eval_dataset is not None:
                prepared_eval, eval_dataset = prepare_eval_dataset(eval_dataset, self.preprocessor, args,
                                                                   self.class_names)  # fmt: skip
        input_shape = tuple(self.pool_pixels[0][PIXEL_VALUES].shape)
        decodes = PixelDataset(self.pool_pixels, [0]).decodes_per_batch
        if args.dataloader_num_workers == 0 and decodes and len(pool) >= WORKERS_MIN_IMAGES:
            # Batches are decoded (no cache, or a JPEG/PNG one): workers keep decoding off the forward pass's core.
            args.dataloader_num_workers = usable_cores()
            logger.info(
                f"Decoding batches in {args.dataloader_num_workers} DataLoader workers (dataloader_num_workers)"
            )
        _check_trainable(dense, input_shape, args)

        super().__init__(
            model=dense,
            args=args,
            eval_dataset=prepared_eval,
            processing_class=processor,
            callbacks=callbacks,
            compute_metrics=compute_metrics if compute_metrics is not None else compute_accuracy,
        )
        # Per-step facts are logged in one line each; the inner trainers show their own progress bars.
        self.remove_callback(PrinterCallback)
        self.remove_callback(ProgressCallback)
        self.examples = PixelExamples(
            self.pool_pixels, self.preprocessor, pool, args.label_column, self.class_names
        )
        self.init_run_fields(pool, eval_dataset, input_shape, recipe, resume_command)

    def init_run_fields(self, pool, raw_eval_dataset, input_shape, recipe, resume_command) -> None:
        self.pool = pool
        self.raw_eval_dataset = raw_eval_dataset
        self.input_shape = input_shape
        self.run_dir = RunDirectory(self.args.output_dir)
        self.recipe = recipe
        self.resume_command = resume_command
        self.progress: dict = {}
        self.steps: list[Step] = []
        self.trained_surrogate: tuple[int, PreTrainedModel] | None = None
        self._awaiting_labels: int | None = None
        self._row_digests: np.ndarray | None = None  # digest of each labeled row (0: not labeled)
        self._image_paths: list | None = None  # of the pool's images, relative to their common folder
        self.run_tracker = RunTracker(self)

    # ----- the run -----------------------------------------------------------------------------

    def train(
        self,
        resume_from_checkpoint: str | bool | None = None,
        trial=None,
        ignore_keys_for_eval=None,
        **kwargs,
    ):
        """
        Run PruneFuse (or continue it): prune, select in rounds, fuse, train the fused model.

        Args:
            resume_from_checkpoint (`str` or `bool`, *optional*):
                `True` continues the run in `args.output_dir` from its last finished step, a path continues the run
                in that directory; the settings that change results must be the run's (differences are named). Without
                it, a new run starts (`output_dir` must be empty, or `args.overwrite_output_dir` set).

        Returns:
            [`~transformers.trainer_utils.TrainOutput`]: `global_step` (optimizer steps of every inner training),
            `training_loss` (the final model's) and `metrics` (the final model's accuracy, labeled count, selection
            cost). With `annotation="human"` the call returns after writing a query batch; resume once labeled.

        Raises:
            `RunDirectoryError`: `output_dir` holds files and neither resuming nor overwriting, or nothing to resume.
            `ValueError`: resuming with settings or a pool that differ from the run's (named in the message).
        """
        if trial is not None:
            raise ValueError("PruneFuseTrainer does not support hyper-parameter search trials.")
        # Checkpoints are written and read many times per run: never with a progress bar each.
        with quiet_progress_bars(show_inner=not self.args.disable_tqdm):
            return self._run(resume_from_checkpoint)

    def _run(self, resume_from_checkpoint) -> TrainOutput:
        resume = resume_from_checkpoint not in (None, False)
        if isinstance(resume_from_checkpoint, (str, os.PathLike)):
            self.run_dir = RunDirectory(resume_from_checkpoint)
            self.args.output_dir = str(resume_from_checkpoint)
        # Callbacks added after construction are checked too, before the run directory is touched.
        users = user_callbacks(self.callback_handler.callbacks, self.args.report_to)
        check_early_stopping(self.args, users, has_eval_set=self.eval_dataset is not None)
        self._open_run(resume)
        self.steps = self._plan_steps()
        self._awaiting_labels = None
        self.run_tracker.begin_run()
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, RunProgressCallback):
                callback.trainer = self
        # The user's callbacks get on_train_begin / on_train_end from the final model's training (`steps._train`).
        with without_callbacks(self.callback_handler, users):
            self.control = self.callback_handler.on_train_begin(self.args, self.state, self.control)
        step = None
        try:
            for step in [s for s in self.steps if s.name not in self.progress["completed"]]:
                self._run_step(step)
                if self._awaiting_labels is not None or self.control.should_training_stop:
                    break
        except KeyboardInterrupt:
            self._report_interruption(step)
            raise
        self.control.should_training_stop = False
        final = self.progress.get("final", {})
        if self.done:
            self._load_final_model()
            # As after a stock Trainer's train(), later logs (evaluate()) carry the final model's epochs.
            self.state.epoch = final.get("epochs", self.state.epoch)
        with without_callbacks(self.callback_handler, users):
            self.control = self.callback_handler.on_train_end(self.args, self.state, self.control)
        metrics = {key: final[key] for key in (self.examples.metric, "labeled") if final.get(key) is not None}
        metrics["selection_seconds"] = build_metrics(self.progress)["selection"]["seconds"]
        return TrainOutput(self.state.global_step, final.get("train_loss"), metrics)

    @property
    def awaiting_labels(self) -> int | None:
        """The round whose query waits for annotators' labels (the run stopped there), or `None`."""
        return self._awaiting_labels

    @property
    def done(self) -> bool:
        """Whether every step of the run has finished."""
        return bool(self.steps) and all(step.name in self.progress["completed"] for step in self.steps)

    @property
    def run_progress(self) -> RunProgress:
        """Where the run is: the step, round k of n, labeled count, elapsed time and an estimate of the time left
        (see [`RunProgressCallback`] to follow it)."""
        return self.run_tracker.snapshot()

    @property
    def metrics(self) -> dict:
        """The run's metrics (per round records, selection cost, final model), as written to `metrics.json`."""
        return build_metrics(self.progress)

    def _plan_steps(self) -> list[Step]:
        args = self.args
        last = args.num_rounds + 1
        planned = [Step("init")]
        if args.initial_labeled_size:
            planned.append(Step("label", 1))
        for r in range(1, last + 1):
            selecting = r < last
            syncing = selecting and args.sync_every > 0 and r % args.sync_every == 0
            training_dense = r == last or args.eval_dense_every_round
            # Everything trained in round r sees the labeled set of round r, so selection comes last.
            surrogate_selects = selecting and self.strategy.needs and args.selector == "trained"
            if surrogate_selects or syncing or (training_dense and args.needs_teacher):
                planned.append(Step("train_surrogate", r))
            if training_dense:
                planned.append(Step("train_dense", r))
            if syncing:
                planned.append(Step("sync", r))
            if selecting:
                planned.append(Step("select", r))
                planned.append(Step("label", r + 1))
        planned.append(Step("report"))
        return planned

    def _run_step(self, step: Step) -> None:
        started = time.perf_counter()
        self.run_tracker.begin_step(step)
        if step.kind == "init":
            facts = steps.init_run(self)
        elif step.kind == "train_surrogate":
            facts = steps.train_surrogate(self, step.round)
        elif step.kind == "train_dense":
            facts = steps.train_dense(self, step.round)
        elif step.kind == "sync":
            facts = steps.sync(self, step.round)
        elif step.kind == "select":
            facts = steps.select(self, step.round)
        elif step.kind == "label":
            facts = steps.label(self, step.round)
            if facts is None:  # human annotation: the query is out, the labels are not in yet
                self._awaiting_labels = step.round
                return
        elif step.kind == "report":
            facts = steps.report(self)
        else:
            raise AssertionError(step.kind)
        self.progress["completed"].append(step.name)
        self.progress["pool"] = self.pool.state_dict(as_arrays=True)
        self._save_state()
        seconds = time.perf_counter() - started
        facts = {"step": step.name, **facts, "seconds": round(seconds, 3)}
        self.run_tracker.finish_step(step, seconds, facts)
        logger.info(
            " | ".join(describe_fact(key, value) for key, value in facts.items() if value is not None),
            extra={STEP_RECORD: step.name},
        )
        numeric = {k: v for k, v in facts.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.log(numeric)

    # ----- steps -------------------------------------------------------------------------------

    def add_labels(self, source, *, allow_partial: bool = False, overwrite: bool = False, **columns):
        """
        Bring annotators' labels for the open query into the run (the same as `prunefuse-hf label`); then continue
        with `train(resume_from_checkpoint=True)`.

        Args:
            source: Labels in any form `prunefuse_hf.annotation.read_labels` reads (CSV, JSON/JSONL, parquet, a
                Label Studio export, a dataset or a Hub dataset id), with pool indices and class names or ids; for
                an object-detection run, boxes as `read_detection_labels` reads them (the query's COCO template
                filled in, a Label Studio JSON / JSON_MIN / COCO export), stored in `RUN/labeled_objects.parquet`;
                for a semantic-segmentation run, masks as `read_segmentation_labels` reads them (the query's
                `masks/` painted with class ids, a Label Studio JSON export), stored in `RUN/labeled_masks/`.
            allow_partial (`bool`, *optional*): Continue with the labeled part of the query.
            overwrite (`bool`, *optional*): Replace stored labels the file contradicts.
            columns: `label_column` / `index_column` when they are not the usual names, `resolve` (how answers
                that disagree become one label; default: the run's `annotation_resolve`) and `requery_skipped` (see
                [`ingest_labels`]).

        Returns:
            `AddResult`: added, unchanged and overwritten counts, and the query's indices still missing.

        Raises:
            `LabelError`: refused labels (unknown class, index not queried, duplicates, missing labels); the run
                directory is then unchanged.
        """
        columns.setdefault("resolve", self.args.annotation_resolve)
        ingest = self.task.ingest_labels or ingest_labels  # boxes, masks: the task's own ingest
        return ingest(self.run_dir.path, source, allow_partial=allow_partial, overwrite=overwrite,
                             pool=self.pool.dataset, image_column=self.args.image_column, **columns)  # fmt: skip

    # ----- training, scoring, evaluation -------------------------------------------------------

    def _prepare_inputs(self, inputs: dict) -> dict:
        # The fused model's evaluation reads uint8 pixels like the inner trainers: normalize on the device.
        inputs = super()._prepare_inputs(inputs)
        if PIXEL_VALUES in inputs and self.preprocessor is not None:
            inputs[PIXEL_VALUES] = self.preprocessor.normalize(inputs[PIXEL_VALUES])
        return inputs

    @property
    def evaluates_whole_set(self) -> bool:
        """Whether each process evaluates the whole set (tasks whose labels differ in size per image, see
        [`WholeSetEvaluation`]); image classification's evaluation is sharded and gathered as the stock one."""
        return self.task is not CLASSIFICATION

    def get_eval_dataloader(self, eval_dataset=None):
        """
        The evaluation `DataLoader`, as the stock `Trainer`'s: of the evaluation set given at construction, or of
        `eval_dataset` (a raw image dataset of any split, a `DataPool`, a list of images or a prepared
        `PixelDataset`), preprocessed with the run's image processor and normalized as in training. A
        `ClassLabel` is matched to the run's classes by name; every row needs a label.
        """
        if eval_dataset is not None and not isinstance(eval_dataset, str):
            eval_dataset = self._prepared(eval_dataset, "the evaluation set", allow_unlabeled=False)
        return super().get_eval_dataloader(eval_dataset)

    def get_test_dataloader(self, test_dataset):
        """
        The `DataLoader` of `predict()`: `test_dataset` in any form `get_eval_dataloader` reads; without labels (no
        label column, or every label -1 / `None`) `predict()` returns `label_ids=None` and no accuracy, as the
        stock `Trainer` does.
        """
        return super().get_test_dataloader(self._prepared(test_dataset, "the test set", allow_unlabeled=True))

    def _prepared(self, dataset, what: str, allow_unlabeled: bool):
        if self.preprocessor is None:  # prepared by the task as it is read (detection, segmentation)
            return self.examples.prepared(validated_annotations(self, dataset, what, allow_unlabeled))
        # Not the run's pool or evaluation set: cached only when asked (pixel_cache_scope: all), so that predictions
        # on new images leave no permanent cache entry behind.
        prepared, _ = prepare_eval_dataset(dataset, self.preprocessor, self.args, self.class_names, what=what,
                                           input_shape=self.input_shape, allow_unlabeled=allow_unlabeled,
                                           create_cache=self.args.pixel_cache_scope == "all")  # fmt: skip
        return prepared

    # ----- models of the run -------------------------------------------------------------------

    @property
    def dense_init_config(self):
        """The config of the run's dense initialization θ0 (`RUN/dense_init`)."""
        return AutoConfig.from_pretrained(self.run_dir / DENSE_INIT_DIR)

    def _load_final_model(self) -> None:
        if not isinstance(self.model, PreTrainedModel) or self.model.config.num_labels != len(
            self.class_names
        ):
            return
        final = self.task.model_class().from_pretrained(self.run_dir.fused_dir)
        self.model = self.model_wrapped = final.to(self.args.device)

    # ----- the run directory -------------------------------------------------------------------

    def _open_run(self, resume: bool) -> None:
        if self.is_world_process_zero():
            self.run_dir.prepare(resume=resume, overwrite=self.args.overwrite_output_dir)
        self.accelerator.wait_for_everyone()
        current = result_settings(self.args, self.processing_class, self.input_shape, len(self.pool),
                                  self.raw_eval_dataset)  # fmt: skip
        if not resume:
            self.progress = {"version": STATE_VERSION, "completed": [], "settings": current,
                             "resume_command": self.resume_command,
                             "method_overrides": self.args.method_overrides, "recipe": redact_secrets(self.recipe),
                             "class_names": self.class_names, "task": self.task.name, "metric": self.examples.metric,
                             "annotation_resolve": self.args.annotation_resolve, "rounds": {},
                             "final": {}}  # fmt: skip
            return
        progress = self.run_dir.read_state()
        # Labels waiting to be used go on the images annotators were shown (named when the pool changed).
        for record in unlabeled_queries(progress):
            check_query_rows(record, self.pool.dataset, self.args.image_column,
                             pool_size=progress["pool"]["num_examples"], what=f"Cannot resume {self.run_dir.path}")  # fmt: skip
        check_resumable(progress, current, self.run_dir)
        self._row_digests = check_same_pool(progress, self.examples.row_digests, self.run_dir)
        self.pool.load_state_dict(progress["pool"], check_fingerprint=False)
        # An older readable state is saved as this one; the policy for answers that disagree is the resume's.
        self.progress = {
            **progress,
            "version": STATE_VERSION,
            "annotation_resolve": self.args.annotation_resolve,
        }
        dense_init = self.task.model_class().from_pretrained(self.run_dir / DENSE_INIT_DIR)
        self.model = self.model_wrapped = dense_init.to(self.args.device)

    def _save_state(self) -> None:
        # Only the rows labeled since the last save are read: a save costs O(changes), whatever the pool's size.
        if self._row_digests is None:
            self._row_digests = np.zeros(len(self.pool), dtype=np.uint64)
        labeled = self.pool.labeled_indices
        new = labeled[self._row_digests[labeled] == 0]
        self._row_digests[new] = self.examples.row_digests(new)
        self.progress["pool"][ROW_DIGESTS] = self._row_digests
        if self.is_world_process_zero():
            # The selection file and the pool arrays change only when examples are labeled: a step that labels
            # nothing writes only the small state.json, whatever the pool's size.
            if self.run_dir.pool_arrays_changed(self.progress) or not self.run_dir.selection_path.is_file():
                self.pool.save_selection(self.run_dir.selection_path, class_names=self.class_names,
                                         references=self._example_references())  # fmt: skip
            self.run_dir.write_state(self.progress)
        self.accelerator.wait_for_everyone()

    def _example_references(self) -> dict | None:
        if self._image_paths is None:
            self._image_paths = relative_image_paths(self.pool.dataset, self.args.image_column)
        if not any(self._image_paths):
            return None
        labeled = self.pool.labeled_indices.tolist()
        return {IMAGE_PATH: {i: self._image_paths[i] for i in labeled}}

    def _report_interruption(self, step: Step | None) -> None:
        done = len(self.progress.get("completed", []))
        command = self.resume_command or "trainer.train(resume_from_checkpoint=True)"
        logger.warning(
            f"Interrupted{f' during step {step.name}' if step else ''}. Kept: {done} finished steps of "
            f"{len(self.steps)} in {self.run_dir.path} ({STATE_NAME}, {self.pool.num_labeled} labeled examples). "
            f"Resume with: {command}"
        )

    # ----- checkpoints, cards and the Hub ------------------------------------------------------

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """
        Save the fused model as a pipeline-ready checkpoint: weights, config with the class names as `id2label`,
        the image processor and the model card.

        Args:
            output_dir (`str`, *optional*): Where to write it. Defaults to `output_dir/fused`.

        Example:

        ```python
        >>> from transformers import pipeline
        >>> trainer.save_model("fashion-mnist-prunefuse")      # after trainer.train()
        >>> classifier = pipeline("image-classification", model="fashion-mnist-prunefuse")
        >>> classifier(test[0]["image"])[0]["label"] in trainer.class_names   # a class name, not LABEL_k
        True
        ```
        """
        output_dir = output_dir or str(self.run_dir.fused_dir)
        if self.is_world_process_zero():
            steps.save_checkpoint(self, self.model, output_dir)
            self.save_model_card(Path(output_dir))

    def save_model_card(self, directory: Path) -> None:
        if self.run_dir.state_path.is_file() and self.progress.get("final"):
            write_model_card(self.run_dir.path, directory, progress=self.progress)

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        # Repos are created when the finished run is pushed (`push_to_hub`), never before the run starts.
        self.hub_model_id = self.args.hub_model_id

    def push_to_hub(self, commit_message: str | None = "Upload PruneFuse run", blocking: bool = True,
                    token: str | None = None, revision: str | None = None, private: bool | None = None,
                    **kwargs) -> str:  # fmt: skip
        """
        Push the finished run: the fused model (weights, config, processor, card) to `args.hub_model_id`, the
        selected subset to `args.hub_subset_id` and the surrogate to `args.hub_surrogate_id` when set, through the
        same code as `prunefuse-hf push`.

        Returns:
            `str`: the URL of the fused model's commit.

        Raises:
            [`~prunefuse_hf.hub.PushError`]: the Hub refused or could not be reached; nothing local changed.
        """
        args = self.args
        result = push_run(
            self.run_dir.path,
            args.hub_model_id or self.run_dir.path.absolute().name,
            subset_repo_id=args.hub_subset_id,
            surrogate_repo_id=args.hub_surrogate_id,
            private=private if private is not None else args.hub_private_repo,
            revision=revision or args.hub_revision,
            token=token or args.hub_token,
            commit_message=commit_message or "Upload PruneFuse run",
        )
        return result.commit_urls["model"]


# ----- helpers -----------------------------------------------------------------------------------


def _as_config(args) -> PruneFuseConfig:
    if args is None:
        return PruneFuseConfig()
    if isinstance(args, PruneFuseConfig):
        return args
    # A plain TrainingArguments (as trl converts one): its values, PruneFuse fields at their defaults.
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init}
    values.pop("accelerator_config", None)
    return PruneFuseConfig(**values)


def _main_process_first(args):
    from accelerate import PartialState

    state = PartialState(cpu=args.use_cpu)
    return state.main_process_first() if state.num_processes > 1 else contextlib.nullcontext()


def _check_trainable(dense: PreTrainedModel, input_shape: tuple, args: PruneFuseConfig) -> None:
    """Refuse settings the model cannot train with, before any training: inputs too small for the model, and
    batches of one example where BatchNorm sees a single value per channel."""
    smallest = check_input_size(dense, input_shape, image_size_field="image_size")
    check_batchnorm_batch_sizes(args, smallest)
