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
import copy
import dataclasses
import functools
import hashlib
import json
import logging as std_logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from transformers import (
    AutoConfig,
    AutoModelForImageClassification,
    PreTrainedModel,
    Trainer,
    TrainerCallback,
    set_seed,
)
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import IntervalStrategy, TrainOutput
from transformers.utils import logging

from ..annotation.readers import LabelBatch, read_labels
from ..annotation.store import (
    LabelStore,
    ingest_labels,
    oracle_labels,
    query_directory,
    query_is_complete,
    write_query_batch,
)
from ..constants import (
    DENSE_BASE_DIR,
    DENSE_INIT_DIR,
    FUSED_DIR,
    IMAGE_PATH,
    PIXEL_VALUES,
    QUERY_CONTENTS,
    STATE_NAME,
    SURROGATE_DIR,
    SURROGATE_INIT_DIR,
    TRAINER_DIR,
)
from ..data.images import first_image
from ..data.loading import align_eval_labels, label_array, resolve_class_names, validate_image_dataset
from ..data.pool import DataPool
from ..data.preprocessing import (
    ImagePreprocessor,
    PixelDataset,
    build_image_processor,
    model_num_channels,
    pretrained_image_processor,
)
from ..data.validation import check_batchnorm_batch_sizes, check_input_size, check_labeling_budget
from ..pruning.cost import FORWARD_FLOPS_PER_MAC, TRAIN_FLOPS_PER_MAC, model_cost
from ..pruning.families import check_supported_model
from ..pruning.fusion import fuse_into_dense
from ..pruning.modeling import build_dense_model
from ..pruning.plan import PruningPlan, config_hash
from ..pruning.prune import prune_model
from ..selection.scoring import active_dropout_layers, score_pool
from ..selection.strategies import get_strategy
from ..utils.run_directory import RunDirectory, json_default, redact_secrets, step_name
from .batchnorm import synced_batchnorm
from .distillation_trainer import DistillationTrainer, compute_accuracy
from .prunefuse_config import PruneFuseConfig
from .report import build_metrics, write_report

logger = logging.get_logger(__name__)

STATE_VERSION = 2
# Settings that change what a run selects, trains or measures: resuming with other values is refused, by name.
RESULT_FIELDS = (
    "method", "pruning_ratio", "importance", "strategy", "fusion", "distill_alpha", "distill_temperature",
    "initial_labeled_size", "seed_labels", "query_size", "num_rounds", "seed", "data_seed", "selection_seed",
    "annotation",
    "surrogate_init", "fusion_init", "copy_norm_stats", "sync_every", "eval_dense_every_round", "mc_samples",
    "image_column", "label_column", "class_names", "image_size", "augment",
    "num_train_epochs", "max_steps", "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps",
    "optim", "optim_args", "weight_decay", "lr_scheduler_type", "warmup_steps", "label_smoothing_factor",
    "max_grad_norm", "surrogate_num_train_epochs", "surrogate_learning_rate",
    "surrogate_per_device_train_batch_size", "bf16", "fp16", "eval_strategy", "eval_steps", "sync_batchnorm",
)  # fmt: skip
_PACKAGE_LOGGER = __name__.split(".")[0]


@dataclass(frozen=True)
class Step:
    """One resumable unit of a run: `kind` is init, train_surrogate, train_dense, sync, select, label or report."""

    kind: str
    round: int = 0

    @property
    def name(self) -> str:
        return step_name(self.kind, self.round)


class PruneFuseTrainer(Trainer):
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
            Callbacks of this trainer: they receive the per-step facts (`on_log`) and can stop the run after any
            step (`control.should_training_stop`); the run then resumes from there.
        compute_metrics (`Callable`, *optional*):
            Metrics of every evaluation; defaults to accuracy.
        recipe (`dict`, *optional*):
            The recipe the run was started from (recorded, secrets removed, in the state and the model card).
        resume_command (`str`, *optional*):
            The command that resumes this run, printed when it is interrupted (the CLI sets it).

    Raises:
        `ValueError`: bad input, found before anything is trained or written (missing columns, labels out of range,
            pool and evaluation classes that disagree, damaged images, a budget larger than the pool, settings the
            model cannot train with, invalid Hub ids).

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
        _configure_package_logging(args)
        if train_dataset is None:
            raise ValueError(
                "PruneFuseTrainer needs the pool as `train_dataset` (a datasets.Dataset or a DataPool)."
            )
        pool = train_dataset if isinstance(train_dataset, DataPool) else DataPool(train_dataset)
        # ---- every check that can run before anything is built or written ----
        label_column = args.label_column
        human = args.annotation == "human"
        has_labels = label_column in pool.dataset.column_names
        validate_image_dataset(
            pool.dataset, args.image_column, label_column if has_labels or not human else None
        )
        self.class_names = resolve_class_names(
            pool.dataset, label_column if has_labels else None, args.class_names
        )
        # Simulation reveals this column (the oracle); with human annotation its labeled rows are seed labels.
        self._pool_labels = np.full(len(pool), -1, dtype=np.int64)
        if has_labels:
            self._pool_labels = label_array(pool.dataset, label_column, len(self.class_names), "the pool")
        if not human and (self._pool_labels < 0).any():
            unlabeled = np.flatnonzero(self._pool_labels < 0)
            raise ValueError(
                f"The pool has {unlabeled.size} rows without a label (-1 or None in '{label_column}'), e.g. row "
                f"{int(unlabeled[0])}. Simulated annotation reveals the label column, so every row needs one: drop "
                "those rows, or set annotation: human to have them labeled by people."
            )
        self._seed_labels = self._read_seed_labels(args, pool)
        if eval_dataset is not None:
            validate_image_dataset(eval_dataset, args.image_column, label_column)
            eval_dataset = align_eval_labels(eval_dataset, label_column, self.class_names)
            eval_labels = label_array(eval_dataset, label_column, len(self.class_names), "the evaluation set")
            if (eval_labels < 0).any():
                raise ValueError(
                    f"The evaluation set has {int((eval_labels < 0).sum())} rows without a label (-1 or None in "
                    f"'{label_column}'), e.g. row {int(np.flatnonzero(eval_labels < 0)[0])}: every evaluated example "
                    "needs its class. Drop those rows from the evaluation set."
                )
        check_labeling_budget(args, len(pool) - len(self._seed_labels))
        self.strategy = get_strategy(args.strategy)

        set_seed(args.seed)
        if isinstance(model, PreTrainedModel):
            # Before its label count is compared: a ViTModel or a backbone is refused by its class, not its labels.
            check_supported_model(model, pruning_ratio=args.pruning_ratio)
        dense = build_dense_model(model, self.class_names, label_column)
        check_supported_model(dense, pruning_ratio=args.pruning_ratio)
        if "mc_probs" in self.strategy.needs:
            active_dropout_layers(dense)  # raises, naming the model, when there is none
        processor = processing_class if processing_class is not None else pretrained_image_processor(model)
        channels = model_num_channels(dense.config)
        image = first_image(pool.dataset, args.image_column)
        processor = build_image_processor(dense.config, processor, image_size=args.image_size, image=image)
        self.preprocessor = ImagePreprocessor(processor, channels, args.image_column, augment=args.augment)
        # Decoding every image once is also the check that every image decodes (the error names the file).
        with _main_process_first(args):
            pixels = functools.partial(self.preprocessor.pixel_dataset, cache=args.cache_pixels,
                                       validate=args.validate_images)  # fmt: skip
            self.pool_pixels = pixels(pool.dataset, desc="Decoding the pool")
            eval_pixels = None
            if eval_dataset is not None:
                eval_pixels = pixels(eval_dataset, desc="Decoding the evaluation set")
        input_shape = tuple(self.pool_pixels[0][PIXEL_VALUES].shape)
        _check_trainable(dense, input_shape, args)

        prepared_eval = None
        if eval_dataset is not None:
            prepared_eval = PixelDataset(eval_pixels, np.arange(len(eval_dataset)), eval_labels)
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
        self.pool = pool
        self.raw_eval_dataset = eval_dataset
        self.input_shape = input_shape
        self.run_dir = RunDirectory(args.output_dir)
        self.recipe = recipe
        self.resume_command = resume_command
        self.progress: dict = {}
        self.steps: list[Step] = []
        self._surrogate_cache: tuple[int, PreTrainedModel] | None = None
        self._awaiting_labels: int | None = None
        self._image_paths: list | None = None

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
        resume = resume_from_checkpoint not in (None, False)
        if isinstance(resume_from_checkpoint, (str, os.PathLike)):
            self.run_dir = RunDirectory(resume_from_checkpoint)
            self.args.output_dir = str(resume_from_checkpoint)
        self._open_run(resume)
        self.steps = self._plan_steps()
        self._awaiting_labels = None
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
        if self.done:
            self._load_final_model()
        self.control = self.callback_handler.on_train_end(self.args, self.state, self.control)
        final = self.progress.get("final", {})
        metrics = {key: final[key] for key in ("accuracy", "labeled") if final.get(key) is not None}
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
    def metrics(self) -> dict:
        """The run's metrics (per round records, selection cost, final model), as written to `metrics.json`."""
        return build_metrics(self.progress)

    def _plan_steps(self) -> list[Step]:
        args = self.args
        last = args.num_rounds + 1
        steps = [Step("init")]
        if args.initial_labeled_size:
            steps.append(Step("label", 1))
        for r in range(1, last + 1):
            selecting = r < last
            syncing = selecting and args.sync_every > 0 and r % args.sync_every == 0
            training_dense = r == last or args.eval_dense_every_round
            # Everything trained in round r sees the labeled set of round r, so selection comes last.
            if (selecting and self.strategy.needs) or syncing or (training_dense and args.needs_teacher):
                steps.append(Step("train_surrogate", r))
            if training_dense:
                steps.append(Step("train_dense", r))
            if syncing:
                steps.append(Step("sync", r))
            if selecting:
                steps.append(Step("select", r))
                steps.append(Step("label", r + 1))
        steps.append(Step("report"))
        return steps

    def _run_step(self, step: Step) -> None:
        started = time.perf_counter()
        if step.kind == "init":
            facts = self._init_run()
        elif step.kind == "train_surrogate":
            facts = self._train_surrogate(step.round)
        elif step.kind == "train_dense":
            facts = self._train_dense(step.round)
        elif step.kind == "sync":
            facts = self._sync(step.round)
        elif step.kind == "select":
            facts = self._select(step.round)
        elif step.kind == "label":
            facts = self._label(step.round)
            if facts is None:  # human annotation: the query is out, the labels are not in yet
                return
        elif step.kind == "report":
            facts = self._report()
        else:
            raise AssertionError(step.kind)
        self.progress["completed"].append(step.name)
        self.progress["pool"] = self.pool.state_dict()
        self._save_state()
        seconds = time.perf_counter() - started
        facts = {"step": step.name, **facts, "seconds": round(seconds, 3)}
        logger.info(" | ".join(_describe(key, value) for key, value in facts.items() if value is not None))
        numeric = {k: v for k, v in facts.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.log(numeric)

    # ----- steps -------------------------------------------------------------------------------

    def _init_run(self) -> dict:
        args = self.args
        dense = self.model
        if len(self._seed_labels):
            self._store_labels(self._seed_labels, round_=1)
            self.pool.label(self._seed_labels.pool_indices, round=1, labels=self._seed_labels.labels)
        if args.initial_labeled_size:
            # The first query: a seeded random draw from the unlabeled pool.
            rng = np.random.default_rng(args.selection_seed)
            drawn = np.sort(
                rng.choice(self.pool.unlabeled_indices, size=args.initial_labeled_size, replace=False)
            )
            self._set_query(1, drawn, scores=None, strategy="random")
        surrogate, plan = prune_model(dense, args.pruning_ratio, importance=args.importance)
        height, width = self.input_shape[-2:]
        dense_cost, surrogate_cost = (
            model_cost(dense, (height, width)),
            model_cost(surrogate, (height, width)),
        )
        self.progress["costs"] = {
            "image_size": [height, width],
            "dense": dense_cost.to_dict(),
            "surrogate": surrogate_cost.to_dict(),
            "dense_config_hash": config_hash(dense.config),
        }
        if self.is_world_process_zero():
            self.run_dir.save_dir(DENSE_INIT_DIR, dense.save_pretrained)
            self.run_dir.save_dir(DENSE_BASE_DIR, dense.save_pretrained)
            self.run_dir.save_dir(
                SURROGATE_INIT_DIR, lambda d: self._save_checkpoint(surrogate, d, plan=plan)
            )
        return {
            "seed_labels": len(self._seed_labels) or None,
            "dense_params": dense_cost.params,
            "surrogate_params": surrogate_cost.params,
            "macs_ratio": round(surrogate_cost.macs / dense_cost.macs, 4),
        }

    def _train_surrogate(self, round_: int) -> dict:
        args = self.args
        warm = args.surrogate_init == "warm" and (self.run_dir.surrogate_dir / "config.json").exists()
        start_dir = self.run_dir.surrogate_dir if warm else self.run_dir / SURROGATE_INIT_DIR
        surrogate = AutoModelForImageClassification.from_pretrained(start_dir)
        plan = PruningPlan.from_pretrained(self.run_dir / SURROGATE_INIT_DIR)
        training_args = args.surrogate_training_args(str(self.run_dir / TRAINER_DIR))
        record = self._train(surrogate, training_args, round_, role="surrogate", seed_offset=1)
        # What the training is for decides where the cost ledger books it.
        selects = round_ <= args.num_rounds and bool(self.strategy.needs)
        record["purpose"] = "selection" if selects else "fusion_teacher"
        if self.is_world_process_zero():
            self.run_dir.save_dir(SURROGATE_DIR, lambda d: self._save_checkpoint(surrogate, d, plan=plan))
        self._round(round_)["surrogate"] = record
        self._surrogate_cache = (round_, surrogate)
        return {"round": round_, "labeled": record["labeled"], "surrogate_accuracy": record["accuracy"]}

    def _train_dense(self, round_: int) -> dict:
        args = self.args
        teacher = self._trained_surrogate(round_) if args.distill_alpha > 0 else None
        model = self._fused_start(round_) if args.fusion else self._fresh_dense(round_)
        training_args = args.dense_training_args(str(self.run_dir / TRAINER_DIR))
        # The fresh model's start accuracy is only worth an evaluation when it opens an accuracy curve.
        start_accuracy = None
        if args.fusion or _evaluates_during_training(training_args):
            # On a copy: evaluating marks a model as prepared, and Accelerate would then not wrap it in DDP for its
            # training (the processes' gradients would never be averaged).
            start_accuracy = self._evaluate(copy.deepcopy(model))
        record = self._train(model, training_args, round_, role="dense", seed_offset=2, teacher=teacher)
        record["accuracy_at_start"] = start_accuracy
        if "curve" in record and start_accuracy is not None:
            record["curve"].insert(0, {"step": 0, "accuracy": start_accuracy})
        self._round(round_)["dense"] = record
        if round_ == args.num_rounds + 1:
            self.progress["final"] = {**record, "labeled": self.pool.num_labeled}
            self.model = self.model_wrapped = model
            if self.is_world_process_zero():
                self.run_dir.save_dir(FUSED_DIR, lambda d: self._save_checkpoint(model, d))
        role = "fused" if args.fusion else "dense"
        return {"round": round_, "labeled": record["labeled"], f"{role}_accuracy_at_start": start_accuracy,
                f"{role}_accuracy": record["accuracy"]}  # fmt: skip

    def _sync(self, round_: int) -> dict:
        # Fuse, train the fused model, and prune it again: the next surrogate starts from what the dense model
        # learned, and the next fusion writes into this trained dense model.
        args = self.args
        fused = self._fused_start(round_)
        training_args = args.dense_training_args(str(self.run_dir / TRAINER_DIR))
        record = self._train(fused, training_args, round_, role="dense", seed_offset=3)
        surrogate, plan = prune_model(fused, args.pruning_ratio, importance=args.importance)
        if self.is_world_process_zero():
            self.run_dir.save_dir(DENSE_BASE_DIR, fused.save_pretrained)
            self.run_dir.save_dir(
                SURROGATE_INIT_DIR, lambda d: self._save_checkpoint(surrogate, d, plan=plan)
            )
        self._round(round_)["sync"] = record
        return {"round": round_, "synced_accuracy": record["accuracy"]}

    def _select(self, round_: int) -> dict:
        args = self.args
        query_size = args.query_sizes()[round_ - 1]
        unlabeled_indices = self.pool.unlabeled_indices
        started = time.perf_counter()
        outputs, scored = {}, 0
        if self.strategy.needs:
            model = self._trained_surrogate(round_)
            wanted = tuple(sorted(self.strategy.needs))
            # Shardable strategies select from each process's own shard: no process holds the whole pool's
            # scores or features. The labeled set's features (kcenter_greedy) are gathered everywhere.
            sharded = self.strategy.shardable
            unlabeled = self._score(model, unlabeled_indices, wanted, gather=not sharded)
            outputs = {name: getattr(unlabeled, name) for name in wanted}
            if sharded:
                outputs["accelerator"] = self.accelerator
            scored = len(unlabeled_indices) * (args.mc_samples if "mc_probs" in wanted else 1)
            if self.strategy.uses_labeled_features:
                labeled = self._score(model, self.pool.labeled_indices, ("features",))
                outputs["labeled_features"] = labeled.features
                scored += len(labeled)
            candidates = unlabeled.pool_indices
        else:
            candidates = unlabeled_indices
        selection = self.strategy.select(query_size, pool_indices=candidates, seed=args.selection_seed + round_,
                                         **outputs)  # fmt: skip
        costs = self.progress["costs"]
        self._round(round_)["selection"] = {
            "strategy": self.strategy.name,
            "query_size": query_size,
            "scored_examples": scored,
            "seconds": time.perf_counter() - started,
            "flops": FORWARD_FLOPS_PER_MAC * costs["surrogate"]["macs"] * scored,
            "dense_flops": FORWARD_FLOPS_PER_MAC * costs["dense"]["macs"] * scored,
        }
        self._set_query(round_ + 1, selection.indices, scores=selection.scores, strategy=self.strategy.name)
        record = self._round(round_)["selection"]
        return {"round": round_, "picked": len(selection), "strategy": self.strategy.name, "scored": scored,
                "selection_flops": record["flops"], "dense_equivalent_flops": record["dense_flops"]}  # fmt: skip

    def _label(self, round_: int) -> dict | None:
        """Labels come in for the query of `round_` (its examples join the labeled set in that round)."""
        query = self.progress["queries"][str(round_)]
        indices = np.asarray(query["pool_indices"], dtype=np.int64)
        if self.args.annotation == "human":
            store = LabelStore(self.run_dir.path, self.class_names)
            if not query_is_complete(self.run_dir.path, round_, indices, store):
                self._write_query(round_, indices, query["scores"])
                self._awaiting_labels = round_
                return None
            labels = store.as_array(len(self.pool))[indices]
        else:
            # Simulation goes through the same store as people's labels: the oracle is one more source.
            batch = oracle_labels(self.pool.dataset, self.args.label_column, indices, self.class_names)
            labels = self._store_labels(batch, round_, expected=indices).as_array(len(self.pool))[indices]
        labeled = labels >= 0
        scores = None if query["scores"] is None else np.asarray(query["scores"])[labeled]
        self.pool.label(indices[labeled], round=round_, scores=scores, strategy=query["strategy"],
                        labels=labels[labeled])  # fmt: skip
        histogram = Counter(self.class_names[int(y)] for y in labels[labeled])
        self.progress["queries"][str(round_)]["class_counts"] = dict(sorted(histogram.items()))
        classes = ", ".join(f"{name} {count}" for name, count in histogram.most_common())
        return {"round": round_, "labeled": self.pool.num_labeled, "unlabeled_in_query": int((~labeled).sum()) or None,
                "classes": classes}  # fmt: skip

    def add_labels(self, source, *, allow_partial: bool = False, overwrite: bool = False, **columns):
        """
        Bring annotators' labels for the open query into the run (the same as `prunefuse-hf label`); then continue
        with `train(resume_from_checkpoint=True)`.

        Args:
            source: Labels in any form `prunefuse_hf.label_files.read_labels` reads (CSV, JSON/JSONL, parquet, a
                Label Studio export, a dataset or a Hub dataset id), with pool indices and class names or ids.
            allow_partial (`bool`, *optional*): Continue with the labeled part of the query.
            overwrite (`bool`, *optional*): Replace stored labels the file contradicts.
            columns: `label_column` / `index_column` when they are not the usual names.

        Returns:
            `AddResult`: added, unchanged and overwritten counts, and the query's indices still missing.

        Raises:
            `LabelError`: refused labels (unknown class, index not queried, duplicates, missing labels); the run
                directory is then unchanged.
        """
        return ingest_labels(
            self.run_dir.path, source, allow_partial=allow_partial, overwrite=overwrite, **columns
        )

    def _set_query(self, round_: int, indices: np.ndarray, scores, strategy: str) -> None:
        self.progress.setdefault("queries", {})[str(round_)] = {
            "pool_indices": np.asarray(indices).tolist(),
            "scores": None if scores is None else np.asarray(scores).tolist(),
            "strategy": strategy,
        }

    def _store_labels(self, batch: LabelBatch, round_: int, expected=None) -> LabelStore:
        # Only the main process opens the store before the barrier: the others read it once it is written.
        if self.is_world_process_zero():
            LabelStore(self.run_dir.path, self.class_names).add(batch, round=round_, expected=expected)
        self.accelerator.wait_for_everyone()
        return LabelStore(self.run_dir.path, self.class_names)

    def _write_query(self, round_: int, indices: np.ndarray, scores) -> None:
        directory = query_directory(self.run_dir.path, round_)
        if self.is_world_process_zero() and not directory.is_dir():
            write_query_batch(directory, self.pool.dataset, indices, image_column=self.args.image_column,
                              class_names=self.class_names, round=round_, scores=scores)  # fmt: skip
            if self.args.hub_query_id:
                from ..hub.push import push_query_batch

                push_query_batch(directory, self.args.hub_query_id, round_, token=self.args.hub_token,
                                 private=self.args.hub_private_repo)  # fmt: skip
        self.accelerator.wait_for_everyone()
        logger.info(
            f"{len(indices):,} images to label for round {round_}: {directory} ({QUERY_CONTENTS}). Bring the "
            "labels with `prunefuse-hf label "
            f"{self.run_dir.path} --labels FILE`, then resume: {self.resume_command or 'trainer.train(resume_from_checkpoint=True)'}"
        )

    def _read_seed_labels(self, args, pool: DataPool) -> LabelBatch:
        indices = (
            np.flatnonzero(self._pool_labels >= 0) if args.annotation == "human" else np.zeros(0, np.int64)
        )
        batch = LabelBatch(indices, self._pool_labels[indices], source=f"dataset:{args.label_column}")
        if args.seed_labels:
            from_file = read_labels(args.seed_labels, self.class_names, pool_size=len(pool))
            both = np.concatenate([batch.pool_indices, from_file.pool_indices])
            labels = np.concatenate([batch.labels, from_file.labels])
            unique, first = np.unique(both, return_index=True)
            batch = LabelBatch(
                unique, labels[first], source=from_file.source if not len(indices) else "seed labels"
            )
        if not len(batch) and not args.initial_labeled_size:
            raise ValueError(
                "initial_labeled_size is 0 but there are no seed labels: give seed_labels (a labels file), rows of "
                "the pool that already have a label (with annotation: human), or an initial_labeled_size > 0."
            )
        return batch

    def _report(self) -> dict:
        if self.is_world_process_zero():
            write_report(self.run_dir, self.progress, self.args, self.class_names)
            self._write_model_card(self.run_dir.fused_dir)
            if self.args.push_to_hub:
                # A failed push raises before this step is marked done, so a resume (or `prunefuse-hf push`)
                # retries it.
                self.push_to_hub()
        return {"labeled": self.pool.num_labeled, "accuracy": self.progress.get("final", {}).get("accuracy")}

    # ----- training, scoring, evaluation -------------------------------------------------------

    def _train(self, model, args, round_: int, *, role: str, seed_offset: int, teacher=None) -> dict:
        args.seed = args.data_seed = self.args.seed + 1000 * round_ + seed_offset
        set_seed(args.seed)
        labeled = self.pool.labeled_indices
        train_dataset = PixelDataset(self.pool_pixels, labeled, self.pool.labels[labeled])
        # `eval_strategy` steps/epoch evaluates the dense model while it trains: its accuracy curve.
        curve = _evaluates_during_training(args) and self.eval_dataset is not None
        forwarder = _ForwardLogs(self, "fused" if role == "dense" and self.args.fusion else role)
        trainer = DistillationTrainer(model=model, args=args, train_dataset=train_dataset,
                                      eval_dataset=self.eval_dataset if curve else None, teacher_model=teacher,
                                      preprocessor=self.preprocessor, callbacks=[forwarder])  # fmt: skip
        started = time.perf_counter()
        with synced_batchnorm(model, enabled=self.args.sync_batchnorm):
            result = trainer.train()
        self.state.global_step += trainer.state.global_step
        evaluations = [entry for entry in trainer.state.log_history if "eval_accuracy" in entry]
        eval_seconds = sum(entry.get("eval_runtime", 0.0) for entry in evaluations)
        seconds = time.perf_counter() - started - eval_seconds  # training only, like an untracked run
        steps = trainer.state.global_step
        # An evaluation the Trainer already ran on the final weights is the model's accuracy.
        evaluated_at_end = (
            evaluations and evaluations[-1]["step"] == steps and not args.load_best_model_at_end
        )
        accuracy = evaluations[-1]["eval_accuracy"] if evaluated_at_end else self._evaluate(model, trainer)
        costs = self.progress["costs"]
        # The epochs actually trained (`max_steps` may end training before `num_train_epochs`).
        epochs = trainer.state.epoch or 0.0
        examples = int(round(len(train_dataset) * epochs))
        record = {
            "labeled": len(train_dataset),
            "epochs": epochs,
            "steps": steps,
            "train_loss": result.training_loss,
            "seconds": seconds,
            "flops": TRAIN_FLOPS_PER_MAC * costs[role]["macs"] * examples,
            "dense_flops": TRAIN_FLOPS_PER_MAC * costs["dense"]["macs"] * examples,
            "accuracy": accuracy,
        }
        if curve:
            record["eval_seconds"] = eval_seconds
            record["curve"] = [{"step": e["step"], "accuracy": e["eval_accuracy"]} for e in evaluations]
            if not evaluated_at_end:
                record["curve"].append({"step": steps, "accuracy": accuracy})
        return record

    def _evaluate(self, model, trainer=None) -> float | None:
        if self.eval_dataset is None:
            return None
        if trainer is None:
            args = self.args.dense_training_args(str(self.run_dir / TRAINER_DIR))
            trainer = DistillationTrainer(
                model=model, args=args, eval_dataset=self.eval_dataset, preprocessor=self.preprocessor
            )
        return trainer.evaluate(self.eval_dataset)["eval_accuracy"]

    def _score(self, model, pool_indices: np.ndarray, outputs: tuple[str, ...], gather: bool = True):
        return score_pool(
            model,
            PixelDataset(self.pool_pixels, pool_indices),
            pool_indices,
            batch_size=self.args.scoring_batch_size,
            outputs=outputs,
            accelerator=self.accelerator,
            gather=gather,
            mc_samples=self.args.mc_samples,
            preprocess=self.preprocessor.normalize,
            num_workers=self.args.dataloader_num_workers,
            show_progress=not self.args.disable_tqdm,
        )

    def _prepare_inputs(self, inputs: dict) -> dict:
        # The fused model's evaluation reads uint8 pixels like the inner trainers: normalize on the device.
        inputs = super()._prepare_inputs(inputs)
        if PIXEL_VALUES in inputs:
            inputs[PIXEL_VALUES] = self.preprocessor.normalize(inputs[PIXEL_VALUES])
        return inputs

    # ----- models of the run -------------------------------------------------------------------

    def _trained_surrogate(self, round_: int):
        if self._surrogate_cache and self._surrogate_cache[0] == round_:
            return self._surrogate_cache[1]
        # Resumed after this round's training: the saved surrogate is that training's result.
        return AutoModelForImageClassification.from_pretrained(self.run_dir.surrogate_dir)

    def _fused_start(self, round_: int):
        base = self._fresh_dense(round_) if self.args.fusion_init == "fresh" else None
        if base is None:
            base = AutoModelForImageClassification.from_pretrained(self.run_dir / DENSE_BASE_DIR)
        plan = PruningPlan.from_pretrained(self.run_dir / SURROGATE_INIT_DIR)
        return fuse_into_dense(
            base, self._trained_surrogate(round_), plan, copy_norm_stats=self.args.copy_norm_stats
        )

    def _fresh_dense(self, round_: int):
        if self.args.fusion_init == "fresh" and self.args.fusion:
            set_seed(self.args.seed + 7919 * round_)
            return AutoModelForImageClassification.from_config(self.dense_init_config)
        return AutoModelForImageClassification.from_pretrained(self.run_dir / DENSE_INIT_DIR)

    @property
    def dense_init_config(self):
        """The config of the run's dense initialization θ0 (`RUN/dense_init`)."""
        return AutoConfig.from_pretrained(self.run_dir / DENSE_INIT_DIR)

    def _load_final_model(self) -> None:
        if not isinstance(self.model, PreTrainedModel) or self.model.config.num_labels != len(
            self.class_names
        ):
            return
        final = AutoModelForImageClassification.from_pretrained(self.run_dir.fused_dir)
        self.model = self.model_wrapped = final.to(self.args.device)

    # ----- the run directory -------------------------------------------------------------------

    def _open_run(self, resume: bool) -> None:
        if self.is_world_process_zero():
            self.run_dir.prepare(resume=resume, overwrite=self.args.overwrite_output_dir)
        self.accelerator.wait_for_everyone()
        current = self._result_settings()
        if not resume:
            self.progress = {"version": STATE_VERSION, "completed": [], "settings": current,
                             "resume_command": self.resume_command,
                             "method_overrides": self.args.method_overrides, "recipe": redact_secrets(self.recipe),
                             "class_names": self.class_names, "rounds": {}, "final": {}}  # fmt: skip
            return
        progress = self.run_dir.read_state()
        if progress.get("version") != STATE_VERSION:
            raise ValueError(
                f"{self.run_dir.state_path} was written by another prunefuse-hf version (state version "
                f"{progress.get('version')}, this one reads {STATE_VERSION}); start a new run."
            )
        saved = progress["settings"]
        changed = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
        if changed:
            details = "; ".join(f"{k}: the run has {old!r}, now {new!r}" for k, (old, new) in changed.items())
            raise ValueError(
                f"Cannot resume {self.run_dir.path} with different settings ({details}). Resume with the run's "
                "settings, or start a new run in another output_dir."
            )
        self._check_same_pool(progress)
        self.pool.load_state_dict(progress["pool"], check_fingerprint=False)
        self.progress = progress
        dense_init = AutoModelForImageClassification.from_pretrained(self.run_dir / DENSE_INIT_DIR)
        self.model = self.model_wrapped = dense_init.to(self.args.device)

    def _result_settings(self) -> dict:
        settings = {name: getattr(self.args, name, None) for name in RESULT_FIELDS}
        settings["preprocessing"] = {
            "processor": self.processing_class.to_dict(),
            "input_shape": list(self.input_shape),
        }
        settings["pool_size"] = len(self.pool)
        settings["eval_set"] = None
        if self.raw_eval_dataset is not None:
            settings["eval_set"] = {"num_rows": len(self.raw_eval_dataset),
                                    "fingerprint": self.raw_eval_dataset._fingerprint}  # fmt: skip
        # As they read back from state.json, so that a resume compares like with like.
        return json.loads(json.dumps(settings, default=json_default))

    def _check_same_pool(self, progress: dict) -> None:
        # A pool is the same when it has as many rows and every row the run already trained on holds the same
        # pixels: a repaired file, a re-encoded image of the same content or a moved folder still resume.
        digests = progress.get("row_digests", {})
        rows = np.asarray([int(i) for i in digests], dtype=np.int64)
        changed = [int(i) for i, d in zip(rows, self._row_digests(rows)) if digests[str(int(i))] != d]
        if changed:
            raise ValueError(
                f"Cannot resume {self.run_dir.path}: the pool is not the run's. {len(changed)} of the {len(rows)} rows "
                f"the run already labeled hold other pixels now (pool index {changed[:5]}). Load the same dataset, "
                "split and revision (with the same max_pool_size and seed)."
            )

    def _row_digests(self, rows: np.ndarray) -> list[str]:
        digests = []
        for start in range(0, len(rows), 512):
            batch = self.pool_pixels[rows[start : start + 512].tolist()][PIXEL_VALUES]
            digests += [
                hashlib.blake2b(np.ascontiguousarray(row).tobytes(), digest_size=8).hexdigest()
                for row in batch
            ]
        return digests

    def _save_state(self) -> None:
        labeled = self.pool.labeled_indices
        known = self.progress.setdefault("row_digests", {})
        new = np.asarray([i for i in labeled.tolist() if str(i) not in known], dtype=np.int64)
        known.update({str(int(i)): d for i, d in zip(new, self._row_digests(new))})
        if self.is_world_process_zero():
            self.pool.save_selection(self.run_dir.selection_path, class_names=self.class_names,
                                     references=self._example_references())  # fmt: skip
            self.run_dir.write_json(STATE_NAME, self.progress)
        self.accelerator.wait_for_everyone()

    def _example_references(self) -> dict | None:
        # The file each example came from (image folders, datasets that keep paths), for the selection table:
        # relative to the folder all the pool's files share, so no local directory travels with a pushed subset.
        if self._image_paths is None:
            column = self.args.image_column
            self._image_paths = []
            if isinstance(self.pool.dataset.features[column], datasets.Image):
                stored = self.pool.dataset.select_columns([column]).cast_column(
                    column, datasets.Image(decode=False)
                )
                self._image_paths = [value.get("path") if value else None for value in stored[column]]
                local = [p for p in self._image_paths if p and os.path.isabs(p)]
                root = os.path.commonpath(local) if local else None
                if root is not None and len(local) == 1:
                    root = os.path.dirname(root)
                self._image_paths = [os.path.relpath(p, root) if root and p and os.path.isabs(p) else p
                                     for p in self._image_paths]  # fmt: skip
        if not any(self._image_paths):
            return None
        labeled = self.pool.labeled_indices.tolist()
        return {IMAGE_PATH: {i: self._image_paths[i] for i in labeled}}

    def _round(self, round_: int) -> dict:
        return self.progress["rounds"].setdefault(str(round_), {"round": round_})

    def _report_interruption(self, step: Step | None) -> None:
        done = len(self.progress.get("completed", []))
        command = self.resume_command or "trainer.train(resume_from_checkpoint=True)"
        logger.warning(
            f"Interrupted{f' during step {step.name}' if step else ''}. Kept: {done} finished steps of "
            f"{len(self.steps)} in {self.run_dir.path} ({STATE_NAME}, {self.pool.num_labeled} labeled examples). "
            f"Resume with: {command}"
        )

    # ----- checkpoints, cards and the Hub ------------------------------------------------------

    def _save_checkpoint(self, model, directory, plan: PruningPlan | None = None) -> None:
        model.config.id2label = dict(enumerate(self.class_names))
        model.config.label2id = {name: i for i, name in enumerate(self.class_names)}
        model.save_pretrained(directory)
        self.processing_class.save_pretrained(directory)
        if plan is not None:
            plan.save_pretrained(directory)

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
            self._save_checkpoint(self.model, output_dir)
            self._write_model_card(Path(output_dir))

    def _write_model_card(self, directory: Path) -> None:
        from ..hub.cards import write_model_card

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
        from ..hub.push import push_run

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


class _ForwardLogs(TrainerCallback):
    """Passes an inner trainer's logs (loss, learning rate, evaluations) to the PruneFuse trainer under a prefix,
    at the run's cumulative step, so `report_to` integrations and callbacks see every training of the run."""

    def __init__(self, outer: PruneFuseTrainer, prefix: str):
        self.outer, self.prefix = outer, prefix
        self.start = outer.state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        outer_state = self.outer.state
        outer_state.global_step = self.start + state.global_step
        outer_state.log_history.append({**{f"{self.prefix}/{k}": v for k, v in (logs or {}).items()},
                                        "step": outer_state.global_step})  # fmt: skip
        self.outer.control = self.outer.callback_handler.on_log(
            self.outer.args,
            outer_state,
            self.outer.control,
            {f"{self.prefix}/{k}": v for k, v in (logs or {}).items()},
        )


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


def _configure_package_logging(args: PruneFuseConfig) -> None:
    # The package's loggers are not under `transformers`: give them a handler and follow the run's log level
    # (INFO on the main process unless `log_level` says otherwise), so each step's line is seen.
    package_logger = std_logging.getLogger(_PACKAGE_LOGGER)
    level = args.get_process_log_level()
    if args.log_level == "passive" and args.should_log:
        level = std_logging.INFO
    package_logger.setLevel(level)
    if not package_logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(std_logging.Formatter("[prunefuse] %(message)s"))
        package_logger.addHandler(handler)
        package_logger.propagate = False


class _StderrHandler(std_logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record is emitted (it may be replaced after set-up)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _main_process_first(args):
    from accelerate import PartialState

    state = PartialState(cpu=args.use_cpu)
    return state.main_process_first() if state.num_processes > 1 else contextlib.nullcontext()


def _check_trainable(dense: PreTrainedModel, input_shape: tuple, args: PruneFuseConfig) -> None:
    """Refuse settings the model cannot train with, before any training: inputs too small for the model, and
    batches of one example where BatchNorm sees a single value per channel."""
    smallest = check_input_size(dense, input_shape, image_size_field="image_size")
    check_batchnorm_batch_sizes(args, smallest)


def _evaluates_during_training(args) -> bool:
    return args.eval_strategy != IntervalStrategy.NO


def _describe(key: str, value) -> str:
    if key == "step":
        return str(value)
    if isinstance(value, float):
        return f"{key.replace('_', ' ')} {value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{key.replace('_', ' ')} {value:,}"
    return f"{key.replace('_', ' ')}: {value}"
