"""The models the steps of a run train, evaluate, load and save: one inner training ([`train_model`], with the
run's seeds, the user's callbacks on the final model's training and the cost ledger's record), one evaluation
([`evaluate_model`]), the round's surrogate, the fused or fresh dense model a round starts from, and pipeline-ready
checkpoints ([`save_checkpoint`]). Each takes the `PruneFuseTrainer` whose run it serves (see `run_plan`)."""

from __future__ import annotations

import time

from transformers import set_seed
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_utils import IntervalStrategy

from ..constants import DENSE_BASE_DIR, DENSE_INIT_DIR, SURROGATE_INIT_DIR, TRAINER_DIR
from ..pruning.cost import TRAIN_FLOPS_PER_MAC
from ..pruning.fusion import fuse_into_dense
from ..pruning.plan import PruningPlan
from ..pruning.replay import load_surrogate, save_surrogate
from .batchnorm import synced_batchnorm
from .run_logging import ForwardLogs, without_callbacks
from .training_settings import user_callbacks


def train_model(
    trainer, model, args, round_: int, *, role: str, seed_offset: int, teacher=None, final: bool = False
) -> dict:
    """
    Train `model` on the run's labeled set with an inner trainer (the task's `DistillationTrainer`), then measure it.

    Args:
        trainer ([`PruneFuseTrainer`]): The run's trainer.
        model ([`~transformers.PreTrainedModel`]): The surrogate, or the fused or fresh dense model.
        args ([`~transformers.TrainingArguments`]): Its training settings (`PruneFuseConfig.surrogate_training_args`
            or `dense_training_args`); their seeds are set here, from the run's seed, the round and `seed_offset`.
        round_ (`int`): The round it trains in.
        role (`str`): `surrogate` or `dense`: its cost row in the ledger, and the prefix of its forwarded logs.
        seed_offset (`int`): Tells the trainings of one round apart in their seeds.
        teacher (*optional*): The trained surrogate it distills from.
        final (`bool`, *optional*): The final model's training: the user's callbacks see it as a stock `Trainer`'s.

    Returns:
        `dict`: the training's record in `state.json`: `labeled`, `epochs`, `steps`, `train_loss`, `seconds`, `flops`,
        `dense_flops`, the metric, `evaluation` (every metric of the task's evaluation, `None` without an
        evaluation set) and, when it was evaluated while training, `eval_seconds` and `curve`.
    """
    offset = 1000 * round_ + seed_offset
    args.seed = trainer.args.seed + offset
    args.data_seed = (
        trainer.args.seed if trainer.args.data_seed is None else trainer.args.data_seed
    ) + offset
    set_seed(args.seed)
    train_dataset = trainer.examples.train_dataset(trainer.pool.labeled_indices)
    # `eval_strategy` steps/epoch evaluates the dense model while it trains: its accuracy curve.
    curve = (evaluates_during_training(args) or args.eval_on_start) and trainer.eval_dataset is not None
    # The user's callbacks see the final model's training as a stock Trainer's callbacks would (its own args, state
    # and control: EarlyStoppingCallback stops it); of the other trainings, the forwarded logs.
    users = user_callbacks(trainer.callback_handler.callbacks, trainer.args.report_to) if final else []
    forwarder = ForwardLogs(
        trainer, "fused" if role == "dense" and trainer.args.fusion else role, excluded=users
    )
    inner = trainer.examples.inner_trainer(model, args, train_dataset=train_dataset,
                                           eval_dataset=trainer.eval_dataset if curve else None, teacher=teacher,
                                           callbacks=[forwarder, *users])  # fmt: skip
    _quiet(inner)
    started = time.perf_counter()
    with synced_batchnorm(model, enabled=trainer.args.sync_batchnorm):
        result = inner.train()
    trainer.state.global_step += inner.state.global_step
    metric = trainer.examples.metric
    evaluations = [entry for entry in inner.state.log_history if f"eval_{metric}" in entry]
    eval_seconds = sum(entry.get("eval_runtime", 0.0) for entry in evaluations)
    seconds = time.perf_counter() - started - eval_seconds  # training only, like an untracked run
    steps = inner.state.global_step
    # An evaluation the Trainer already ran on the final weights is the model's accuracy.
    evaluated_at_end = evaluations and evaluations[-1]["step"] == steps and not args.load_best_model_at_end
    if evaluated_at_end:
        evaluation = task_metrics(trainer, evaluations[-1])
    else:  # the run's measurement, after the training the user's callbacks saw
        with without_callbacks(inner.callback_handler, users):
            evaluation = evaluate_model(trainer, model, inner)
    costs = trainer.progress["costs"]
    # The epochs actually trained (`max_steps` may end training before `num_train_epochs`).
    epochs = inner.state.epoch or 0.0
    examples = int(round(len(train_dataset) * epochs))
    record = {
        "labeled": len(train_dataset),
        "epochs": epochs,
        "steps": steps,
        "train_loss": result.training_loss,
        "seconds": seconds,
        "flops": TRAIN_FLOPS_PER_MAC * costs[role]["macs"] * examples,
        "dense_flops": TRAIN_FLOPS_PER_MAC * costs["dense"]["macs"] * examples,
        metric: None if evaluation is None else evaluation.get(metric),
        "evaluation": evaluation,
    }
    if curve:
        record["eval_seconds"] = eval_seconds
        record["curve"] = [{"step": e["step"], metric: e[f"eval_{metric}"]} for e in evaluations]
        if not evaluated_at_end:
            record["curve"].append({"step": steps, metric: record[metric]})
    return record


def evaluate_model(trainer, model, inner=None) -> dict[str, float] | None:
    """
    Evaluate `model` on the run's evaluation set with `inner` (the trainer that trained it) or a new inner trainer.

    Args:
        trainer ([`PruneFuseTrainer`]): The run's trainer.
        model ([`~transformers.PreTrainedModel`]): The model to evaluate.
        inner ([`~transformers.Trainer`], *optional*): The inner trainer that trained it.

    Returns:
        `dict[str, float] | None`: every number of the evaluation (see [`task_metrics`]), the run's metric first;
        `None` without an evaluation set.
    """
    if trainer.eval_dataset is None:
        return None
    if inner is None:
        args = trainer.args.dense_training_args(str(trainer.run_dir / TRAINER_DIR))
        inner = trainer.examples.inner_trainer(model, args, eval_dataset=trainer.eval_dataset)
        _quiet(inner)
    return task_metrics(trainer, inner.evaluate(trainer.eval_dataset))


# What an evaluation logs besides its metrics.
NOT_METRICS = ("loss", "runtime", "samples_per_second", "steps_per_second", "model_preparation_time")


def task_metrics(trainer, logs: dict) -> dict[str, float]:
    """
    Every number of an evaluation's logs without its `eval_` prefix (`eval_map_50` -> `map_50`, the per-class
    `map_<class>`), the run's metrics (its examples' `metric_names`, the task's) first; the loss and the speed figures
    left out.

    Example:

    ```python
    >>> from types import SimpleNamespace
    >>> run = SimpleNamespace(examples=SimpleNamespace(metric_names=("accuracy",)))
    >>> task_metrics(run, {"eval_loss": 0.3, "eval_accuracy": 0.9, "eval_runtime": 1.2, "epoch": 2.0})
    {'accuracy': 0.9}
    ```
    """
    numbers = {
        key[5:]: value
        for key, value in logs.items()
        if key.startswith("eval_") and key[5:] not in NOT_METRICS
    }
    first = [name for name in trainer.examples.metric_names if name in numbers]
    return {**{name: numbers[name] for name in first}, **numbers}


def _quiet(inner) -> None:
    # Without bars (disable_tqdm) the stock Trainer prints every log dict on stdout: the run's logs go to the
    # PruneFuse trainer instead (ForwardLogs), and its callbacks show them. With bars, the stock ProgressCallback
    # shows them at every `logging_steps`.
    if inner.args.disable_tqdm:
        inner.remove_callback(PrinterCallback)


def round_surrogate(trainer, round_: int):
    """The surrogate trained in `round_`: the one in memory, else (a resumed run) the saved one."""
    if trainer.trained_surrogate and trainer.trained_surrogate[0] == round_:
        return trainer.trained_surrogate[1]
    # Resumed after this round's training: the saved surrogate is that training's result.
    return load_surrogate(trainer.run_dir.surrogate_dir)


def fused_model(trainer, round_: int):
    """The dense model `round_` starts from with fusion: its round's surrogate fused into the dense base (θ0, the
    last synced model, or a fresh initialization with `fusion_init: fresh`) at its kept indices."""
    base = fresh_dense_model(trainer, round_) if trainer.args.fusion_init == "fresh" else None
    if base is None:
        base = trainer.task.model_class().from_pretrained(trainer.run_dir / DENSE_BASE_DIR)
    plan = PruningPlan.from_pretrained(trainer.run_dir / SURROGATE_INIT_DIR)
    return fuse_into_dense(
        base, round_surrogate(trainer, round_), plan, copy_norm_stats=trainer.args.copy_norm_stats
    )


def fresh_dense_model(trainer, round_: int):
    """The dense model `round_` starts from without fusion: θ0, or a fresh seeded initialization with fusion from
    `fusion_init: fresh`."""
    if trainer.args.fusion_init == "fresh" and trainer.args.fusion:
        set_seed(trainer.args.seed + 7919 * round_)
        return trainer.task.model_class().from_config(trainer.dense_init_config)
    return trainer.task.model_class().from_pretrained(trainer.run_dir / DENSE_INIT_DIR)


def save_checkpoint(trainer, model, directory, plan: PruningPlan | None = None) -> None:
    """Save `model` pipeline-ready: the run's class names as `id2label`, its image processor and, for a
    surrogate, the pruning plan (a general-path surrogate as weights + dense config + plan, see `save_surrogate`)."""
    model.config.id2label = dict(enumerate(trainer.class_names))
    model.config.label2id = {name: i for i, name in enumerate(trainer.class_names)}
    if plan is None:
        model.save_pretrained(directory)
    else:
        save_surrogate(model, plan, directory)
    trainer.processing_class.save_pretrained(directory)


def evaluates_during_training(args) -> bool:
    """Whether a training with `args` evaluates while it trains (its metric curve)."""
    return args.eval_strategy != IntervalStrategy.NO
