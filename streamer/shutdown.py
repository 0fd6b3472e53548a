"""Setting a threading.Event from a signal handler without deadlocking.

A Python signal handler runs in the main thread between two bytecodes, even
inside code that holds a lock. ``threading.Event.set`` takes the event's
non-reentrant lock, so a handler that called it again from inside an
interrupted ``set`` (a second signal close behind the first) would wait on
itself forever. Each handler here returns at once while an outer call of it
is still running.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterable
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _setter(event: threading.Event, on_signal: Callable[[int], None] | None, once: bool):
    busy = [False]

    def handler(signum: int, _frame: FrameType | None) -> None:
        if busy[0] or (once and event.is_set()):
            return  # an outer call may be inside event.set(), holding its lock
        busy[0] = True
        try:
            if on_signal is not None:
                on_signal(signum)
            event.set()
        finally:
            busy[0] = False

    return handler


def stop_on_signals(stop: threading.Event, on_signal: Callable[[int], None] | None = None,
                    signals: Iterable[int] = STOP_SIGNALS) -> dict[int, object]:  # fmt: skip
    """Set ``stop`` on the first of ``signals`` (``on_signal(signum)`` first, e.g. a log line); later ones do nothing.

    Returns the handlers it replaced, by signal, for a caller that puts them back.
    """
    handler = _setter(stop, on_signal, once=True)
    return {s: signal.signal(s, handler) for s in signals}


def set_on_signal(event: threading.Event, sig: int) -> object:
    """Set ``event`` on every ``sig`` (SIGHUP: read the config again). Returns the handler it replaced."""
    return signal.signal(sig, _setter(event, None, once=False))
