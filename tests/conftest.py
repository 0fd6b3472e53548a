"""Fixtures and helpers shared by the test files (import helpers as ``from tests.conftest import ...``)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CROWDWATCH_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, or a clean skip on machines that do not have it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not present at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Stages set up logging for the whole process (crowdwatch.logs): put the test's handlers, level and excepthook back."""
    root = logging.getLogger()
    handlers, level, hook = list(root.handlers), root.level, sys.excepthook
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    sys.excepthook = hook


@pytest.fixture(scope="session")
def rtsp_ready() -> None:
    """A GStreamer RTSP server can run here (tests/rtsp_server.py), or a clean skip saying what is missing."""
    from tests.rtsp_server import unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(f"no GStreamer RTSP server: {reason}")


# --------------------------------------------------------------------------- processes and ports


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pid_alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def child_pids(ppid: int) -> list[int]:
    """The pids whose parent is ``ppid`` (from /proc)."""
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == ppid:
                    out.append(int(proc.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def stage_pids(pid: int) -> dict[str, int]:
    """The stages that `crowdwatch run` (pid) started, by name (infer, infer:1, web, ingest:CAMERA) -> pid."""
    out = {}
    for child in child_pids(pid):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"streamer.cli" not in argv:
            continue
        stage = argv[argv.index(b"streamer.cli") + 1].decode()
        if stage == "ingest":
            stage += ":" + argv[argv.index(b"--camera") + 1].decode()
        elif stage == "infer" and b"--shard" in argv:
            stage += ":" + argv[argv.index(b"--shard") + 1].decode()
        out[stage] = child
    return out


def kill_run(proc) -> None:
    """SIGKILL a `crowdwatch run` (a subprocess.Popen) and any stage it leaves: a test leaks no process."""
    # find the stages before the supervisor goes: orphans would be re-parented and lost
    kids = list(stage_pids(proc.pid).values()) if proc.poll() is None else []
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for pid in kids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """The predicate's first truthy result within ``timeout`` s (OSErrors, such as a refused scrape, count as not yet)."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except OSError as exc:
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} ({last_exc})")


# --------------------------------------------------------------------------- /metrics


def scrape(port: int, timeout: float = 2.0) -> dict[tuple[str, tuple], float]:
    """Every sample of http://127.0.0.1:PORT/metrics: (name, sorted label items) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout).read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(metrics: dict[tuple[str, tuple], float], name: str, **labels: str) -> float | None:
    """One sample of a scrape, or None when it is not exported."""
    return metrics.get((name, tuple(sorted(labels.items()))))


def site_toml(root: Path, metrics_port: int, web_port: int, cameras: str, *, server: str = "", sections: str = "",
              registry: Path | None = None) -> str:
    """A small `crowdwatch run` site under ``root``: 320x256 cameras at 2 fps on the CPU, no adaptation.

    ``server`` adds lines to [server], ``sections`` whole tables, ``cameras`` the [cameras.*] tables.
    """
    return f"""
[server]
metrics_port = {metrics_port}
web_port = {web_port}
{server}
{sections}
[paths]
var = "{root / 'var'}"
run = "{root / 'run'}"
[model]
registry = "{registry or REPO / 'models'}"
providers = ["CPUExecutionProvider"]
[defaults]
fps = 2
width = 320
height = 256
[defaults.adapt]
enabled = false
{cameras}"""
