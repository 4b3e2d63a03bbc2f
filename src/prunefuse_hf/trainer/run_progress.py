"""Where a whole run is: the step it runs, its round, the labeled count, the time spent and an estimate of the time
left. `RunTracker` (owned by the trainer) keeps it; `RunProgressCallback` receives it with every `on_log` of the
`PruneFuseTrainer`, so a person (the CLI's progress line) or a program can follow the run."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from transformers import TrainerCallback
from transformers.utils import logging

from .run_logging import describe_fact

logger = logging.get_logger(__name__)


@dataclass(frozen=True)
class RunProgress:
    """
    A snapshot of a run's progress.

    Attributes:
        step (`str`): The step running now, or the last one finished when `finished` (e.g. `"train_surrogate:2"`).
        finished (`bool`): Whether `step` has just finished (the snapshot of its `on_log`).
        next_step (`str`, *optional*): When `finished`, the step that runs next (`None` after the last).
        round (`int`): The round `step` belongs to (`init` counts as round 1, `report` as the last).
        num_rounds (`int`): Rounds of the run: the selection rounds plus the final training's.
        step_index (`int`): 1-based position of `step` in the run's plan (`next_step_index` of `next_step`).
        num_steps (`int`): Steps in the plan.
        labeled (`int`): Labeled examples now.
        elapsed_seconds (`float`): Wall time since this `train()` call started.
        remaining_seconds (`float`, *optional*): Estimated wall time left, from the time this call spent per unit of
            work (examples × epochs × MACs of the model) on the steps it finished; `None` until one finished.
        inner_step, inner_max_steps (`int`, *optional*): Optimizer steps of the training running now (as of its last
            log, every `logging_steps`).
        loss (`float`, *optional*): Training loss of that training at its last log.
        facts (`dict`): The facts of `step` when `finished` (what the trainer logs for it).
    """

    step: str
    finished: bool
    next_step: str | None
    round: int
    num_rounds: int
    step_index: int
    num_steps: int
    labeled: int
    elapsed_seconds: float
    remaining_seconds: float | None = None
    next_step_index: int | None = None
    inner_step: int | None = None
    inner_max_steps: int | None = None
    loss: float | None = None
    facts: dict = field(default_factory=dict)

    def describe(self) -> str:
        """
        One line. A finished step: `round 2/5 | step 7/16 train_surrogate:2 done | labeled 2,000 | 1:12 elapsed |
        ~3:40 left | surrogate accuracy 0.81 | 12.1 s`; else the step running now (see `describe_running`).
        """
        if not self.finished:
            return self.describe_running()
        head = [f"round {self.round}/{self.num_rounds}", f"step {self.step_index}/{self.num_steps} {self.step} done",
                f"labeled {self.labeled:,}", *self._times()]  # fmt: skip
        facts = [describe_fact(key, value) for key, value in self.facts.items()
                 if value is not None and key not in ("step", "round", "labeled", "seconds")]  # fmt: skip
        if self.facts.get("seconds") is not None:
            facts.append(f"{self.facts['seconds']:.1f} s")
        return " | ".join(head + facts)

    def describe_running(self) -> str:
        """The step running now (after a finished one, the next): `round 2/5 | step 8/16 select:2 | labeled 2,000
        | 1:12 elapsed | ~3:40 left`, with the running training's step and loss when it has logged."""
        if self.finished and self.next_step is None:
            return f"done: {self.num_steps} steps | labeled {self.labeled:,} | {self._times()[0]}"
        name, index = (
            (self.next_step, self.next_step_index) if self.finished else (self.step, self.step_index)
        )
        parts = [f"round {display_round(name, self.num_rounds)}/{self.num_rounds}",
                 f"step {index}/{self.num_steps} {name}", f"labeled {self.labeled:,}"]  # fmt: skip
        if not self.finished and self.inner_step is not None and self.inner_max_steps:
            training = f"training {self.inner_step}/{self.inner_max_steps}"
            parts.append(training + (f" loss {self.loss:.4g}" if self.loss is not None else ""))
        return " | ".join(parts + self._times())

    def _times(self) -> list[str]:
        times = [f"{format_duration(self.elapsed_seconds)} elapsed"]
        if self.remaining_seconds is not None:
            times.append(f"~{format_duration(self.remaining_seconds)} left")
        return times


def display_round(step_name: str, num_rounds: int) -> int:
    """The round a step belongs to: its number, 1 for `init` and the last round for `report`."""
    kind, _, number = step_name.partition(":")
    if number.isdigit():
        return int(number)
    return num_rounds if kind == "report" else 1


def format_duration(seconds: float) -> str:
    """`42s`, `3:07` (minutes:seconds) or `1:02:07` (hours)."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}:{seconds:02d}"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


class RunTracker:
    """Keeps a `PruneFuseTrainer`'s progress: which step runs, since when, the inner training's last log, and the
    seconds each finished step took in this `train()` call (for the estimate of the time left)."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.started = time.perf_counter()
        self.step = None
        self.step_started = self.started
        self.finished = False
        self.facts: dict = {}
        self.seconds: dict[str, float] = {}
        self.inner: tuple[int, int, float | None] | None = None

    def begin_run(self) -> None:
        self.started = self.step_started = time.perf_counter()
        self.step, self.finished, self.facts, self.seconds, self.inner = None, False, {}, {}, None

    def begin_step(self, step) -> None:
        self.step, self.finished, self.facts, self.inner = step, False, {}, None
        self.step_started = time.perf_counter()

    def finish_step(self, step, seconds: float, facts: dict) -> None:
        self.step, self.finished, self.facts, self.inner = step, True, dict(facts), None
        self.seconds[step.name] = seconds

    def inner_log(self, global_step: int, max_steps: int, logs: dict) -> None:
        loss = logs.get("loss", self.inner[2] if self.inner else None)
        self.inner = (global_step, max_steps, loss)

    def snapshot(self) -> RunProgress:
        trainer = self.trainer
        steps = trainer.steps
        names = [s.name for s in steps]
        completed = set(trainer.progress.get("completed", []))
        step = self.step or next((s for s in steps if s.name not in completed), steps[0])
        index = names.index(step.name)
        pending = [s for s in steps[index + (1 if self.finished else 0) :] if s.name not in completed]
        next_step = next((s.name for s in pending if s.name != step.name), None) if self.finished else None
        inner_step, inner_max, loss = self.inner or (None, None, None)
        num_rounds = trainer.args.num_rounds + 1
        return RunProgress(step=step.name, finished=self.finished, next_step=next_step,
                           round=display_round(step.name, num_rounds), num_rounds=num_rounds, step_index=index + 1,
                           num_steps=len(steps), labeled=trainer.pool.num_labeled,
                           elapsed_seconds=time.perf_counter() - self.started,
                           remaining_seconds=self._remaining(step, pending),
                           next_step_index=names.index(next_step) + 1 if next_step else None, inner_step=inner_step,
                           inner_max_steps=inner_max, loss=loss, facts=dict(self.facts))  # fmt: skip

    def _remaining(self, step, pending) -> float | None:
        weights = step_weights(self.trainer)
        timed = [
            (name, seconds, weights[name]) for name, seconds in self.seconds.items() if weights.get(name)
        ]
        if not timed or not pending:
            return None
        # Seconds per unit of work, per kind of step where one finished (scoring, small and large trainings do not
        # run at the same speed per MAC), else over every timed step.
        rates = {}
        for kind in {_kind(name) for name, _, _ in timed}:
            done = [(s, w) for name, s, w in timed if _kind(name) == kind]
            rates[kind] = sum(s for s, _ in done) / sum(w for _, w in done)
        overall = sum(s for _, s, _ in timed) / sum(w for _, _, w in timed)
        left = sum(rates.get(s.kind, overall) * weights.get(s.name, 0.0) for s in pending)
        if not self.finished and self.inner and self.inner[1]:
            # The running training is that far along.
            done = min(self.inner[0] / self.inner[1], 1.0)
            left -= rates.get(step.kind, overall) * weights.get(step.name, 0.0) * done
        return max(left, 0.0)


def _kind(step_name: str) -> str:
    return step_name.partition(":")[0]


def step_weights(trainer) -> dict[str, float]:
    """Each planned step's work in one unit (examples × passes × MACs of the model), so that the seconds of the
    steps done predict those of the steps to come: trainings grow with the labeled set, selection with the pool."""
    args = trainer.args
    costs = trainer.progress.get("costs")
    dense = float(costs["dense"]["macs"]) if costs else 1.0
    surrogate = float(costs["surrogate"]["macs"]) if costs else (1 - args.pruning_ratio) ** 2
    sizes = args.query_sizes()
    labeled = {1: args.initial_labeled_size + len(trainer.initial_labels)}
    for r in range(2, args.num_rounds + 2):
        labeled[r] = labeled[r - 1] + sizes[r - 2]
    surrogate_epochs = args.surrogate_num_train_epochs or args.num_train_epochs
    eval_size = len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0
    weights = {}
    for step in trainer.steps:
        n = labeled.get(step.round, 0)
        if step.kind == "train_surrogate":
            weight = 3 * surrogate * n * surrogate_epochs
        elif step.kind == "train_dense":
            teacher = surrogate * n * args.num_train_epochs if args.distill_alpha > 0 else 0.0
            weight = 3 * dense * n * args.num_train_epochs + teacher + 2 * dense * eval_size
        elif step.kind == "sync":
            weight = 3 * dense * n * args.num_train_epochs
        elif step.kind == "select" and trainer.strategy.needs and args.selector == "trained":
            weight = surrogate * max(len(trainer.pool) - n, 0)
        else:
            weight = 0.0
        weights[step.name] = weight
    return weights


class RunProgressCallback(TrainerCallback):
    """
    Follows a [`PruneFuseTrainer`] run: at the start, with every log of an inner training (every `logging_steps`)
    and at the end of every step it calls `on_progress` with a [`RunProgress`] (round k of n, step, labeled count,
    elapsed time, estimate of the time left). By default it logs one line per finished step; subclass it and
    override `on_progress` to show progress elsewhere (the `prunefuse-hf` command line draws one line in place).
    Callbacks and `trainer.state.log_history` receive the same logs with or without it.

    Args:
        trainer ([`PruneFuseTrainer`], *optional*):
            The run to follow. A trainer sets itself here when its run starts, so the callback can be given to
            `PruneFuseTrainer(callbacks=[...])` or `add_callback` before there is one.

    Example:

    ```python
    >>> trainer.add_callback(RunProgressCallback())
    >>> trainer.train()   # [prunefuse] round 2/5 | step 7/16 select:2 | labeled 2,000 | 1:12 elapsed | ~3:40 left
    ```
    """

    def __init__(self, trainer=None):
        self.trainer = trainer
        self.last: RunProgress | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if self.trainer is not None and state.is_world_process_zero:
            self._emit()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.trainer is not None and state.is_world_process_zero:
            self._emit()

    def _emit(self) -> None:
        progress = self.trainer.run_progress
        if (
            self.last is not None
            and progress.finished
            and self.last.finished
            and self.last.step == progress.step
        ):
            return  # the step's own log already reported it
        self.last = progress
        self.on_progress(progress)

    def on_progress(self, progress: RunProgress) -> None:
        """Called with each new snapshot of the run's progress."""
        if progress.finished:
            logger.info(progress.describe())
