"""``crowdwatch run``: every stage on one machine, supervised.

Children (separate processes, so one crash stays one crash):
- ``[server] infer_workers`` inference workers, ``infer`` and ``infer:1`` ...,
  each serving its shard of the cameras (``Config.shard_of``): it binds its own
  frame and result sockets and serves its cameras' /metrics on
  ``metrics_port + i``,
- ``web`` (live overlay, subscribed to every worker's results),
- one ``ingest`` per camera, sending to its camera's worker.
The adaptation scheduler runs on a thread here and launches ``crowdwatch
adapt`` jobs one at a time; a camera's uncertainty trigger reads the workers'
results streams (``streamer/scheduler.py``, ``UncertaintyFeed``).

SIGHUP reads the config file again. Each child's part of it
(``crowdwatch.config.shards.stage_inputs``) is compared: only the children
whose part changed are restarted (a camera's ingest for its own table, a
worker for its cameras, web for any camera), removed ones are stopped, new
ones started; the scheduler takes the new schedules without stopping a
running job. A config that does not load is logged and the running one stays.

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from crowdwatch import logs
from crowdwatch.config import Config, ConfigError, load_config, load_stage_config
from crowdwatch.config.shards import stage_inputs, worker_name
from crowdwatch.httpbase import Access, AccessError
from crowdwatch.wire import client_curve
from streamer.heartbeat import ENV as HEARTBEAT_ENV
from streamer.heartbeat import FATAL_EXIT_CODES
from streamer.heartbeat import age as heartbeat_age
from streamer.pdeath import STOP_GRACE_S, SUPERVISOR_ENV
from streamer.shutdown import set_on_signal, stop_on_signals

if TYPE_CHECKING:
    from streamer.scheduler import CameraSchedule, Scheduler, UncertaintyFeed

log = logging.getLogger("crowdwatch.run")

BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 60.0
HEALTHY_AFTER_S = 60.0
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
        env = {**os.environ, SUPERVISOR_ENV: str(os.getpid())}  # the stage dies with this process (pdeath.watch_parent)
        if self.heartbeat is not None:
            self.heartbeat.parent.mkdir(parents=True, exist_ok=True)
            self.heartbeat.unlink(missing_ok=True)
            env[HEARTBEAT_ENV] = str(self.heartbeat)
        # The child logs (crowdwatch.logs) to its stdout, and to its own rotated file under
        # <var>/log when [log] files is on; Output passes every line on to this process's
        # stdout/stderr and keeps the last ones for its last error line.
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True, env=env)
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
    """The infer workers, web and one ingest per camera, each with this process's log level and format and a heartbeat file.
    Worker i > 0 gets ``--shard i`` and serves its /metrics on ``metrics_port + i``."""
    flags = logs.child_flags()
    port = config.server.metrics_port
    worker_flags = [["--shard", str(i), "--metrics-port", str(port + i)] if i else [] for i in range(config.server.infer_workers)]
    children = [Child(worker_name(i), stage_argv("infer", config_path, *extra, *flags)) for i, extra in enumerate(worker_flags)]
    children.append(Child("web", stage_argv("web", config_path, *flags)))
    children += [Child(f"ingest:{cam}", stage_argv("ingest", config_path, "--camera", cam, *flags)) for cam in config.cameras]
    for c in children:
        safe = c.name.replace(":", "-")
        c.log_path = logs.stage_file(config.paths.var / "log", c.name) if config.log.files else None
        c.heartbeat = config.paths.run / "heartbeat" / f"{safe}.beat"
        c.stall_s, c.start_timeout_s = config.server.stall_restart_s, config.server.start_timeout_s
    return children


def apply_config(children: dict[str, Child], old: Config, new: Config, config_path: Path) -> dict[str, Child]:
    """The children for ``new``: a child whose part of the config (``stage_inputs``) changed is stopped and
    replaced, one that is gone is stopped, a new one is added (all started by the next ``check``); the
    others keep running untouched."""
    wanted = {c.name: c for c in build_children(new, config_path)}
    touched = [name for name in children if name not in wanted or stage_inputs(old, name) != stage_inputs(new, name)]
    for name in touched:
        children[name].stop()
    deadline = time.monotonic() + STOP_GRACE_S
    for name in touched:
        children[name].wait_or_kill(deadline)
    out = {}
    for name, fresh in wanted.items():
        kept = children.get(name)
        if kept is None or name in touched:
            out[name] = fresh
        else:  # the supervisor's own settings apply at once
            kept.stall_s, kept.start_timeout_s = fresh.stall_s, fresh.start_timeout_s
            out[name] = kept
    restarted = [n for n in touched if n in wanted]
    stopped = [n for n in touched if n not in wanted]
    started = [n for n in wanted if n not in children]
    logs.event(log, "config_reloaded", "config reloaded: restarted %s; started %s; stopped %s; %d unchanged",
               ", ".join(restarted) or "none", ", ".join(started) or "none", ", ".join(stopped) or "none",
               len(wanted) - len(restarted) - len(started))
    return out


def reload_config(config_path: Path) -> Config | None:
    """The config file read again, or None (logged) when it does not load or this machine cannot serve it."""
    try:
        config = load_config(config_path, stage="supervisor")
    except (ConfigError, OSError) as exc:
        logs.event(log, "config_reload_failed", "config not reloaded, the running one stays: %s", exc, level=logging.ERROR)
        return None
    for warning in config.warnings:
        logs.event(log, "config_warning", "%s", warning, level=logging.WARNING)
    return config


def camera_schedules(config: Config) -> dict[str, CameraSchedule]:
    from streamer.scheduler import CameraSchedule, UncertaintyWatch

    scheds = {}
    for name, cam in config.cameras.items():
        if not cam.adapt.enabled:
            continue
        trig = cam.adapt.uncertainty_trigger
        watch = UncertaintyWatch(trig.threshold, trig.for_s) if trig.enabled else None
        scheds[name] = CameraSchedule(name, cam.adapt.interval_s, cam.adapt.daily, watch, timeout_s=cam.adapt.timeout_s)
    return scheds


def _feed_inputs(config: Config) -> tuple:
    """What the uncertainty feed reads of the config: every worker's results, the watched cameras with how long a value lasts."""
    from streamer.scheduler import STALE_MIN_S, STALE_PERIODS

    watched = {name: max(STALE_MIN_S, STALE_PERIODS / cam.fps) for name, cam in config.cameras.items()
               if cam.adapt.enabled and cam.adapt.uncertainty_trigger.enabled}  # fmt: skip
    return config.results_endpoints(), watched, config.transport.hwm, config.transport.curve


def uncertainty_feed(config: Config, stop: threading.Event) -> UncertaintyFeed | None:
    """The results of every worker read for the cameras with an uncertainty trigger, until ``stop``; None when none has one."""
    from streamer.scheduler import UncertaintyFeed

    endpoints, watched, hwm, _ = _feed_inputs(config)
    if not watched:
        return None
    try:
        feed = UncertaintyFeed(endpoints, watched, hwm=hwm, curve=client_curve(config.transport))
    except ValueError as exc:  # CURVE keys missing or malformed: the web stage says so too
        log.error("the uncertainty trigger is off: %s", exc)
        return None
    feed.start(stop)
    return feed


def _unknown(camera: str) -> float | None:
    return None


def build_scheduler(current: Callable[[], Config], config_path: Path, stop: threading.Event) -> Scheduler:
    """The adaptation scheduler; its callbacks read ``current()``, the config in force (it changes on reload)."""
    from adapt.store.buffer import FrameBuffer
    from streamer.scheduler import Scheduler, adapt_command

    config = current()

    def buffer_frames(camera: str) -> int:
        c = current()
        return len(FrameBuffer(c.paths.var / "buffer", camera, c.cameras[camera].buffer).frames())

    return Scheduler(camera_schedules(config), config.paths.var, adapt_command(config_path, config.paths.var),
                     buffer_frames=buffer_frames, uncertainty=uncertainty_feed(config, stop) or _unknown, config=current)


def update_schedules(scheduler: Scheduler, old: Config, new: Config, config_path: Path, stop: threading.Event) -> None:
    """The scheduler's cameras for ``new``: an unchanged camera keeps its schedule and trigger state, a changed
    one its last run, a new one starts from its recorded runs; a job that is running goes on. The uncertainty
    feed starts again if what it reads changed (other workers, other cameras watched)."""
    from adapt.store.runs import read_runs
    from streamer.scheduler import UncertaintyFeed, adapt_command

    fresh = camera_schedules(new)
    for cam, sched in fresh.items():
        prev = scheduler.cameras.get(cam)
        if prev is not None and old.cameras[cam].adapt == new.cameras[cam].adapt:
            fresh[cam] = prev
        elif prev is not None:
            sched.last_run = prev.last_run
        else:
            sched.last_run = max((r["time"] for r in read_runs(new.paths.var, cam)), default=None)
    scheduler.var, scheduler.command = new.paths.var, adapt_command(config_path, new.paths.var)
    scheduler.cameras = fresh  # a new dict: the scheduler thread may be iterating the old one
    if _feed_inputs(old) != _feed_inputs(new):
        if isinstance(scheduler.uncertainty, UncertaintyFeed):
            scheduler.uncertainty.close()
        scheduler.uncertainty = uncertainty_feed(new, stop) or _unknown


def fatal_error(children: dict[str, Child] | list[Child]) -> str | None:
    """The one console line for a child that cannot start, if one could not."""
    for c in children.values() if isinstance(children, dict) else children:
        if c.fatal is not None:
            return f"crowdwatch run: {c.name} cannot start, not restarting: {c.fatal}"
    return None


def how_they_ended(children: dict[str, Child]) -> str:
    """Each stage's exit status once stopped ("infer 0, web 0, ingest:east -9"), for the service_stopped line."""
    return ", ".join(f"{c.name} {'not running' if c.proc is None else c.proc.returncode}" for c in children.values())


def supervise(config: Config, config_path: Path, stop: threading.Event, tick_s: float = 0.5, with_scheduler: bool = True,
              reload: threading.Event | None = None) -> dict[str, Child]:
    """Run until ``stop``, or until a child exits with a non-transient code (see :func:`fatal_error`).
    ``reload`` (SIGHUP) reads the config file again and restarts only the children it touches."""
    children = {c.name: c for c in build_children(config, config_path)}
    scheduler = build_scheduler(lambda: config, config_path, stop) if with_scheduler else None
    sched_thread = None

    def start_scheduler() -> None:
        nonlocal sched_thread
        if scheduler is not None and scheduler.cameras and sched_thread is None:
            sched_thread = threading.Thread(target=scheduler.loop, args=(stop,), name="scheduler", daemon=True)
            sched_thread.start()

    start_scheduler()
    # the infer workers bind the sockets; give them a head start so ingest's first frames are not lost
    for c in children.values():
        if c.name.startswith("infer"):
            c.check(time.monotonic())
    time.sleep(min(1.0, tick_s * 2))
    try:
        while not stop.is_set():
            if reload is not None and reload.is_set():
                reload.clear()
                new = reload_config(config_path)
                if new is not None:
                    children = apply_config(children, config, new, config_path)
                    if scheduler is not None:
                        update_schedules(scheduler, config, new, config_path, stop)
                    config = new
                    start_scheduler()
            now = time.monotonic()
            for c in children.values():
                c.check(now)
            if fatal_error(children) is not None:
                break
            stop.wait(tick_s)
    finally:
        if scheduler is not None:
            scheduler.cancel()
        for c in reversed(children.values()):  # ingest first, infer last
            c.stop()
        deadline = time.monotonic() + STOP_GRACE_S
        for c in children.values():
            c.wait_or_kill(deadline)
    return children


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
    for warning in config.warnings:  # e.g. a camera file that is not there yet: its ingest retries
        logs.event(log, "config_warning", "%s", warning, level=logging.WARNING)
    for host in (config.server.web_host, config.server.metrics_host):
        try:  # the stages would refuse to start, again and again
            Access.for_bind(host, config.server.auth_token_env)
        except AccessError as exc:
            print(f"crowdwatch run: {exc}", file=sys.stderr)
            return 2
    stop, reload = threading.Event(), threading.Event()
    stop_on_signals(stop)
    set_on_signal(reload, signal.SIGHUP)  # read the config again, restart only what it touches
    s = config.server
    files = f"; log files in {config.paths.var / 'log'}" if config.log.files else ""
    ports = f"{s.metrics_port}-{s.metrics_port + s.infer_workers - 1}" if s.infer_workers > 1 else str(s.metrics_port)
    logs.event(log, "service_started", "%d cameras, %d infer workers; live page http://%s:%s/ ; metrics http://%s:%s/metrics%s; "
               "SIGHUP reloads the config", len(config.cameras), s.infer_workers, s.web_host, s.web_port, s.metrics_host, ports, files)
    children = supervise(config, args.config, stop, with_scheduler=not args.no_adapt, reload=reload)
    logs.event(log, "service_stopped", "stopped: %s", how_they_ended(children))
    fatal = fatal_error(children)
    if fatal is not None:
        print(fatal, file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
