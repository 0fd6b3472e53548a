"""Stages that die with ``crowdwatch run``: Linux ``prctl(PR_SET_PDEATHSIG)`` and a watch thread.

``crowdwatch run`` names itself in :data:`SUPERVISOR_ENV` when it starts a
stage, and the scheduler does the same for its adaptation jobs. Every
``crowdwatch`` command calls :func:`watch_parent` first (``streamer.cli``),
which, when that variable names its parent:
- asks the kernel for SIGTERM when the parent dies, so a SIGKILL of the
  supervisor (which runs no cleanup) leaves no stage running under PID 1;
- watches the parent pid from a thread, because a signal is not enough on
  its own: a stage whose main thread sits in a library call (a decoder, a
  socket) runs its Python handler only when that call returns. Once the
  parent is gone it sends the SIGTERM itself where the kernel did not, and
  ends the process after the grace the supervisor gives a clean stop.

Why not a ``preexec_fn``: Python code between fork and exec in a process
with threads (the supervisor has one reader per child stream) can deadlock,
and ``Popen`` then waits for that child forever. The price is a window of
one interpreter start in which the supervisor may die unseen; the watch
thread catches it (the parent pid is already not the one named).

Notes:
- The kernel's signal follows the *thread* that started the child: the
  supervisor starts stages from one long-lived thread, the scheduler its jobs
  from its own.
- The variable is removed from this process's environment, so what a stage
  starts in turn does not take the stage for its supervisor.
- Where ``prctl`` is unavailable (not Linux, no libc) the watch thread alone
  sends the SIGTERM, within its poll interval.
- The stages stop through :func:`streamer.shutdown.stop_on_signals`, whose
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


_PRCTL = _load_prctl()


def available() -> bool:
    """True where the kernel can tie a process to its parent's life."""
    return _PRCTL is not None


def _ask_kernel(sig: int, parent: int) -> bool:
    """PR_SET_PDEATHSIG, then whether the parent was still ``parent`` after it (else it died first: no signal will come)."""
    if _PRCTL is None or _PRCTL(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return False
    return os.getppid() == parent


def watch_parent(grace_s: float = STOP_GRACE_S, poll_s: float = 0.2, environ: dict[str, str] | None = None) -> threading.Thread | None:
    """In a process started by ``crowdwatch run`` (or its scheduler): end it once that supervisor is gone.

    Does nothing (returns None) without :data:`SUPERVISOR_ENV`: a stage
    started by hand or by an orchestrator has no supervisor to outlive. Else
    the process gets SIGTERM (its clean stop) when the parent dies, from the
    kernel or from the watch thread, and, if it is still running ``grace_s``
    later, exits at once with :data:`ORPHAN_EXIT_CODE`, leaving the stacks of
    its threads beside its heartbeat file (``<paths.run>/heartbeat/<stage>.stuck``).
    """
    env = os.environ if environ is None else environ
    value = env.pop(SUPERVISOR_ENV, "")
    if not value.isdigit():
        return None
    supervisor = int(value)
    kernel_signals = _ask_kernel(signal.SIGTERM, supervisor)
    heartbeat = env.get(HEARTBEAT_ENV)
    stuck_dump = f"{heartbeat.removesuffix('.beat')}.stuck" if heartbeat else None

    def loop() -> None:
        while os.getppid() == supervisor:
            time.sleep(poll_s)
        if not kernel_signals:  # else the kernel sent it already; no second one close behind
            os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        why = f"supervisor (pid {supervisor}) gone and this process still running {grace_s:.0f} s after SIGTERM: exiting"
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
