"""``crowdwatch run``: every stage on one machine, supervised.

Children (separate processes, so one crash stays one crash):
- ``infer`` (binds the frame and result sockets, serves /metrics),
- ``web`` (live overlay),
- one ``ingest`` per camera.
The adaptation scheduler runs on a thread here and launches ``crowdwatch
adapt`` jobs one at a time.

A child that exits is restarted after an exponential backoff (1 s doubling to
60 s, reset once it has run for a minute); the console line names its last
error line (from its log). A child whose heartbeat file
(``streamer/heartbeat.py``) has not moved for ``[server] stall_restart`` (or,
before its first beat, ``start_timeout``) is hung or stopped: it is killed
(SIGKILL works on a SIGSTOPped process) and restarted the same way. A child
that exits with ``EXIT_FATAL`` (78) or 2 (usage, config) cannot start for a reason a restart will
not fix (address in use, no registry, an invalid config): the supervisor
prints its last error line once and stops everything instead of looping. SIGINT/SIGTERM stop the scheduler,
then the children (SIGTERM, then SIGKILL after a grace period). Every child
(and every adaptation job) gets SIGTERM from the kernel if this process dies,
even by SIGKILL (``streamer/pdeath.py``), so no stage outlives the supervisor.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from crowdwatch.config import Config, load_stage_config
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


def last_error_line(log_path: Path | None) -> str:
    """The last non-empty line of a child's log (a traceback ends with its exception), or ""."""
    if log_path is None:
        return ""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
            tail = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in tail.splitlines() if ln.strip()]
    return lines[-1][:500] if lines else ""


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen | None = None
    started: float = 0.0
    restarts: int = 0
    backoff: float = BACKOFF_INITIAL_S
    next_start: float = 0.0
    log_path: Path | None = None
    heartbeat: Path | None = None       # touched by the child's loop (streamer/heartbeat.py)
    stall_s: float | None = None        # no heartbeat for this long: hung, replace it
    start_timeout_s: float | None = None  # ... before its first heartbeat
    started_wall: float = 0.0
    stalls: int = 0
    fatal: str | None = None            # set when it exited with EXIT_FATAL: do not restart

    def start(self, now: float) -> None:
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        env = None
        if self.heartbeat is not None:
            self.heartbeat.parent.mkdir(parents=True, exist_ok=True)
            self.heartbeat.unlink(missing_ok=True)
            env = {**os.environ, HEARTBEAT_ENV: str(self.heartbeat)}
        try:
            # die_with_parent: a SIGKILL of `crowdwatch run` takes its stages with it
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=die_with_parent(), env=env)
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        self.started = now
        self.started_wall = time.time()
        log.info("started %s (pid %d)", self.name, self.proc.pid)

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
        why = last_error_line(self.log_path)
        if code in FATAL_EXIT_CODES:
            self.fatal = why or f"{self.name} exited with {code}"
            self.proc = None
            return
        self.restarts += 1
        self.next_start = now + self.backoff
        log.warning("%s exited with %s; restart %d in %.0f s%s", self.name, code, self.restarts, self.backoff,
                    f"; its last line: {why}" if why else "")
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


def stage_argv(stage: str, config_path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "streamer.cli", stage, "--config", str(config_path), *extra]


def build_children(config: Config, config_path: Path, log_dir: Path) -> list[Child]:
    children = [Child("infer", stage_argv("infer", config_path)), Child("web", stage_argv("web", config_path))]
    children += [Child(f"ingest:{cam}", stage_argv("ingest", config_path, "--camera", cam)) for cam in config.cameras]
    log_dir.mkdir(parents=True, exist_ok=True)
    for c in children:
        c.log_path = log_dir / f"{c.name.replace(':', '-')}.log"
        c.heartbeat = config.paths.run / "heartbeat" / f"{c.name.replace(':', '-')}.beat"
        c.stall_s, c.start_timeout_s = config.server.stall_restart_s, config.server.start_timeout_s
    return children


def scrape_uncertainty(url: str) -> dict[str, float]:
    """Latest crowd_count_uncertainty per camera from the infer stage's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = urllib.request.urlopen(url, timeout=2).read().decode()
    except OSError:
        return {}
    out = {}
    for fam in text_string_to_metric_families(text):
        if fam.name == "crowd_count_uncertainty":
            for s in fam.samples:
                out[s.labels.get("camera", "")] = s.value
    return out


def build_scheduler(config: Config, config_path: Path):
    from adapt.store.buffer import FrameBuffer
    from streamer.scheduler import CameraSchedule, Scheduler, UncertaintyWatch, adapt_command

    scheds = {}
    for name, cam in config.cameras.items():
        if not cam.adapt.enabled:
            continue
        trig = cam.adapt.uncertainty_trigger
        watch = UncertaintyWatch(trig.threshold, trig.for_s) if trig.enabled else None
        scheds[name] = CameraSchedule(name, cam.adapt.interval_s, cam.adapt.daily, watch, timeout_s=cam.adapt.timeout_s)
    host = config.server.metrics_host
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # a wildcard bind is reached via loopback
    metrics_url = f"http://{host}:{config.server.metrics_port}/metrics"
    cache: dict[str, tuple[float, dict]] = {}

    def uncertainty(camera: str) -> float | None:
        t, values = cache.get("u", (0.0, {}))
        if time.monotonic() - t > 10:
            values = scrape_uncertainty(metrics_url)
            cache["u"] = (time.monotonic(), values)
        return values.get(camera)

    buffer_root = config.paths.var / "buffer"
    return Scheduler(
        scheds, config.paths.var, adapt_command(config_path, config.paths.var),
        buffer_frames=lambda cam: len(FrameBuffer(buffer_root, cam, config.cameras[cam].buffer).frames()), uncertainty=uncertainty,
    )


def fatal_error(children: dict[str, Child] | list[Child]) -> str | None:
    """The one console line for a child that cannot start, if one could not."""
    for c in children.values() if isinstance(children, dict) else children:
        if c.fatal is not None:
            return f"crowdwatch run: {c.name} cannot start, not restarting: {c.fatal}"
    return None


def supervise(config: Config, config_path: Path, stop: threading.Event, tick_s: float = 0.5, with_scheduler: bool = True) -> dict[str, Child]:
    """Run until ``stop``, or until a child exits with a non-transient code (see :func:`fatal_error`)."""
    children = build_children(config, config_path, config.paths.var / "log")
    scheduler = build_scheduler(config, config_path) if with_scheduler else None
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
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    config = load_stage_config("crowdwatch run", args.config, args.log_level)
    if config is None:
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    s = config.server
    print(f"crowdwatch: {len(config.cameras)} cameras; live page http://{s.web_host}:{s.web_port}/ ; metrics http://{s.metrics_host}:{s.metrics_port}/metrics ; logs in {config.paths.var / 'log'}", flush=True)
    children = supervise(config, args.config, stop, with_scheduler=not args.no_adapt)
    fatal = fatal_error(children)
    if fatal is not None:
        print(fatal, file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
