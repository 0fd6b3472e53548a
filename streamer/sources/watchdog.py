"""Stall detection: no progress for `timeout_s` means the connection is dead.

A blocked read is broken by PyAV's read timeout (its interrupt callback), but a
server can keep a connection busy without ever completing a frame: keep-alive
data, packets that all fail to decode, a stream whose video track froze while
audio or RTCP still flows. The watchdog is checked on every packet, so those
are caught too. Time the consumer spends between frames is not held against
the stream (`progress()` is called when it hands control back).
"""

from __future__ import annotations

from collections.abc import Callable


class Stalled(Exception):
    pass


class StallWatchdog:
    def __init__(self, timeout_s: float, monotonic: Callable[[], float]) -> None:
        self.timeout_s = timeout_s
        self._monotonic = monotonic
        self._last = monotonic()

    def progress(self) -> None:
        self._last = self._monotonic()

    def idle_s(self) -> float:
        return self._monotonic() - self._last

    def check(self) -> None:
        idle = self.idle_s()
        if idle > self.timeout_s:
            raise Stalled(f"no frame for {idle:.1f} s (stall_timeout_s={self.timeout_s})")
