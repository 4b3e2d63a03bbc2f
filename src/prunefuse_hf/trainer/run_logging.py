"""How a run talks: one INFO line per step from the package's logger (following the run's `log_level`), and
the inner trainers' logs forwarded to the PruneFuse trainer's callbacks and `report_to` integrations."""

from __future__ import annotations

import contextlib
import logging as std_logging
import sys

from datasets import utils as datasets_utils
from huggingface_hub import utils as hub_utils
from transformers import (
    Trainer,
    TrainerCallback,
)
from transformers.utils import logging as transformers_logging

from .prunefuse_config import PruneFuseConfig

_PACKAGE_LOGGER = __name__.split(".")[0]
# The attribute of the log record of a finished step (its name): a handler can tell the step lines from the rest.
STEP_RECORD = "prunefuse_step"


class ForwardLogs(TrainerCallback):
    """Passes an inner trainer's logs (loss, learning rate, evaluations) to the PruneFuse trainer under a prefix,
    at the run's cumulative step, so `report_to` integrations and callbacks see every training of the run; not to
    the `excluded` callbacks (the user's, during the final training: they get its logs from the inner trainer)."""

    def __init__(self, outer: Trainer, prefix: str, excluded=()):
        self.outer, self.prefix, self.excluded = outer, prefix, list(excluded)
        self.start = outer.state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.outer.run_tracker.inner_log(state.global_step, state.max_steps, logs or {})
        outer_state = self.outer.state
        outer_state.global_step = self.start + state.global_step
        outer_state.log_history.append({**{f"{self.prefix}/{k}": v for k, v in (logs or {}).items()},
                                        "step": outer_state.global_step})  # fmt: skip
        with without_callbacks(self.outer.callback_handler, self.excluded):
            self.outer.control = self.outer.callback_handler.on_log(
                self.outer.args,
                outer_state,
                self.outer.control,
                {f"{self.prefix}/{k}": v for k, v in (logs or {}).items()},
            )


@contextlib.contextmanager
def without_callbacks(handler, excluded):
    """Within it, the `CallbackHandler` `handler` calls every callback but those in `excluded` (the same objects)."""
    kept = handler.callbacks
    handler.callbacks = [c for c in kept if not any(c is e for e in excluded)]
    try:
        yield handler
    finally:
        handler.callbacks = kept


def configure_package_logging(args: PruneFuseConfig) -> None:
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


def describe_fact(key: str, value) -> str:
    if key == "step":
        return str(value)
    if isinstance(value, float):
        return f"{key.replace('_', ' ')} {value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{key.replace('_', ' ')} {value:,}"
    return f"{key.replace('_', ' ')}: {value}"


@contextlib.contextmanager
def quiet_progress_bars(show_inner: bool):
    """Within it, saving and loading checkpoints shows no progress bar (transformers' "Writing model shards" and
    "Loading weights", huggingface_hub's), and `datasets`' bars (decoding, `map`) show only when `show_inner`
    (`disable_tqdm` false). The settings in force before are restored on exit."""
    transformers_on = transformers_logging.is_progress_bar_enabled()
    hub_off = hub_utils.are_progress_bars_disabled()
    datasets_off = datasets_utils.are_progress_bars_disabled()
    transformers_logging.disable_progress_bar()  # and huggingface_hub's
    if not show_inner and not datasets_off:
        datasets_utils.disable_progress_bars()
    try:
        yield
    finally:
        if transformers_on:
            transformers_logging.enable_progress_bar()
        if hub_off != hub_utils.are_progress_bars_disabled():
            (hub_utils.disable_progress_bars if hub_off else hub_utils.enable_progress_bars)()
        if datasets_off != datasets_utils.are_progress_bars_disabled():
            (datasets_utils.disable_progress_bars if datasets_off else datasets_utils.enable_progress_bars)()
