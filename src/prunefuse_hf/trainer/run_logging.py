"""How a run talks: one INFO line per step from the package's logger (following the run's `log_level`), and
the inner trainers' logs forwarded to the PruneFuse trainer's callbacks and `report_to` integrations."""

from __future__ import annotations

import logging as std_logging
import sys

from transformers import (
    Trainer,
    TrainerCallback,
)

from .prunefuse_config import PruneFuseConfig

_PACKAGE_LOGGER = __name__.split(".")[0]


class ForwardLogs(TrainerCallback):
    """Passes an inner trainer's logs (loss, learning rate, evaluations) to the PruneFuse trainer under a prefix,
    at the run's cumulative step, so `report_to` integrations and callbacks see every training of the run."""

    def __init__(self, outer: Trainer, prefix: str):
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
