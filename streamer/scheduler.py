"""Adaptation scheduling: when each camera adapts, one job at a time.

A camera is due when its interval has passed since its last run, at its daily
local time, or early when ``crowd_count_uncertainty`` has stayed above its
trigger threshold for the configured duration. Jobs run one at a time (one
device), as ``crowdwatch adapt`` subprocesses, so a crash or a leak in
training never reaches the online stages.

Every finished run is appended to ``<var>/adapt/<camera>/runs.jsonl``
(``adapt/store/runs.py``): by the job itself (``crowdwatch adapt --record``), or
here when the buffer is too small to start one or the job died before it could
record; the inference stage reads these files to export the adaptation metrics from the
same /metrics endpoint as everything else.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from adapt.store.runs import append_run, read_runs
from crowdwatch import logs
from streamer.pdeath import die_with_parent

log = logging.getLogger("crowdwatch.scheduler")

# `crowdwatch adapt` exit codes -> crowd_adaptation_runs_total{result}
RESULTS = {0: "succeeded", 3: "rejected", 4: "skipped"}
MIN_BUFFER_FRAMES = 8


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
            # The job logs JSON lines to its stderr (same level as here); they are logged again
            # here, in this process's format, and its other stderr lines give the run's detail.
            env = {**os.environ, **logs.child_env(), logs.FORMAT_ENV: "json"}
            with self._lock:
                self.running = camera
                # lowest CPU priority: the online stages come first; dies with the supervisor
                self._proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                                              preexec_fn=die_with_parent(then=lambda: os.nice(10)))
            last = ""
            for raw in self._proc.stderr:
                line = raw.decode(errors="replace").rstrip()
                fields = logs.parse_line(line)
                if fields is not None:
                    logs.relay(log, fields)
                elif line.strip():
                    last = line.strip()
            code = self._proc.wait()
            self._proc.stderr.close()
            with self._lock:
                self.running, self._proc = None, None
            result = RESULTS.get(code, "failed")
            detail = last or f"exit {code}"
            runs = read_runs(self.var, camera)
            child_recorded = len(runs) > recorded  # `crowdwatch adapt --record` wrote the run itself
            if child_recorded:
                result = str(runs[-1]["result"])
        if not child_recorded:  # skipped here, or the job died before it could record
            append_run(self.var, camera, {"time": now, "result": result, "reason": reason, "detail": detail[:500]})
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
