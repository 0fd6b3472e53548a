"""``crowdwatch run``: every stage on one machine, supervised.

Children (separate processes, so one crash stays one crash):
- ``infer`` (binds the frame and result sockets, serves /metrics),
- ``web`` (live overlay),
- one ``ingest`` per camera.
The adaptation scheduler runs on a thread here and launches ``crowdwatch
adapt`` jobs one at a time.

A child that exits is restarted after an exponential backoff (1 s doubling to
60 s, reset once it has run for a minute). SIGINT/SIGTERM stop the scheduler,
then the children (SIGTERM, then SIGKILL after a grace period). Every child
(and every adaptation job) gets SIGTERM from the kernel if this process dies,
even by SIGKILL (``streamer/pdeath.py``), so no stage outlives the supervisor.
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from crowdwatch import logs
from crowdwatch.config import Config, load_stage_config
from crowdwatch.httpbase import Access, AccessError
from streamer.pdeath import die_with_parent

log = logging.getLogger("crowdwatch.run")

BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 60.0
HEALTHY_AFTER_S = 60.0
STOP_GRACE_S = 10.0


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen | None = None
    started: float = 0.0
    restarts: int = 0
    backoff: float = BACKOFF_INITIAL_S
    next_start: float = 0.0

    def start(self, now: float) -> None:
        # The child writes its own log lines (crowdwatch.logs) to the stdout it shares with
        # this process, and to its own rotated file under <var>/log when [log] files is on.
        # die_with_parent: a SIGKILL of `crowdwatch run` takes its stages with it
        self.proc = subprocess.Popen(self.argv, start_new_session=True, preexec_fn=die_with_parent())
        self.started = now
        logs.event(log, "stage_started", "started %s (pid %d)", self.name, self.proc.pid, camera=self.camera)

    @property
    def camera(self) -> str | None:
        return self.name.split(":", 1)[1] if self.name.startswith("ingest:") else None

    def check(self, now: float) -> None:
        """Restart with backoff if it has exited."""
        if self.proc is None:
            if now >= self.next_start:
                self.start(now)
            return
        code = self.proc.poll()
        if code is None:
            if now - self.started >= HEALTHY_AFTER_S:
                self.backoff = BACKOFF_INITIAL_S
            return
        self.restarts += 1
        self.next_start = now + self.backoff
        logs.event(log, "stage_exited", "%s exited with %s; restart %d in %.0f s", self.name, code, self.restarts, self.backoff,
                   camera=self.camera, level=logging.WARNING)
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


def build_children(config: Config, config_path: Path) -> list[Child]:
    """infer, web and one ingest per camera, each with this process's log level and format."""
    flags = logs.child_flags()
    children = [Child("infer", stage_argv("infer", config_path, *flags)), Child("web", stage_argv("web", config_path, *flags))]
    children += [Child(f"ingest:{cam}", stage_argv("ingest", config_path, "--camera", cam, *flags)) for cam in config.cameras]
    return children


def scrape_uncertainty(url: str, token: str | None = None) -> dict[str, float]:
    """Latest crowd_count_uncertainty per camera from the infer stage's /metrics (with the access token, if it needs one)."""
    from prometheus_client.parser import text_string_to_metric_families

    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        text = urllib.request.urlopen(request, timeout=2).read().decode()
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
        scheds[name] = CameraSchedule(name, cam.adapt.interval_s, cam.adapt.daily, watch)
    host = config.server.metrics_host
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # a wildcard bind is reached via loopback
    metrics_url = f"http://{host}:{config.server.metrics_port}/metrics"
    token = Access.for_bind(config.server.metrics_host, config.server.auth_token_env).token
    cache: dict[str, tuple[float, dict]] = {}

    def uncertainty(camera: str) -> float | None:
        t, values = cache.get("u", (0.0, {}))
        if time.monotonic() - t > 10:
            values = scrape_uncertainty(metrics_url, token)
            cache["u"] = (time.monotonic(), values)
        return values.get(camera)

    buffer_root = config.paths.var / "buffer"
    return Scheduler(
        scheds, config.paths.var, adapt_command(config_path, config.paths.var),
        buffer_frames=lambda cam: len(FrameBuffer(buffer_root, cam, config.cameras[cam].buffer).frames()), uncertainty=uncertainty,
    )


def supervise(config: Config, config_path: Path, stop: threading.Event, tick_s: float = 0.5, with_scheduler: bool = True) -> dict[str, Child]:
    children = build_children(config, config_path)
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
    supervise(config, args.config, stop, with_scheduler=not args.no_adapt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
