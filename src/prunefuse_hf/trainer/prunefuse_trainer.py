"""`PruneFuseTrainer`: a `transformers.Trainer` whose `train()` runs PruneFuse.

    trainer = PruneFuseTrainer(model, args=PruneFuseConfig(...), train_dataset=pool, eval_dataset=test)
    trainer.train()          # prune -> rounds of (train surrogate, score, select, label) -> fuse -> train fused
    trainer.save_model(dir)  # pipeline-ready fused checkpoint: weights, config with class names, processor, card
    trainer.push_to_hub()    # fused model, selected subset (and surrogate) with their cards

A run is a list of resumable steps, read top to bottom in `run_plan` (`plan_steps`, `run_step`): `init` (prune θ0 into
the surrogate, draw the initial labeled set); per round r, `train_surrogate:r`, `train_dense:r` (the fused or
fresh dense model, at the last round and with `eval_dense_every_round`), `sync:r`, `select:r` (score the
unlabeled pool, write the query) and `label:r` (labels of the query come in: from the pool's label column in
simulation, from annotators otherwise); then `report`. Every step ends by writing its outputs and then
`state.json` atomically, so an interrupted run resumes at the first unfinished step with the same result.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import datasets
import numpy as np
from transformers import (
    AutoConfig,
    PreTrainedModel,
    Trainer,
    TrainerCallback,
)
from transformers.trainer_utils import TrainOutput
from transformers.utils import logging

from ..annotation.store import ingest_labels
from ..constants import DENSE_INIT_DIR, PIXEL_VALUES, STATE_NAME
from ..data.pool import DataPool
from ..hub.cards import write_model_card
from ..hub.push import push_run
from ..tasks.classification import CLASSIFICATION
from ..utils.hub_ids import check_hub_model
from ..utils.run_directory import RunDirectory
from ..utils.run_metrics import build_metrics
from .annotated_run import annotated_task, init_annotated_run, validated_annotations
from .classification_run import init_classification_run
from .inputs import prepare_eval_dataset
from .prunefuse_config import PruneFuseConfig
from .run_logging import configure_package_logging, quiet_progress_bars, without_callbacks
from .run_plan import Step, plan_steps, run_step
from .run_progress import RunProgress, RunProgressCallback, RunTracker
from .run_state import open_run
from .step_models import save_checkpoint
from .training_settings import check_early_stopping, check_training_settings, user_callbacks
from .whole_set_evaluation import WholeSetEvaluation

logger = logging.get_logger(__name__)


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
        check_training_settings(args, task or CLASSIFICATION, callbacks=callbacks,
                                has_eval_set=eval_dataset is not None)  # fmt: skip
        if task is None:
            init_classification_run(self, model, args, train_dataset, eval_dataset, processing_class, callbacks,
                                    compute_metrics, recipe=recipe, resume_command=resume_command)  # fmt: skip
        else:  # detection, segmentation: images are prepared with their boxes or masks (`annotated_run`)
            init_annotated_run(self, task, model, args, train_dataset, eval_dataset, processing_class, callbacks,
                               compute_metrics, recipe=recipe, resume_command=resume_command)  # fmt: skip

    def init_run_fields(self, pool, raw_eval_dataset, input_shape, recipe, resume_command) -> None:
        """The run state both set-ups (`classification_run`, `annotated_run`) end with, once the `Trainer` is built:
        what the steps read and write besides what the set-up gave (see `run_plan`)."""
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
        self.labeled_row_digests: np.ndarray | None = None  # digest of each labeled row (0: not labeled)
        self.pool_image_paths: list | None = None  # of the pool's images, relative to their common folder
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
        open_run(self, resume)
        self.steps = plan_steps(self.args, self.strategy)
        self._awaiting_labels = None
        self.run_tracker.begin_run()
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, RunProgressCallback):
                callback.trainer = self
        # The user's callbacks get on_train_begin / on_train_end from the final model's training
        # (`step_models.train_model`).
        with without_callbacks(self.callback_handler, users):
            self.control = self.callback_handler.on_train_begin(self.args, self.state, self.control)
        step = None
        try:
            for step in [s for s in self.steps if s.name not in self.progress["completed"]]:
                if not run_step(self, step):  # human annotation: the query is out, the labels are not in yet
                    self._awaiting_labels = step.round
                    break
                if self.control.should_training_stop:
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

    # ----- annotators' labels ------------------------------------------------------------------

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
        """Whether each process evaluates the whole set (tasks whose labels differ in size per image,
        `Task.ragged_labels`, see [`WholeSetEvaluation`]); image classification's evaluation is sharded and gathered
        as the stock one."""
        return self.task.ragged_labels

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
            save_checkpoint(self, self.model, output_dir)
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
