"""What `prunefuse-hf run` shows while a run goes: one progress line for the whole run (round k/n, step, labeled
count, elapsed time, estimate of the time left), drawn in place at the bottom of a terminal and printed once per
finished step otherwise; every other message on a line of its own, never continuing a progress bar's line."""

from __future__ import annotations

import contextlib
import logging as std_logging
import shutil
import sys

from ..trainer.run_logging import STEP_RECORD
from ..trainer.run_progress import RunProgress, RunProgressCallback

_CLEAR = "\r\033[K"


class Console:
    """
    Stands for stderr while a run goes. `show(text)` draws the live progress line (on a terminal only); anything
    else written here first clears that line (it is drawn again once the message's line is complete), and a
    message written while a progress bar's line is open (a tqdm bar redraws its line after `\\r`) starts on the next
    line instead of running on after the bar.
    """

    def __init__(self, stream, live: bool):
        self.stream = stream
        self.live = live
        self.line = ""  # the live line's text ("" when none is wanted)
        self.drawn = False  # whether it is on the screen now
        self.at_line_start = True
        self.bar_open = False  # the current line was started by a carriage return (a progress bar)
        self._filtered: list = []

    def write(self, text: str) -> int:
        if not text:
            return 0
        if self.drawn:
            self.stream.write(_CLEAR)
            self.drawn = False
        elif self.bar_open and not text.startswith(("\r", "\n")):
            self.stream.write("\n")
            self.at_line_start, self.bar_open = True, False
        self.stream.write(text)
        self._follow(text)
        if self.at_line_start:
            self._draw()
        return len(text)

    def show(self, text: str, draw: bool = True) -> None:
        """Make `text` the live line (a terminal only) and draw it (else at the next complete line)."""
        if self.live:
            self.line = text
            if draw:
                self._draw()

    def print(self, text: str) -> None:
        """A line of its own (above the live line)."""
        self.write(text + "\n")

    def drop_step_lines(self) -> None:
        """Leave the package's per-step log lines out: the progress line prints each step's facts."""
        for handler in std_logging.getLogger(_PACKAGE).handlers:
            if handler not in self._filtered:
                handler.addFilter(_STEP_FILTER)
                self._filtered.append(handler)

    def close(self) -> None:
        for handler in self._filtered:
            handler.removeFilter(_STEP_FILTER)
        self._filtered = []
        if self.drawn:
            self.stream.write(_CLEAR)
            self.stream.flush()
        self.line, self.drawn = "", False

    def _follow(self, text: str) -> None:
        last_line = text.rsplit("\n", 1)[-1]
        self.at_line_start = text.endswith("\n")
        if "\n" in text:
            self.bar_open = "\r" in last_line
        else:
            self.bar_open = self.bar_open or "\r" in text

    def _draw(self) -> None:
        if not (self.live and self.line and self.at_line_start):
            return
        width = shutil.get_terminal_size((120, 24)).columns - 1
        text = self.line if len(self.line) <= width else self.line[: width - 1] + "…"
        self.stream.write(_CLEAR + text)
        self.stream.flush()
        self.drawn = True

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def __getattr__(self, name):
        return getattr(self.stream, name)


class ProgressLine(RunProgressCallback):
    """The run's progress on the console: each finished step as a line of its own (its facts included), and on a
    terminal the step running now, updated in place (with the running training's step and loss at every
    `logging_steps`)."""

    def __init__(self, console: Console):
        super().__init__()
        self.console = console

    def on_train_begin(self, args, state, control, **kwargs):
        self.console.drop_step_lines()
        super().on_train_begin(args, state, control, **kwargs)

    def on_progress(self, progress: RunProgress) -> None:
        self.console.show(progress.describe_running(), draw=not progress.finished)
        if progress.finished:
            self.console.print(progress.describe())  # then the live line is drawn below it


class _WithoutStepLines(std_logging.Filter):
    # The CLI prints each step's facts in its progress line: the trainer's own line of them would say it twice.
    def filter(self, record) -> bool:
        return not hasattr(record, STEP_RECORD)


_STEP_FILTER = _WithoutStepLines()
_PACKAGE = __name__.split(".")[0]


@contextlib.contextmanager
def run_console(stream=None, live: bool | None = None):
    """
    For the duration of a run: stderr goes through a [`Console`] (so that every message starts on a line of its
    own) and the logging handlers that wrote to stderr write to it. `live` defaults to whether `stream` (stderr) is a terminal.

    Yields:
        [`Console`]
    """
    stream = sys.stderr if stream is None else stream
    if live is None:
        live = bool(getattr(stream, "isatty", lambda: False)())
    console = Console(stream, live)
    handlers = [h for h in _all_handlers() if isinstance(h, std_logging.StreamHandler)]
    moved = [
        h for h in handlers if getattr(h, "stream", None) is stream and type(h) is std_logging.StreamHandler
    ]
    previous = sys.stderr
    sys.stderr = console
    for handler in moved:
        handler.setStream(console)
    try:
        yield console
    finally:
        console.close()
        for handler in moved:
            handler.setStream(stream)
        sys.stderr = previous


def _all_handlers():
    loggers = [std_logging.getLogger()] + [
        logger
        for logger in std_logging.Logger.manager.loggerDict.values()
        if isinstance(logger, std_logging.Logger)
    ]
    return [handler for logger in loggers for handler in logger.handlers]
