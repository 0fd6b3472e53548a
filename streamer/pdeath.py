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
- A signal is not enough on its own: a stage whose main thread sits in a
  library call (a decoder, a socket) runs its Python handler only when that
  call returns. The supervisor names itself in :data:`SUPERVISOR_ENV`, and
  :func:`watch_parent` (started by ``streamer.cli`` in every stage) notices
  the new parent from a thread, sends the SIGTERM itself where no prctl did,
  and ends the process after the grace the supervisor gives a clean stop.
  The stages stop through :func:`streamer.shutdown.stop_on_signals`, whose
  handler cannot deadlock on a second signal.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import faulthandler
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

from streamer.heartbeat import ENV as HEARTBEAT_ENV

PR_SET_PDEATHSIG = 1
SUPERVISOR_ENV = "CROWDWATCH_SUPERVISOR_PID"
STOP_GRACE_S = 10.0  # a stage's time to stop cleanly after SIGTERM, from crowdwatch run or from watch_parent
ORPHAN_EXIT_CODE = 75  # EX_TEMPFAIL: the supervisor went away, not this stage's fault


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


def watch_parent(grace_s: float = STOP_GRACE_S, poll_s: float = 0.2, environ: dict[str, str] | None = None) -> threading.Thread | None:
    """In a stage started by ``crowdwatch run``: end this process once that supervisor is gone.

    Does nothing (returns None) without :data:`SUPERVISOR_ENV` naming this
    process's parent: a stage started by hand or by an orchestrator has no
    supervisor to outlive. Once the parent pid changes, the process gets
    SIGTERM (its clean stop) and, if it is still running ``grace_s`` later,
    exits at once with :data:`ORPHAN_EXIT_CODE`, leaving the stacks of its
    threads beside its heartbeat file (``<paths.run>/heartbeat/<stage>.stuck``).
    """
    env = os.environ if environ is None else environ
    value = env.get(SUPERVISOR_ENV, "")
    if not value.isdigit() or int(value) != os.getppid():
        return None
    supervisor = int(value)
    heartbeat = env.get(HEARTBEAT_ENV)
    stuck_dump = f"{heartbeat.removesuffix('.beat')}.stuck" if heartbeat else None

    def loop() -> None:
        while os.getppid() == supervisor:
            time.sleep(poll_s)
        if _PRCTL is None:  # else the kernel sent it already (PDEATHSIG); no second one close behind
            os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        why = f"supervisor (pid {supervisor}) gone and this stage still running {grace_s:.0f} s after SIGTERM: exiting"
        try:  # stderr was the supervisor's pipe: it may be gone too
            print(why, file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass
        if stuck_dump:  # where every thread was, for whoever finds the stage gone
            try:
                with open(stuck_dump, "w") as f:
                    print(why, file=f, flush=True)
                    faulthandler.dump_traceback(file=f, all_threads=True)
            except OSError:
                pass
        os._exit(ORPHAN_EXIT_CODE)

    t = threading.Thread(target=loop, name="watch-parent", daemon=True)
    t.start()
    return t
