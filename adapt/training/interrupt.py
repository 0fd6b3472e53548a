"""Stopping a training run on SIGTERM or SIGINT without losing more than the batch in flight.

A session that ends sends SIGTERM; Ctrl-C sends SIGINT. Inside
:class:`StopOnSignal` either one raises :class:`TrainingInterrupted` at once,
so the run abandons its current batch and saves its last completed step,
instead of finishing a batch that can take many seconds on a CPU. Code that
changes what a checkpoint holds (the optimiser step, the checkpoint write)
runs inside :meth:`StopOnSignal.deferred`: a signal there is held until the
block ends, so a checkpoint never shows half a step.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(Exception):
    """Training stopped on a signal; ``exit_code`` is the shell's 128 + signal number."""

    def __init__(self, signum: int, detail: str = "") -> None:
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}" + (f": {detail}" if detail else ""))

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopOnSignal:
    """While entered, SIGTERM and SIGINT raise :class:`TrainingInterrupted` (once) outside ``deferred`` blocks.

    Off the main thread, where Python cannot take signals, it does nothing.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._defer = 0
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
        if first and not self._defer:
            raise TrainingInterrupted(signum)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold a signal until the block ends, then raise it (unless it was raised already)."""
        self._defer += 1
        pending = self.signum is None
        try:
            yield
        finally:
            self._defer -= 1
        if pending and self.signum is not None and not self._defer:
            raise TrainingInterrupted(self.signum)
