"""`PruneFuseLoop`: the whole PruneFuse run, one resumable step at a time.

Round r (1 = the random initial set) trains the surrogate on the labeled set, evaluates it, scores
the unlabeled pool and labels the top `query_size[r-1]` examples as round r+1. After the last query
the surrogate is trained once more on the final labeled set, fused into the dense initialization and
the fused model is trained (with distillation from the surrogate when `distill_alpha > 0`).

Every step ends by writing its outputs and then `state.json` (atomically), so an interrupted run
resumes at the first unfinished step and, with the same seed, ends with the same selection.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

from accelerate import Accelerator, PartialState
from transformers import AutoModelForImageClassification, PreTrainedModel, set_seed
from transformers.trainer_utils import IntervalStrategy
from transformers.utils import logging

from .config import PruneFuseConfig
from .cost import FORWARD_FLOPS_PER_MAC, TRAIN_FLOPS_PER_MAC, model_cost
from .data import num_classes, prepare_dataset, validate_image_dataset
from .fusion import fuse_into_dense
from .hub import push_from_config
from .model_card import redact_secrets, write_model_card
from .modeling import load_image_classifier
from .plan import PruningPlan, config_hash
from .pool import DataPool
from .pruning import prune_model
from .report import build_metrics, write_report
from .rundir import DENSE_BASE_DIR, DENSE_INIT_DIR, SURROGATE_INIT_DIR, TRAINER_DIR, RunDirectory
from .scoring import active_dropout_layers, score_pool
from .strategies import get_strategy
from .trainer import PruneFuseTrainer

logger = logging.get_logger(__name__)

STATE_VERSION = 1
# Config fields that change what a run selects or trains: resuming with other values is refused.
RESUME_FIELDS = (
    "pruning_ratio", "importance", "strategy", "initial_labeled_size", "query_size", "num_rounds", "seed",
    "selection_seed", "surrogate_init", "fusion", "fusion_init", "copy_norm_stats", "sync_every",
    "distill_alpha", "distill_temperature", "eval_dense_every_round",
)  # fmt: skip


@dataclass(frozen=True)
class Step:
    """One resumable unit of work: `kind` in init/train_surrogate/select/sync/train_dense/report."""

    kind: str
    round: int = 0

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.round}" if self.round else self.kind


class PruneFuseLoop:
    """Runs a PruneFuse experiment in `config.output_dir`.

    Args:
        model: The dense model: a `PreTrainedModel` (its current weights are θ0), a Hub id or checkpoint
            directory, or a config (random initialization seeded with `config.seed`).
        train_dataset: The pool, a `datasets.Dataset` with an image and an integer label column.
        config: The run's `PruneFuseConfig`.
        eval_dataset: Dataset every trained model is evaluated on (optional).
        image_processor: The model's image processor, if it has one.
        image_column, label_column: Column names in both datasets.
        image_size: Resize images to this size (default: processor's or the images' own size).
        augment: Random crop and flip while training.
        resume: Continue the run in `output_dir`.
        overwrite: Replace whatever `output_dir` holds.
        recipe: The recipe the run was started from, recorded in the state and the report.

    Example:
        ```python
        >>> loop = PruneFuseLoop(ResNetConfig(num_channels=1, num_labels=10), pool, config, eval_dataset=test)
        >>> while loop.step():
        ...     print(loop.pool.num_labeled)
        >>> loop.metrics["final"]["accuracy"]
        ```
    """

    def __init__(
        self,
        model,
        train_dataset,
        config: PruneFuseConfig,
        *,
        eval_dataset=None,
        image_processor=None,
        image_column: str = "image",
        label_column: str = "label",
        image_size: int | None = None,
        augment: bool = False,
        resume: bool = False,
        overwrite: bool = False,
        recipe: dict | None = None,
    ):
        self.config = config
        self.state = PartialState(cpu=config.use_cpu)
        # Scoring shards the pool over the processes that `accelerate launch` started (one otherwise).
        self.accelerator = Accelerator(cpu=config.use_cpu)
        self.run_dir = RunDirectory(config.output_dir)
        self.image_processor = image_processor
        self.columns = {"image_column": image_column, "label_column": label_column}
        self.image_size = image_size
        self.augment = augment
        self.strategy = get_strategy(config.strategy)

        validate_image_dataset(train_dataset, image_column, label_column)
        if eval_dataset is not None:
            validate_image_dataset(eval_dataset, image_column, label_column)
        self.pool = DataPool(train_dataset)
        self.eval_dataset = eval_dataset
        self.num_labels = num_classes(train_dataset, label_column)
        self._check_budget()
        if not resume:
            self.dense_init = self._build_dense(model)
            if "mc_probs" in self.strategy.needs:
                active_dropout_layers(self.dense_init)  # raises, naming the model, when there is none
        # All checks above run before the run directory is touched: bad input never costs an old run.
        if self.state.is_main_process:
            self.run_dir.prepare(resume=resume, overwrite=overwrite)
        self.state.wait_for_everyone()

        if resume:
            self._load_state()
            self.dense_init = AutoModelForImageClassification.from_pretrained(self.run_dir / DENSE_INIT_DIR)
        else:
            self.progress = {"version": STATE_VERSION, "completed": [], "config": self._resume_fields(),
                             "recipe": redact_secrets(recipe), "rounds": {}, "final": {}}  # fmt: skip
        self.steps = self._plan_steps()
        self._cache: dict = {}

    # -- set-up -------------------------------------------------------------------------------

    def _check_budget(self) -> None:
        sizes = self.config.query_sizes()
        total = self.config.initial_labeled_size + sum(sizes)
        if total > len(self.pool):
            raise ValueError(
                f"The labeling budget is larger than the pool: initial_labeled_size ({self.config.initial_labeled_size}) "
                f"+ query_size over {self.config.num_rounds} rounds ({sum(sizes)}) = {total}, but the pool has "
                f"{len(self.pool)} examples. Lower initial_labeled_size, query_size or num_rounds, or use a "
                "larger pool (max_pool_size)."
            )

    def _build_dense(self, model) -> PreTrainedModel:
        set_seed(self.config.seed)
        if isinstance(model, PreTrainedModel):
            labels = model.config.num_labels
            if labels != self.num_labels:
                raise ValueError(
                    f"The model has {labels} labels but the dataset's '{self.columns['label_column']}' column has "
                    f"{self.num_labels} classes. Pass a Hub id, path or config instead (the head is then resized), "
                    "or a model built with num_labels matching the data."
                )
            return model
        return load_image_classifier(model, num_labels=self.num_labels)

    def _resume_fields(self) -> dict:
        return {name: getattr(self.config, name, None) for name in RESUME_FIELDS}

    def _load_state(self) -> None:
        self.progress = self.run_dir.read_state()
        if self.progress.get("version") != STATE_VERSION:
            raise ValueError(
                f"{self.run_dir.state_path} was written by another prunefuse-hf version; start a new run."
            )
        saved, current = self.progress["config"], self._resume_fields()
        changed = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
        if changed:
            details = ", ".join(f"{k}: run has {old!r}, now {new!r}" for k, (old, new) in changed.items())
            raise ValueError(
                f"Cannot resume {self.run_dir.path} with different settings ({details}). Resume with the run's "
                "settings, or start a new run in another output_dir."
            )
        self.pool.load_state_dict(self.progress["pool"])

    def _plan_steps(self) -> list[Step]:
        config = self.config
        last = config.num_rounds + 1
        needs_teacher = config.fusion or config.distill_alpha > 0
        steps = [Step("init")]
        for r in range(1, last + 1):
            selecting = r < last
            syncing = selecting and config.sync_every > 0 and r % config.sync_every == 0
            evaluating_dense = r == last or config.eval_dense_every_round
            # Everything trained in round r sees the labeled set of round r, so selection comes last.
            if (selecting and self.strategy.needs) or syncing or (evaluating_dense and needs_teacher):
                steps.append(Step("train_surrogate", r))
            if evaluating_dense:
                steps.append(Step("train_dense", r))
            if syncing:
                steps.append(Step("sync", r))
            if selecting:
                steps.append(Step("select", r))
        steps.append(Step("report"))
        return steps

    # -- driving ------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return all(step.name in self.progress["completed"] for step in self.steps)

    def step(self) -> bool:
        """Run the next unfinished round (all of its steps). Returns False once the run is complete."""
        pending = [s for s in self.steps if s.name not in self.progress["completed"]]
        if not pending:
            return False
        round_ = pending[0].round
        for step in pending:
            if step.round != round_ and step.kind != "report":
                break
            self._run_step(step)
            if step.kind == "report":
                break
        return not self.done

    def run(self) -> dict:
        """Run every remaining step; returns the metrics."""
        while self.step():
            pass
        return self.metrics

    def _run_step(self, step: Step) -> None:
        logger.info("PruneFuse step %s", step.name)
        getattr(self, f"_step_{step.kind}")(step.round)
        self.progress["completed"].append(step.name)
        self.progress["pool"] = self.pool.state_dict()
        if self.state.is_main_process:
            self.pool.save_selection(self.run_dir.selection_path)
            self.run_dir.write_json(self.run_dir.state_path.name, self.progress)
        self.state.wait_for_everyone()

    @property
    def metrics(self) -> dict:
        return build_metrics(self.progress)

    # -- steps --------------------------------------------------------------------------------

    def _step_init(self, _round: int) -> None:
        config = self.config
        self.pool.label_randomly(config.initial_labeled_size, seed=config.selection_seed, round=1)
        surrogate, plan = prune_model(self.dense_init, config.pruning_ratio, importance=config.importance)
        image_size = self._input_size()
        dense_cost, surrogate_cost = (
            model_cost(self.dense_init, image_size),
            model_cost(surrogate, image_size),
        )
        self.progress["costs"] = {
            "image_size": list(image_size),
            "dense": dense_cost.to_dict(),
            "surrogate": surrogate_cost.to_dict(),
            "dense_config_hash": config_hash(self.dense_init.config),
        }
        if self.state.is_main_process:
            self.run_dir.save_dir(DENSE_INIT_DIR, self.dense_init.save_pretrained)
            self.run_dir.save_dir(DENSE_BASE_DIR, self.dense_init.save_pretrained)
            self.run_dir.save_dir(SURROGATE_INIT_DIR, lambda d: _save_with_plan(surrogate, plan, d))

    def _step_train_surrogate(self, round_: int) -> None:
        config = self.config
        warm = config.surrogate_init == "warm" and (self.run_dir.surrogate_dir / "config.json").exists()
        start_dir = self.run_dir.surrogate_dir if warm else self.run_dir / SURROGATE_INIT_DIR
        surrogate = AutoModelForImageClassification.from_pretrained(start_dir)
        plan = PruningPlan.from_pretrained(self.run_dir / SURROGATE_INIT_DIR)
        args = config.surrogate_training_args(str(self.run_dir / TRAINER_DIR))
        record = self._train(surrogate, args, round_, role="surrogate", seed_offset=1)
        if self.state.is_main_process:
            self.run_dir.save_dir(
                self.run_dir.surrogate_dir.name, lambda d: _save_with_plan(surrogate, plan, d)
            )
        self._round(round_)["surrogate"] = record
        self._cache["surrogate"] = (round_, surrogate)

    def _step_select(self, round_: int) -> None:
        config = self.config
        query_size = config.query_sizes()[round_ - 1]
        model = self._trained_surrogate(round_) if self.strategy.needs else None
        started = time.perf_counter()
        outputs = {}
        scored = 0
        if self.strategy.needs:
            score = functools.partial(score_pool, model, batch_size=config.scoring_batch_size,
                                      accelerator=self.accelerator, mc_samples=config.mc_samples)  # fmt: skip
            wanted = tuple(sorted(self.strategy.needs))
            # Shardable strategies select from each process's own shard: no process holds the whole pool's
            # scores or features. The labeled set's features (kcenter_greedy) are gathered everywhere.
            sharded = self.strategy.shardable
            unlabeled = score(self._prepared(self.pool.unlabeled), self.pool.unlabeled_indices, outputs=wanted,
                              gather=not sharded)  # fmt: skip
            outputs = {name: getattr(unlabeled, name) for name in wanted}
            if sharded:
                outputs["accelerator"] = self.accelerator
            scored = self.pool.num_unlabeled * (config.mc_samples if "mc_probs" in wanted else 1)
            if self.strategy.uses_labeled_features:
                labeled = score(
                    self._prepared(self.pool.labeled), self.pool.labeled_indices, outputs=("features",)
                )
                outputs["labeled_features"] = labeled.features
                scored += len(labeled)
        selection = self.strategy.select(
            query_size,
            pool_indices=unlabeled.pool_indices if self.strategy.needs else self.pool.unlabeled_indices,
            seed=config.selection_seed + round_,
            **outputs,
        )
        self.pool.label(
            selection.indices, round=round_ + 1, scores=selection.scores, strategy=self.strategy.name
        )
        costs = self.progress["costs"]
        self._round(round_)["selection"] = {
            "strategy": self.strategy.name,
            "query_size": query_size,
            "scored_examples": scored,
            "seconds": time.perf_counter() - started,
            "flops": FORWARD_FLOPS_PER_MAC * costs["surrogate"]["macs"] * scored,
            "dense_flops": FORWARD_FLOPS_PER_MAC * costs["dense"]["macs"] * scored,
        }

    def _step_sync(self, round_: int) -> None:
        # Fuse, train the fused model, and prune it again: the next surrogate starts from what the dense
        # model learned, and the next fusion writes into this trained dense model.
        fused = self._fused_start(round_)
        record = self._train(fused, self.config.dense_training_args(str(self.run_dir / TRAINER_DIR)), round_,
                             role="dense", seed_offset=3)  # fmt: skip
        surrogate, plan = prune_model(fused, self.config.pruning_ratio, importance=self.config.importance)
        if self.state.is_main_process:
            self.run_dir.save_dir(DENSE_BASE_DIR, fused.save_pretrained)
            self.run_dir.save_dir(SURROGATE_INIT_DIR, lambda d: _save_with_plan(surrogate, plan, d))
        self._round(round_)["sync"] = record

    def _step_train_dense(self, round_: int) -> None:
        config = self.config
        teacher = self._trained_surrogate(round_) if config.distill_alpha > 0 else None
        model = self._fused_start(round_) if config.fusion else self._fresh_dense(round_)
        args = config.dense_training_args(str(self.run_dir / TRAINER_DIR))
        # The fresh model's start accuracy is only worth an evaluation when it opens an accuracy curve.
        start_accuracy = self._evaluate(model) if config.fusion or _evaluates_during_training(args) else None
        record = self._train(model, args, round_, role="dense", seed_offset=2, teacher=teacher)
        record["accuracy_at_start"] = start_accuracy
        if "curve" in record and start_accuracy is not None:
            record["curve"].insert(0, {"step": 0, "accuracy": start_accuracy})
        self._round(round_)["dense"] = record
        if round_ == config.num_rounds + 1:
            self.progress["final"] = {**record, "labeled": self.pool.num_labeled}
            if self.state.is_main_process:
                self.run_dir.save_dir(self.run_dir.fused_dir.name, model.save_pretrained)

    def _step_report(self, _round: int) -> None:
        if self.state.is_main_process:
            write_report(self.run_dir, self.progress, self.config)
            # The fused model's card, pushed or not; then the push the config asks for (if any). A failed
            # push raises before this step is marked done, so `--resume` (or `prunefuse-hf push`) retries it.
            write_model_card(self.run_dir.path, progress=self.progress)
            push_from_config(self.run_dir.path, self.config)

    # -- helpers ------------------------------------------------------------------------------

    def _round(self, round_: int) -> dict:
        return self.progress["rounds"].setdefault(str(round_), {"round": round_})

    def _prepared(self, dataset, train: bool = False):
        return prepare_dataset(dataset, self.dense_init.config, self.image_processor, train=train,
                               augment=self.augment and train, image_size=self.image_size, **self.columns)  # fmt: skip

    def _input_size(self) -> tuple[int, int]:
        example = self._prepared(self.pool.dataset.select([0]))[0]["pixel_values"]
        return tuple(example.shape[-2:])

    def _trained_surrogate(self, round_: int):
        cached = self._cache.get("surrogate")
        if cached and cached[0] == round_:
            return cached[1]
        # Resumed after this round's training: the saved surrogate is that training's result.
        return AutoModelForImageClassification.from_pretrained(self.run_dir.surrogate_dir)

    def _fused_start(self, round_: int):
        base_dir = self.run_dir / DENSE_BASE_DIR
        base = self._fresh_dense(round_) if self.config.fusion_init == "fresh" else None
        if base is None:
            base = AutoModelForImageClassification.from_pretrained(base_dir)
        plan = PruningPlan.from_pretrained(self.run_dir / SURROGATE_INIT_DIR)
        return fuse_into_dense(
            base, self._trained_surrogate(round_), plan, copy_norm_stats=self.config.copy_norm_stats
        )

    def _fresh_dense(self, round_: int):
        if self.config.fusion_init == "fresh" and self.config.fusion:
            set_seed(self.config.seed + 7919 * round_)
            return AutoModelForImageClassification.from_config(self.dense_init.config)
        return AutoModelForImageClassification.from_pretrained(self.run_dir / DENSE_INIT_DIR)

    def _train(self, model, args, round_: int, *, role: str, seed_offset: int, teacher=None) -> dict:
        args.seed = args.data_seed = self.config.seed + 1000 * round_ + seed_offset
        set_seed(args.seed)
        train_dataset = self._prepared(self.pool.labeled, train=True)
        # `eval_strategy` steps/epoch evaluates the dense model while it trains: its accuracy curve.
        curve = _evaluates_during_training(args) and self.eval_dataset is not None
        eval_dataset = self._prepared(self.eval_dataset) if curve else None
        trainer = PruneFuseTrainer(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                                   teacher_model=teacher)  # fmt: skip
        started = time.perf_counter()
        result = trainer.train()
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
        examples = int(round(len(train_dataset) * args.num_train_epochs))
        macs = costs[role]["macs"]
        record = {
            "labeled": len(train_dataset),
            "epochs": args.num_train_epochs,
            "steps": steps,
            "train_loss": result.training_loss,
            "seconds": seconds,
            "flops": TRAIN_FLOPS_PER_MAC * macs * examples,
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
        eval_dataset = self._prepared(self.eval_dataset)
        if trainer is None:
            args = self.config.dense_training_args(str(self.run_dir / TRAINER_DIR))
            trainer = PruneFuseTrainer(model=model, args=args, eval_dataset=eval_dataset)
        metrics = trainer.evaluate(eval_dataset)
        return metrics["eval_accuracy"]


def _evaluates_during_training(args) -> bool:
    return args.eval_strategy != IntervalStrategy.NO


def _save_with_plan(model, plan: PruningPlan, directory) -> None:
    model.save_pretrained(directory)
    plan.save_pretrained(directory)
