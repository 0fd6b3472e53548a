"""Adaptation scheduling: when each camera adapts, one job at a time.

A camera is due when its interval has passed since its last run, at its daily
local time, or early when its count uncertainty has stayed above its trigger
threshold for the configured duration. The uncertainty comes with each result
of the infer stage (:class:`UncertaintyFeed` subscribes to the results stream,
as the web stage does). Jobs run one at a time (one device), as ``crowdwatch
adapt`` subprocesses, so a crash or a leak in training never reaches the online
stages.

Every finished run is recorded in ``<var>/adapt/<camera>/runs.jsonl`` and
announced to the infer stage, which exports the adaptation metrics from the
same /metrics endpoint as everything else (``adapt/store/runs.py``,
``record_run``): by the job itself (``crowdwatch adapt --record``), or here
when the buffer is too small to start one or the job died before it could
record.

A job gets its camera's ``adapt.timeout``: one still running then is stopped
(SIGTERM, SIGKILL 10 s later) and recorded as ``failed`` ("timed out"). Its
whole output (stdout and stderr) goes to ``<var>/adapt/<camera>/job.log``,
bounded: past ``JOB_LOG_BYTES`` the file rotates to ``job.log.1`` (one
previous file kept), and each run starts a fresh ``job.log``. The job logs
JSON lines (``crowdwatch.logs``, ``$CROWDWATCH_LOG_FORMAT=json``) to its
stderr; they are relayed into this process's log as they arrive, and the run's
detail is its last non-JSON line (else its last logged error).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from adapt.store.runs import read_runs, record_run
from crowdwatch import logs
from crowdwatch.handshake import RefusalWatch
from crowdwatch.wire import CurveKeys, LatestReceiver, decode_result, subscribe
from streamer.pdeath import SUPERVISOR_ENV

log = logging.getLogger("crowdwatch.scheduler")

# `crowdwatch adapt` exit codes -> crowd_adaptation_runs_total{result}
RESULTS = {0: "succeeded", 3: "rejected", 4: "skipped"}
MIN_BUFFER_FRAMES = 8
JOB_LOG_BYTES = 256 * 1024
KILL_GRACE_S = 10.0
# A camera's last uncertainty counts for this many frame periods (at least STALE_MIN_S), then it is
# unknown, as for a camera that is down: a trigger never fires on a value the camera no longer sends.
STALE_PERIODS = 3.0
STALE_MIN_S = 10.0
DROP_LOG_EVERY_S = 60.0


class UncertaintyFeed:
    """The newest count uncertainty of each camera, read from the inference workers' results streams.

    A thread subscribes to the results and decodes their headers only (the
    figures; never the maps or the frame). ``feed(camera)`` is the value of the
    camera's last result while it is current (``stale_after_s[camera]``), else
    None. Malformed or unknown messages are skipped, with a log line per reason
    at most once a minute.
    """

    def __init__(self, endpoints: Sequence[str], stale_after_s: Mapping[str, float], *, hwm: int = 4, curve: CurveKeys | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.endpoints, self.hwm, self.curve, self.clock = list(endpoints), hwm, curve, clock
        self.stale_after_s = dict(stale_after_s)
        self._latest: dict[str, tuple[float | None, float]] = {}  # camera -> (uncertainty, when it arrived)
        self._lock = threading.Lock()
        self._logged: dict[str, float] = {}
        self._closed = threading.Event()

    def close(self) -> None:
        """Stop reading (a config reload starts another feed)."""
        self._closed.set()

    def __call__(self, camera: str) -> float | None:
        with self._lock:
            value, at = self._latest.get(camera, (None, -math.inf))
        return value if self.clock() - at <= self.stale_after_s.get(camera, STALE_MIN_S) else None

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop,), name="uncertainty-feed", daemon=True)
        thread.start()
        return thread

    def run(self, stop: threading.Event) -> None:
        """Read results until ``stop``; the socket lives and dies in this thread."""
        ctx = zmq.Context()
        try:
            with RefusalWatch(log=log) as watch:  # crowdwatch run has no /metrics of its own: a refusal is its log line
                try:
                    sock = subscribe(ctx, self.endpoints, hwm=self.hwm, curve=self.curve, watch=watch)
                except zmq.ZMQError as exc:
                    log.error("cannot subscribe to the results on %s (%s): the uncertainty trigger is off", ", ".join(self.endpoints), exc)
                    return
                try:
                    self._read(sock, stop, watch)
                finally:
                    sock.close(linger=0)
        finally:
            ctx.term()

    def _read(self, sock: zmq.Socket, stop: threading.Event, watch: RefusalWatch) -> None:
        rx = LatestReceiver(sock, lambda parts: decode_result(parts, arrays=False), cameras=self.stale_after_s, on_drop=self._dropped)
        while not (stop.is_set() or self._closed.is_set()):
            watch.heal()
            rx.drain(timeout_ms=200)
            for result in rx.take():
                with self._lock:
                    self._latest[result.camera] = (result.figures.uncertainty, self.clock())

    def _dropped(self, reason: str, camera: str | None) -> None:
        if reason == "overflow":
            return  # a newer result of the camera came in the same read: the design, not a fault
        now = self.clock()
        if now - self._logged.get(reason, -math.inf) >= DROP_LOG_EVERY_S:
            self._logged[reason] = now
            log.warning("skipping a result message (%s, camera %s); the uncertainty trigger ignores it", reason, camera or "?")


class JobLog:
    """A job's output in ``path``, rotated to ``path.1`` whenever it passes ``max_bytes``.

    Every complete line also goes to ``on_line`` (the scheduler relays the job's
    JSON log lines with it); a line longer than ``MAX_LINE`` is cut there.
    """

    MAX_LINE = 64 * 1024

    def __init__(self, path: Path, max_bytes: int | None = None, on_line: Callable[[str], None] | None = None):
        self.path, self.max_bytes = Path(path), JOB_LOG_BYTES if max_bytes is None else max_bytes
        self.rotated = self.path.with_name(self.path.name + ".1")
        self.on_line = on_line
        self._partial = b""
        self.last_plain = ""   # the last non-empty line that is not a JSON log line
        self.last_error = ""   # the message of the last JSON log line at ERROR or above

    @property
    def last_line(self) -> str:
        """The run's detail: its last plain line, else its last logged error, else ""."""
        return (self.last_plain or self.last_error)[:500]

    def _line(self, raw: bytes) -> None:
        line = raw.decode(errors="replace").strip()
        if not line:
            return
        fields = logs.parse_line(line)
        if fields is None:
            self.last_plain = line[:500]
        elif str(fields.get("level", "")).upper() in ("ERROR", "CRITICAL"):
            message = str(fields.get("message") or "").strip()
            self.last_error = message.splitlines()[-1][:500] if message else ""
        if self.on_line is not None:
            try:
                self.on_line(line)
            except Exception as exc:  # relaying must never stop the copy (the job would block on a full pipe)
                log.debug("job log %s: relay failed: %s", self.path, exc)

    def _lines(self, chunk: bytes) -> None:
        data = self._partial + chunk
        *complete, self._partial = data.split(b"\n")
        for raw in complete:
            self._line(raw)
        if len(self._partial) > self.MAX_LINE:
            self._line(self._partial[: self.MAX_LINE])
            self._partial = b""

    def _rotate(self) -> None:
        if self.path.exists():
            os.replace(self.path, self.rotated)

    def copy(self, stream) -> None:
        """Copy ``stream`` (the job's stdout and stderr) until EOF; never raises."""
        out = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._rotate()  # each run starts a fresh job.log
            out = open(self.path, "ab")
        except OSError as exc:
            log.warning("job log %s: %s", self.path, exc)
        try:
            for chunk in iter(lambda: stream.read1(65536), b""):
                self._lines(chunk)
                while out is not None and chunk:
                    try:
                        room = self.max_bytes - out.tell()
                        if room <= 0:
                            out.close()
                            self._rotate()
                            out = open(self.path, "ab")
                            room = self.max_bytes
                        out.write(chunk[:room])
                        chunk = chunk[room:]
                    except (OSError, ValueError) as exc:  # a full disk: keep reading (the job must never block)
                        log.warning("job log %s: %s", self.path, exc)
                        with contextlib.suppress(OSError, ValueError):
                            out.close()
                        out = None
                if out is not None:
                    with contextlib.suppress(OSError, ValueError):
                        out.flush()
            if self._partial:
                self._line(self._partial)
                self._partial = b""
        except (OSError, ValueError) as exc:  # the pipe itself
            log.warning("job log %s: %s", self.path, exc)
        finally:
            if out is not None:
                with contextlib.suppress(OSError, ValueError):
                    out.close()


JOB_NICE = 10  # the online stages come first


def lower_priority(pid: int, nice: int = JOB_NICE) -> None:
    """Give a just-started job the lowest CPU priority. Linux's nice is per thread and new threads inherit it:
    set right after exec, before the interpreter has started any thread, it covers the whole job."""
    with contextlib.suppress(OSError):  # it may have exited already
        os.setpriority(os.PRIO_PROCESS, pid, nice)


def next_daily(after: float, hour: int, minute: int, tz: dt.tzinfo | None = None) -> float:
    """The first local ``hour:minute`` strictly after the timestamp ``after``."""
    base = dt.datetime.fromtimestamp(after, tz)
    cand = base.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if cand.timestamp() <= after:
        cand = (cand + dt.timedelta(days=1)).replace(hour=hour, minute=minute)
    return cand.timestamp()


def next_due(last_run: float | None, started: float, interval_s: float | None, daily: tuple[int, int] | None, tz: dt.tzinfo | None = None) -> float:
    """When the scheduled (not triggered) run is due; a camera that never ran counts from ``started``."""
    ref = last_run if last_run is not None else started
    if daily is not None:
        return next_daily(ref, *daily, tz=tz)
    return ref + float(interval_s or 86400.0)


@dataclass
class UncertaintyWatch:
    """Tracks how long the count uncertainty has stayed above a threshold."""

    threshold: float
    for_s: float
    above_since: float | None = None

    def update(self, value: float | None, now: float) -> bool:
        """Feed the latest value; True when it has been above for ``for_s``."""
        if value is None or not value > self.threshold:
            self.above_since = None
            return False
        if self.above_since is None:
            self.above_since = now
        return now - self.above_since >= self.for_s

    def reset(self, now: float) -> None:
        self.above_since = None


@dataclass
class CameraSchedule:
    camera: str
    interval_s: float | None
    daily: tuple[int, int] | None
    watch: UncertaintyWatch | None
    timeout_s: float | None = None  # a job running longer is stopped and recorded as failed
    last_run: float | None = None
    due_reason: str | None = None


@dataclass
class Scheduler:
    """Decides what is due and runs adaptation jobs one at a time on a worker thread."""

    cameras: dict[str, CameraSchedule]
    var: Path
    command: Callable[[str, Path], list[str]]          # camera, report path -> argv
    buffer_frames: Callable[[str], int]
    uncertainty: Callable[[str], float | None] = lambda cam: None
    config: Callable[[], Any] | None = None  # the config in force: the runs recorded here are announced to the camera's worker
    started: float = field(default_factory=time.time)
    clock: Callable[[], float] = time.time
    running: str | None = None
    _proc: subprocess.Popen | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        for cam, sched in self.cameras.items():
            runs = read_runs(self.var, cam)
            if runs:
                sched.last_run = max(r["time"] for r in runs)

    def due(self, now: float | None = None) -> list[tuple[str, str]]:
        """(camera, reason) for every camera that should adapt now, most overdue first."""
        now = self.clock() if now is None else now
        out = []
        for cam, s in self.cameras.items():
            at = next_due(s.last_run, self.started, s.interval_s, s.daily)
            if s.watch is not None and s.watch.update(self.uncertainty(cam), now):
                out.append((at - 1e12, cam, "uncertainty"))
            elif now >= at:
                out.append((at, cam, "schedule"))
        return [(cam, why) for _, cam, why in sorted(out)]

    @staticmethod
    def _relay(line: str) -> None:
        """A job's JSON log line, logged again here (its stage, camera, event and level kept)."""
        fields = logs.parse_line(line)
        if fields is not None:
            logs.relay(log, fields)

    def run_one(self, camera: str, reason: str) -> str:
        """Run one job to completion; returns the result label."""
        now = self.clock()
        sched = self.cameras[camera]
        child_recorded = False
        if self.buffer_frames(camera) < MIN_BUFFER_FRAMES:
            result, detail = "skipped", f"buffer has fewer than {MIN_BUFFER_FRAMES} frames"
        else:
            report = Path(self.var) / "adapt" / camera / f"{int(now)}.json"
            report.parent.mkdir(parents=True, exist_ok=True)
            argv = self.command(camera, report)
            logs.event(log, "adaptation_started", "%s: adapting (%s): %s", camera, reason, " ".join(argv), camera=camera)
            recorded = len(read_runs(self.var, camera))
            # The job logs JSON lines to its stderr (same level as here): they are logged again here,
            # in this process's format. All of its output, stdout and stderr, is kept in job.log, and
            # its last non-JSON line (else its last logged error) is the run's detail.
            joblog = JobLog(report.parent / "job.log", on_line=self._relay)
            # the job dies with the supervisor (pdeath.watch_parent)
            env = {**os.environ, **logs.child_env(), logs.FORMAT_ENV: "json", SUPERVISOR_ENV: str(os.getpid())}
            with self._lock:
                self.running = camera
                self._proc = proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
                lower_priority(proc.pid)
            reader = threading.Thread(target=joblog.copy, args=(proc.stdout,), name=f"adapt-log-{camera}", daemon=True)
            reader.start()
            timed_out = False
            try:
                code = proc.wait(timeout=sched.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                log.error("%s: adaptation still running after %.0f s; stopping it", camera, sched.timeout_s)
                proc.terminate()
                try:
                    code = proc.wait(timeout=KILL_GRACE_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    code = proc.wait()
            reader.join(timeout=5.0)
            proc.stdout.close()
            with self._lock:
                self.running, self._proc = None, None
            result = RESULTS.get(code, "failed")
            detail = joblog.last_line or f"exit {code}"
            if timed_out:
                result, detail = "failed", f"timed out after {sched.timeout_s:.0f} s; last line: {detail}"
            runs = read_runs(self.var, camera)
            child_recorded = len(runs) > recorded  # `crowdwatch adapt --record` wrote the run itself
            if child_recorded:
                result = str(runs[-1]["result"])
        if not child_recorded:  # skipped here, or the job died before it could record
            record_run(self.var, camera, result, reason=reason, detail=detail, at=now, config=self.config() if self.config else None)
        sched.last_run = now
        if sched.watch is not None:
            sched.watch.reset(now)
        logs.event(log, "adaptation_verdict", "%s: adaptation %s (%s)", camera, result, detail, camera=camera,
                   level=logging.INFO if result in ("succeeded", "rejected", "skipped") else logging.WARNING)
        return result

    def loop(self, stop: threading.Event, tick_s: float = 30.0) -> None:
        while not stop.is_set():
            for camera, reason in self.due():
                if stop.is_set():
                    break
                if camera in self.cameras:  # not removed by a config reload meanwhile
                    self.run_one(camera, reason)
            stop.wait(tick_s)

    def cancel(self) -> None:
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.terminate()


def adapt_command(config: Path, var: Path) -> Callable[[str, Path], list[str]]:
    """argv of one ``crowdwatch adapt`` run: the camera's settings, registry and buffer all come from ``config``."""
    config, var = Path(config).resolve(), Path(var).resolve()

    def argv(camera: str, report: Path) -> list[str]:
        return [sys.executable, "-m", "streamer.cli", "adapt", "--config", str(config), "--camera", camera,
                "--json", str(report), "--record", str(var)]

    return argv
