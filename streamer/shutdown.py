"""Stopping a process on SIGTERM or SIGINT without deadlocking in the handler.

A Python signal handler runs in the main thread between two bytecodes, even
in the middle of code that holds a lock. ``threading.Event.set`` takes the
event's lock, so a second signal that arrives while the first handler is
inside ``set`` used to call ``set`` again on the same non-reentrant lock, and
the stage hung (seen in an ingest: PDEATHSIG's SIGTERM and a second one
close behind it). :func:`stop_on_signals` installs a handler that sets the
event once and returns at once on any later signal.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterable
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def stop_on_signals(stop: threading.Event, on_signal: Callable[[int], None] | None = None,
                    signals: Iterable[int] = STOP_SIGNALS) -> dict[int, object]:  # fmt: skip
    """Set ``stop`` on the first of ``signals`` (``on_signal(signum)`` first, e.g. a log line); later ones do nothing.

    Returns the handlers it replaced, by signal, for a caller that puts them back.
    """
    first = [True]

    def handler(signum: int, _frame: FrameType | None) -> None:
        if not first[0]:
            return  # the first handler may be inside stop.set(), holding its lock
        first[0] = False
        if on_signal is not None:
            on_signal(signum)
        stop.set()

    return {s: signal.signal(s, handler) for s in signals}


def set_on_signal(event: threading.Event, sig: int) -> object:
    """Set ``event`` on every ``sig`` (SIGHUP: read the config again); a signal inside the handler returns at once.

    Returns the handler it replaced.
    """
    busy = [False]

    def handler(_signum: int, _frame: FrameType | None) -> None:
        if busy[0]:
            return  # the outer call is inside event.set(), holding its lock; the event is being set anyway
        busy[0] = True
        try:
            event.set()
        finally:
            busy[0] = False

    return signal.signal(sig, handler)
