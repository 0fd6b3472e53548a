"""Stage liveness for the supervisor: a heartbeat file touched from the stage's loop.

``crowdwatch run`` gives every child the environment variable
``CROWDWATCH_HEARTBEAT`` naming a file under ``<paths.run>/heartbeat/``. The
stage calls :meth:`Heartbeat.beat` from its main loop; at most once a second
that updates the file's mtime (one ``utime`` call, no data). The supervisor
compares the mtime with ``[server] stall_restart`` and replaces a stage whose
file stopped moving: a hung loop, or a process stopped by SIGSTOP (a thread
of a stopped process does not run either).

A stage that cannot start for a reason a restart will not fix (address in
use, no model registry, an invalid config) exits with :data:`EXIT_FATAL`
(78, ``EX_CONFIG`` of sysexits.h) after printing one line saying why; a
usage or config error exits with 2, as every command does. The supervisor
stops on either (:data:`FATAL_EXIT_CODES`) instead of restarting in a loop.

Without the variable (a stage started by hand or by an orchestrator, which
has ``/healthz`` instead) :meth:`beat` does nothing.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

ENV = "CROWDWATCH_HEARTBEAT"
MIN_INTERVAL_S = 1.0
EXIT_FATAL = 78
FATAL_EXIT_CODES = frozenset({2, EXIT_FATAL})


class Heartbeat:
    def __init__(self, path: str | Path | None = None, min_interval_s: float = MIN_INTERVAL_S):
        self.path = Path(path) if path else None
        self.min_interval_s = min_interval_s
        self._last = float("-inf")

    @classmethod
    def from_env(cls) -> Heartbeat:
        return cls(os.environ.get(ENV) or None)

    def beat(self, force: bool = False) -> None:
        """Tell the supervisor the loop is making progress (cheap; rate-limited)."""
        if self.path is None:
            return
        now = time.monotonic()
        if not force and now - self._last < self.min_interval_s:
            return
        self._last = now
        try:
            os.utime(self.path)
        except FileNotFoundError:
            try:
                self.path.touch()
            except OSError:
                pass
        except OSError:
            pass

    def run_thread(self, stop: threading.Event, every_s: float = MIN_INTERVAL_S) -> threading.Thread:
        """Beat from a daemon thread until ``stop`` (for a loop that blocks in a library with its own watchdog)."""

        def loop() -> None:
            while not stop.wait(every_s):
                self.beat()

        self.beat(force=True)
        t = threading.Thread(target=loop, name="heartbeat", daemon=True)
        t.start()
        return t


def age(path: Path, now: float | None = None) -> float | None:
    """Seconds since the heartbeat file was last touched (wall clock), None if it does not exist."""
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return None
    return max(0.0, (time.time() if now is None else now) - mtime)
