"""The plan of a run: the steps it takes, in order ([`plan_steps`]), and how one of them runs ([`run_step`]): its
function in `trainer.steps`, then the pool's state and `state.json` written, then its facts logged.

The step contract: a step function takes the `PruneFuseTrainer` whose run it advances and reads and writes its public
run state only: `args`, `task`, `strategy`, `class_names`, `pool`, `examples`, `initial_labels`, `input_shape`,
`eval_dataset`, `run_dir`, `progress` (what `state.json` records), `pruned_at_init`, `trained_surrogate`, and the
`Trainer`'s `model`, `state`, `accelerator` and `callback_handler`. It returns the facts the run logs (`label`
returns `None` while its query waits for annotators).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from transformers.utils import logging

from ..utils.run_directory import step_name
from . import steps
from .run_logging import STEP_RECORD, describe_fact
from .run_state import save_run_state

logger = logging.get_logger(__name__)


@dataclass(frozen=True)
class Step:
    """One resumable unit of a run: `kind` is init, train_surrogate, train_dense, sync, select, label or report."""

    kind: str
    round: int = 0

    @property
    def name(self) -> str:
        return step_name(self.kind, self.round)


def plan_steps(args, strategy) -> list[Step]:
    """
    The steps of a run with these settings, in the order it takes them: `init`, the first query's `label`, then per
    round r `train_surrogate:r` (when the surrogate selects, is synced or teaches), `train_dense:r` (the last round,
    or every round with `eval_dense_every_round`), `sync:r`, `select:r` and `label:r+1`; then `report`.

    Args:
        args ([`PruneFuseConfig`]): The run's settings.
        strategy: The run's selection strategy (`get_strategy(args.strategy)`): one that needs no model output
            (random) trains no surrogate to select.

    Returns:
        `list[Step]`
    """
    last = args.num_rounds + 1
    planned = [Step("init")]
    if args.initial_labeled_size:
        planned.append(Step("label", 1))
    for r in range(1, last + 1):
        selecting = r < last
        syncing = selecting and args.sync_every > 0 and r % args.sync_every == 0
        # A refresh of the feature proxy reads the dense model trained on this round's labeled set.
        training_dense = r == last or args.eval_dense_every_round or args.refreshes_proxy(r)
        # Everything trained in round r sees the labeled set of round r, so selection comes last.
        surrogate_selects = selecting and strategy.needs and args.selector == "trained"
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


def run_step(trainer, step: Step) -> bool:
    """
    Run one step of `trainer`'s run, then record it: the step marked done, the pool's state and `state.json`
    written, its facts logged (one line) and passed to `trainer.log`.

    Args:
        trainer ([`PruneFuseTrainer`]): The trainer whose run the step advances.
        step ([`Step`]): A step of `plan_steps`.

    Returns:
        `bool`: `False` when the step waits for annotators' labels (a `label` step whose query is out): nothing is
        recorded, and the run stops there until it is resumed with the labels.
    """
    started = time.perf_counter()
    trainer.run_tracker.begin_step(step)
    if step.kind == "init":
        facts = steps.init_run(trainer)
    elif step.kind == "train_surrogate":
        facts = steps.train_surrogate(trainer, step.round)
    elif step.kind == "train_dense":
        facts = steps.train_dense(trainer, step.round)
    elif step.kind == "sync":
        facts = steps.sync(trainer, step.round)
    elif step.kind == "select":
        facts = steps.select(trainer, step.round)
    elif step.kind == "label":
        facts = steps.label(trainer, step.round)
        if facts is None:  # human annotation: the query is out, the labels are not in yet
            return False
    elif step.kind == "report":
        facts = steps.report(trainer)
    else:
        raise AssertionError(step.kind)
    trainer.progress["completed"].append(step.name)
    trainer.progress["pool"] = trainer.pool.state_dict(as_arrays=True)
    save_run_state(trainer)
    seconds = time.perf_counter() - started
    facts = {"step": step.name, **facts, "seconds": round(seconds, 3)}
    trainer.run_tracker.finish_step(step, seconds, facts)
    logger.info(
        " | ".join(describe_fact(key, value) for key, value in facts.items() if value is not None),
        extra={STEP_RECORD: step.name},
    )
    numeric = {k: v for k, v in facts.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    trainer.log(numeric)
    return True
