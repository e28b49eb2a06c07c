"""Stopping on request: SIGINT (Ctrl-C) and SIGTERM (a scheduler's notice) ask the training loop
to stop after the step it is in; the engine then writes a checkpoint, says what it saved and how
to go on, and raises TrainingInterrupted. A second Ctrl-C stops at once (a checkpoint being
written is then never left half-written, see checkpoint.py)."""
from __future__ import annotations

import os
import signal
import sys
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal after saving a checkpoint; `signum`, `checkpoint` (a path, or
    None if nothing could be saved) and `run_dir` say what happened. Exit status: 128 + signum."""

    def __init__(self, message: str, signum: int, checkpoint=None, run_dir=None):
        super().__init__(message)
        self.signum, self.checkpoint, self.run_dir = signum, checkpoint, run_dir

    def __str__(self) -> str:
        return str(self.args[0])


class StopSignals:
    """Within `with StopSignals() as stop:`, SIGINT and SIGTERM set `stop.signum` instead of
    killing the process; the previous handlers come back on exit. Outside the main thread (where
    Python cannot take signals) it does nothing."""

    def __init__(self, announce: bool = True):
        self.signum: int | None = None
        self.announce = announce
        self._old: dict = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt("a second Ctrl-C: stopped at once")
            return  # e.g. torchrun's SIGTERM after the terminal's SIGINT: already stopping
        self.signum = signum
        if self.announce:  # os.write, not print or logging: a handler must not take their locks
            name = signal.Signals(signum).name
            again = " (Ctrl-C again to stop at once)" if signum == signal.SIGINT else ""
            try:
                os.write(sys.stderr.fileno(), f"\nstnkit: {name}: stopping after this step to save a checkpoint{again}\n"
                         .encode())
            except (OSError, ValueError, AttributeError):
                pass
