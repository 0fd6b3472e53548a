"""Children that die with their parent: Linux ``prctl(PR_SET_PDEATHSIG)``.

``crowdwatch run`` starts every stage (and the scheduler its adaptation jobs)
with :func:`die_with_parent` as the ``preexec_fn``: in the child, between fork
and exec, it asks the kernel to send SIGTERM when the parent dies, so a
SIGKILL of the supervisor (which runs no cleanup) leaves no stage running
under PID 1. The stages stop on SIGTERM as they do on ``crowdwatch run``'s
own shutdown.

Notes:
- The signal follows the *thread* that started the child: the supervisor
  starts stages from its main thread, the scheduler its jobs from its own
  long-lived thread.
- If the parent died between fork and the ``prctl`` call, the child exits at
  once (its parent pid is no longer the one that forked it).
- Where ``prctl`` is unavailable (not Linux, no libc), :func:`die_with_parent`
  returns the ``then`` callable unchanged (or None): children behave as before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def _load_prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


# Resolved once, before any fork: the preexec_fn only calls it.
_PRCTL = _load_prctl()


def available() -> bool:
    """True where children can be tied to their parent's life."""
    return _PRCTL is not None


def die_with_parent(sig: int = signal.SIGTERM, then: Callable[[], None] | None = None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive ``sig`` when this process dies.

    ``then`` (e.g. ``lambda: os.nice(10)``) runs after it in the child. Returns
    ``then`` itself where ``prctl`` is unavailable.
    """
    prctl = _PRCTL
    if prctl is None:
        return then
    parent = os.getpid()
    signum = int(sig)

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the prctl took effect
            os._exit(1)
        if then is not None:
            then()

    return preexec
