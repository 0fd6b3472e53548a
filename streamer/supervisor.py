"""``crowdwatch run``: every stage on one machine, supervised.

Children (separate processes, so one crash stays one crash):
- ``infer`` (binds the frame and result sockets, serves /metrics),
- ``web`` (live overlay),
- one ``ingest`` per camera.
The adaptation scheduler runs on a thread here and launches ``crowdwatch
adapt`` jobs one at a time; a camera's uncertainty trigger reads infer's results
stream (``streamer/scheduler.py``, ``UncertaintyFeed``).

A child that exits is restarted after an exponential backoff (1 s doubling to
60 s, reset once it has run for a minute); the console line names its last
error line. A child whose heartbeat file
(``streamer/heartbeat.py``) has not moved for ``[server] stall_restart`` (or,
before its first beat, ``start_timeout``) is hung or stopped: it is killed
(SIGKILL works on a SIGSTOPped process) and restarted the same way. A child
that exits with ``EXIT_FATAL`` (78) or 2 (usage, config) cannot start for a reason a restart will
not fix (address in use, no registry, an invalid config): the supervisor
prints its last error line once and stops everything instead of looping. SIGINT/SIGTERM stop the scheduler,
then the children (SIGTERM, then SIGKILL after a grace period). Every child
(and every adaptation job) gets SIGTERM from the kernel if this process dies,
even by SIGKILL (``streamer/pdeath.py``), so no stage outlives the supervisor.

Every child logs (``crowdwatch.logs``) with this process's level and format
(``--log-level/--log-format``). Its stdout and stderr are pipes read by one
thread each (:class:`Output`): every line is passed on unchanged to this
process's stdout or stderr, so a container's log gets the JSON lines of every
stage, and the last lines (bounded) are kept for the "last error line" of a
child that exits or cannot start; this works with ``[log] files`` off too.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from crowdwatch import logs
from crowdwatch.config import Config, load_stage_config
from crowdwatch.httpbase import Access, AccessError
from crowdwatch.wire import client_curve
from streamer.heartbeat import ENV as HEARTBEAT_ENV
from streamer.heartbeat import FATAL_EXIT_CODES
from streamer.heartbeat import age as heartbeat_age
from streamer.pdeath import die_with_parent

log = logging.getLogger("crowdwatch.run")

BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 60.0
HEALTHY_AFTER_S = 60.0
STOP_GRACE_S = 10.0
LOG_TAIL_BYTES = 8192
TAIL_LINES = 50          # lines of a child's output kept for its last error line
MAX_LINE_BYTES = 1024**2  # a longer line is read and passed on in pieces
READER_JOIN_S = 1.0      # how long an exited child's output may take to drain before its last line is read


def _text(line: str) -> str:
    """A line as a person reads it: a JSON log line's message (its last line: a traceback ends with its exception)."""
    line = line.strip()
    fields = logs.parse_line(line)
    if fields is not None:
        message = str(fields.get("message") or "").strip()
        line = message.splitlines()[-1].strip() if message else ""
    return line[:500]


def last_error_line(log_path: Path | None) -> str:
    """The last non-empty line of a child's log file (the message of a JSON line), or ""."""
    if log_path is None:
        return ""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
            tail = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [t for t in (_text(ln) for ln in tail.splitlines()) if t]
    return lines[-1] if lines else ""


_write_lock = threading.Lock()


def _forward(line: bytes, stream) -> None:
    """Write one whole line to ``stream`` (this process's stdout or stderr), never interleaved with another."""
    with _write_lock:
        try:
            target = getattr(stream, "buffer", None)
            if target is not None:
                stream.flush()  # what this process wrote through the text layer goes first
                target.write(line)
                target.flush()
            else:
                stream.write(line.decode(errors="replace"))
                stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken stdout must not stop the draining (the child would block)


class Output:
    """A child's stdout and stderr: every line passed on unchanged, the last ``TAIL_LINES`` kept."""

    def __init__(self, name: str, proc: subprocess.Popen):
        self.tail: collections.deque[tuple[str, str]] = collections.deque(maxlen=TAIL_LINES)  # (stream, line)
        self._lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._pump, args=(pipe, kind), name=f"{name}-{kind}", daemon=True)
            for pipe, kind in ((proc.stdout, "stdout"), (proc.stderr, "stderr")) if pipe is not None
        ]
        for t in self.threads:
            t.start()

    def _pump(self, pipe, kind: str) -> None:
        stream = sys.stdout if kind == "stdout" else sys.stderr
        raw = b"\n"
        try:
            for raw in iter(lambda: pipe.readline(MAX_LINE_BYTES), b""):
                _forward(raw, stream)  # unchanged; a line longer than MAX_LINE_BYTES is passed on in pieces
                line = raw.decode(errors="replace").strip()
                if line:
                    with self._lock:
                        self.tail.append((kind, line[:2000]))
        except (OSError, ValueError):
            pass
        finally:
            if not raw.endswith(b"\n"):
                _forward(b"\n", stream)  # its last line had no end
            with contextlib.suppress(OSError):
                pipe.close()

    def join(self, timeout: float = READER_JOIN_S) -> None:
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def last_error_line(self) -> str:
        """Its last stderr line or logged error, else its last line of any kind, else ""."""
        with self._lock:
            lines = list(self.tail)
        for kind, line in reversed(lines):
            fields = logs.parse_line(line)
            if (kind == "stderr" or (fields is not None and str(fields.get("level", "")).upper() in ("ERROR", "CRITICAL"))) and _text(line):
                return _text(line)
        for _, line in reversed(lines):
            if _text(line):
                return _text(line)
        return ""


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen | None = None
    started: float = 0.0
    restarts: int = 0
    backoff: float = BACKOFF_INITIAL_S
    next_start: float = 0.0
    log_path: Path | None = None        # the child's own rotated log file ([log] files): its last line if it printed none
    heartbeat: Path | None = None       # touched by the child's loop (streamer/heartbeat.py)
    stall_s: float | None = None        # no heartbeat for this long: hung, replace it
    start_timeout_s: float | None = None  # ... before its first heartbeat
    started_wall: float = 0.0
    stalls: int = 0
    fatal: str | None = None            # set when it exited with EXIT_FATAL: do not restart
    output: Output | None = None        # its stdout and stderr, passed on, last lines kept

    def start(self, now: float) -> None:
        env = None
        if self.heartbeat is not None:
            self.heartbeat.parent.mkdir(parents=True, exist_ok=True)
            self.heartbeat.unlink(missing_ok=True)
            env = {**os.environ, HEARTBEAT_ENV: str(self.heartbeat)}
        # The child logs (crowdwatch.logs) to its stdout, and to its own rotated file under
        # <var>/log when [log] files is on; Output passes every line on to this process's
        # stdout/stderr and keeps the last ones for its last error line.
        # die_with_parent: a SIGKILL of `crowdwatch run` takes its stages with it
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True, preexec_fn=die_with_parent(), env=env)
        self.output = Output(self.name, self.proc)
        self.started = now
        self.started_wall = time.time()
        logs.event(log, "stage_started", "started %s (pid %d)", self.name, self.proc.pid, camera=self.camera)

    @property
    def camera(self) -> str | None:
        return self.name.split(":", 1)[1] if self.name.startswith("ingest:") else None

    def last_error_line(self) -> str:
        """What it printed last (stderr or a logged error first), once its output has drained; else its log file's last line."""
        if self.output is not None:
            self.output.join()
            why = self.output.last_error_line()
            if why:
                return why
        return last_error_line(self.log_path)

    def stalled_for(self) -> float | None:
        """Seconds without progress when that exceeds the limit, else None."""
        if self.heartbeat is None or self.stall_s is None or self.proc is None:
            return None
        now = time.time()
        age = heartbeat_age(self.heartbeat, now)
        if age is not None and now - age >= self.started_wall - 1.0:  # beaten since this start
            return age if age > self.stall_s else None
        silent = now - self.started_wall
        limit = max(self.stall_s, self.start_timeout_s or 0.0)
        return silent if silent > limit else None

    def check(self, now: float) -> None:
        """Restart with backoff if it has exited or stopped making progress."""
        if self.fatal is not None:
            return
        if self.proc is None:
            if now >= self.next_start:
                self.start(now)
            return
        code = self.proc.poll()
        if code is None:
            stalled = self.stalled_for()
            if stalled is None:
                if now - self.started >= HEALTHY_AFTER_S:
                    self.backoff = BACKOFF_INITIAL_S
                return
            self.stalls += 1
            log.warning("%s (pid %d) made no progress for %.0f s (hung or stopped); replacing it", self.name, self.proc.pid, stalled)
            self.proc.kill()  # SIGKILL also ends a SIGSTOPped process
            code = self.proc.wait()
        why = self.last_error_line()
        if code in FATAL_EXIT_CODES:
            self.fatal = why or f"{self.name} exited with {code}"
            logs.event(log, "stage_exited", "%s exited with %s; cannot start, not restarting: %s", self.name, code, self.fatal,
                       camera=self.camera, level=logging.ERROR)
            self.proc = None
            return
        self.restarts += 1
        self.next_start = now + self.backoff
        logs.event(log, "stage_exited", "%s exited with %s; restart %d in %.0f s%s", self.name, code, self.restarts, self.backoff,
                   f"; its last line: {why}" if why else "", camera=self.camera, level=logging.WARNING)
        self.backoff = min(self.backoff * 2, BACKOFF_MAX_S)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def wait_or_kill(self, deadline: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in time; killing it", self.name)
            self.proc.kill()
            self.proc.wait()
        if self.output is not None:
            self.output.join()  # its last lines reach this process's stdout before it exits


def stage_argv(stage: str, config_path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "streamer.cli", stage, "--config", str(config_path), *extra]


def build_children(config: Config, config_path: Path) -> list[Child]:
    """infer, web and one ingest per camera, each with this process's log level and format and a heartbeat file."""
    flags = logs.child_flags()
    children = [Child("infer", stage_argv("infer", config_path, *flags)), Child("web", stage_argv("web", config_path, *flags))]
    children += [Child(f"ingest:{cam}", stage_argv("ingest", config_path, "--camera", cam, *flags)) for cam in config.cameras]
    for c in children:
        safe = c.name.replace(":", "-")
        c.log_path = logs.stage_file(config.paths.var / "log", c.name) if config.log.files else None
        c.heartbeat = config.paths.run / "heartbeat" / f"{safe}.beat"
        c.stall_s, c.start_timeout_s = config.server.stall_restart_s, config.server.start_timeout_s
    return children


def build_scheduler(config: Config, config_path: Path, stop: threading.Event):
    """The adaptation scheduler of the cameras that adapt; with an uncertainty trigger, its feed reads results until ``stop``."""
    from adapt.store.buffer import FrameBuffer
    from streamer.scheduler import STALE_MIN_S, STALE_PERIODS, CameraSchedule, Scheduler, UncertaintyFeed, UncertaintyWatch, adapt_command

    scheds = {}
    for name, cam in config.cameras.items():
        if not cam.adapt.enabled:
            continue
        trig = cam.adapt.uncertainty_trigger
        watch = UncertaintyWatch(trig.threshold, trig.for_s) if trig.enabled else None
        scheds[name] = CameraSchedule(name, cam.adapt.interval_s, cam.adapt.daily, watch, timeout_s=cam.adapt.timeout_s)
    t = config.transport
    watched = {name: max(STALE_MIN_S, STALE_PERIODS / config.cameras[name].fps) for name, s in scheds.items() if s.watch is not None}
    feed = None
    if watched:
        try:
            feed = UncertaintyFeed(t.results, watched, hwm=t.hwm, curve=client_curve(t))
        except ValueError as exc:  # CURVE keys missing or malformed: the web stage says so too
            log.error("the uncertainty trigger is off: %s", exc)
        else:
            feed.start(stop)
    buffer_root = config.paths.var / "buffer"
    return Scheduler(
        scheds, config.paths.var, adapt_command(config_path, config.paths.var),
        buffer_frames=lambda cam: len(FrameBuffer(buffer_root, cam, config.cameras[cam].buffer).frames()),
        uncertainty=feed or (lambda cam: None), transport=t,
    )


def fatal_error(children: dict[str, Child] | list[Child]) -> str | None:
    """The one console line for a child that cannot start, if one could not."""
    for c in children.values() if isinstance(children, dict) else children:
        if c.fatal is not None:
            return f"crowdwatch run: {c.name} cannot start, not restarting: {c.fatal}"
    return None


def supervise(config: Config, config_path: Path, stop: threading.Event, tick_s: float = 0.5, with_scheduler: bool = True) -> dict[str, Child]:
    """Run until ``stop``, or until a child exits with a non-transient code (see :func:`fatal_error`)."""
    children = build_children(config, config_path)
    scheduler = build_scheduler(config, config_path, stop) if with_scheduler else None
    sched_thread = None
    if scheduler is not None and scheduler.cameras:
        sched_thread = threading.Thread(target=scheduler.loop, args=(stop,), name="scheduler", daemon=True)
        sched_thread.start()
    # infer binds the sockets; give it a head start so ingest's first frames are not lost
    children[0].check(time.monotonic())
    time.sleep(min(1.0, tick_s * 2))
    try:
        while not stop.is_set():
            now = time.monotonic()
            for c in children:
                c.check(now)
            if fatal_error(children) is not None:
                break
            stop.wait(tick_s)
    finally:
        if scheduler is not None:
            scheduler.cancel()
        for c in reversed(children):  # ingest first, infer last
            c.stop()
        deadline = time.monotonic() + STOP_GRACE_S
        for c in children:
            c.wait_or_kill(deadline)
    return {c.name: c for c in children}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="crowdwatch run", description="Run every stage on one machine, supervised.")
    p.add_argument("--config", type=Path, default=Path("config.toml"))
    p.add_argument("--no-adapt", action="store_true", help="do not schedule adaptation jobs")
    p.add_argument("--log-level", default=None, type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="default: $CROWDWATCH_LOG_LEVEL, else [log] level")
    p.add_argument("--log-format", default=None, choices=["auto", "json", "text"],
                   help="default: $CROWDWATCH_LOG_FORMAT, else [log] format (auto: json unless stdout is a terminal)")
    args = p.parse_args(argv)
    config = load_stage_config("crowdwatch run", args.config, args.log_level, args.log_format, stage="supervisor")
    if config is None:
        return 2
    for host in (config.server.web_host, config.server.metrics_host):
        try:  # the stages would refuse to start, again and again
            Access.for_bind(host, config.server.auth_token_env)
        except AccessError as exc:
            print(f"crowdwatch run: {exc}", file=sys.stderr)
            return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    s = config.server
    files = f"; log files in {config.paths.var / 'log'}" if config.log.files else ""
    logs.event(log, "service_started", "%d cameras; live page http://%s:%s/ ; metrics http://%s:%s/metrics%s",
               len(config.cameras), s.web_host, s.web_port, s.metrics_host, s.metrics_port, files)
    children = supervise(config, args.config, stop, with_scheduler=not args.no_adapt)
    fatal = fatal_error(children)
    if fatal is not None:
        print(fatal, file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
