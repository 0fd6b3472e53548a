"""crowdwatch.logs: one key set in JSON, text on a terminal, rotation, and `crowdwatch run` logging JSON from every stage."""

from __future__ import annotations

import io
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from crowdwatch import logs
from tests.conftest import REPO, child_pids, free_port, site_toml

pytestmark = pytest.mark.usefixtures("restore_logging")


class _Pipe(io.StringIO):
    def isatty(self) -> bool:
        return False


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_json_lines_have_one_key_set(monkeypatch):
    monkeypatch.delenv(logs.FORMAT_ENV, raising=False)
    out = _Pipe()
    assert logs.setup("infer", "INFO", stream=out) == "json"  # auto: not a terminal
    log = logging.getLogger("crowdwatch.infer")
    log.info("plain %d", 1)
    logs.event(log, "camera_down", "%s: gone", "lobby", camera="lobby", level=logging.WARNING)
    log.debug("not at INFO")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 3
    assert all(tuple(rec) == logs.KEYS for rec in lines)
    assert lines[0] | {"time": None} == {"time": None, "level": "INFO", "stage": "infer", "camera": None, "event": None, "message": "plain 1"}
    assert lines[1]["event"] == "camera_down" and lines[1]["camera"] == "lobby" and lines[1]["level"] == "WARNING"
    assert lines[0]["time"].endswith("Z")
    assert "RuntimeError: boom" in lines[2]["message"]


def test_text_on_a_terminal_and_the_process_camera(monkeypatch):
    monkeypatch.delenv(logs.FORMAT_ENV, raising=False)
    out = _Tty()
    assert logs.setup("ingest", "INFO", camera="gate", stream=out) == "text"
    logging.getLogger("x").info("hello")
    line = out.getvalue().strip()
    assert "INFO" in line and "ingest[gate]: hello" in line and not line.startswith("{")


def test_level_and_format_from_the_environment(monkeypatch):
    monkeypatch.setenv(logs.FORMAT_ENV, "json")
    monkeypatch.setenv(logs.LEVEL_ENV, "warning")
    out = _Tty()
    assert logs.setup("adapt", stream=out) == "json"  # the environment beats the terminal
    logging.getLogger("x").info("quiet")
    logging.getLogger("x").warning("loud")
    assert [json.loads(x)["message"] for x in out.getvalue().splitlines()] == ["loud"]
    assert logs.child_flags() == ["--log-level", "WARNING", "--log-format", "json"]
    with pytest.raises(ValueError, match="log level"):
        logs.setup("adapt", "chatty", stream=out)


def test_log_files_rotate(tmp_path, monkeypatch):
    monkeypatch.delenv(logs.FORMAT_ENV, raising=False)
    path = tmp_path / "log" / "infer.log"
    logs.setup("infer", "INFO", "json", file=path, file_max_bytes=2000, file_backups=2, stream=_Pipe())
    for i in range(200):
        logging.getLogger("x").info("line %d %s", i, "x" * 40)
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["infer.log", "infer.log.1", "infer.log.2"]
    assert all(p.stat().st_size <= 2000 for p in path.parent.iterdir())


def test_relay_keeps_a_childs_stage_camera_and_event(monkeypatch):
    out = _Pipe()
    logs.setup("supervisor", "INFO", "json", stream=out)
    child = json.dumps({"time": "t", "level": "WARNING", "stage": "adapt", "camera": "lobby", "event": "adaptation_verdict", "message": "m"})
    fields = logs.parse_line(child)
    assert fields is not None and logs.parse_line("crowdwatch adapt: oops") is None
    logs.relay(logging.getLogger("crowdwatch.scheduler"), fields)
    rec = json.loads(out.getvalue())
    assert (rec["stage"], rec["camera"], rec["event"], rec["level"], rec["message"]) == ("adapt", "lobby", "adaptation_verdict", "WARNING", "m")


# --------------------------------------------------------------------------- crowdwatch run

CAMERAS = ("east", "west")
RUN_S = 90  # at most, for the stages to come up and count (about 5 s on a shared two-core machine)


def container_argv() -> list[str]:
    """A container of fresh user, PID and mount namespaces (what Docker makes, less the image and the network),
    or a clean skip saying why this machine cannot make one."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare (util-linux) is not installed")
    # root in the container is this user; --kill-child: the container dies with unshare, whatever happens to the test
    argv = [unshare, "--user", "--map-root-user", "--pid", "--fork", "--mount-proc", "--kill-child"]
    probe = subprocess.run([*argv, "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"unshare cannot make user, PID and mount namespaces here: {probe.stderr.strip() or probe.returncode}")
    return argv


def init_pid(proc: subprocess.Popen, container: bool) -> int:
    """The pid of what `docker stop` signals: PID 1 of the container (unshare's one child), else `crowdwatch run` itself."""
    if not container:
        return proc.pid
    kids = child_pids(proc.pid)
    assert len(kids) == 1, f"unshare has children {kids}"
    return kids[0]


@pytest.mark.slow
@pytest.mark.parametrize("container", [False, True], ids=["pipe", "container"])
def test_run_logs_json_lines_from_every_stage_to_stdout_and_stops_on_sigterm(tmp_path, container):
    """stdout is a pipe, as under Docker, and no --log-format is given: every stage's lines arrive there as JSON with
    the one key set; camera_up and first_result show up for each camera; SIGTERM to the container's init ends it all.

    In the container variant `crowdwatch run` is PID 1 of fresh user, PID and mount namespaces (unshare), as
    under `docker run` without --init: no Docker daemon, image or network namespace is involved."""
    if not (REPO / "models" / "base" / "current").is_file():
        pytest.fail("the shipped base model is missing from models/base")
    prefix = container_argv() if container else []
    cfg = tmp_path / "config.toml"
    cfg.write_text(site_toml(tmp_path, free_port(), free_port(), "".join(f"""
[cameras.{cam}]
url = "synthetic://?people={5 + 5 * i}&style=day&seed={i}"
""" for i, cam in enumerate(CAMERAS)), sections='[log]\nfile_max_bytes = "1MiB"'))
    env = {k: v for k, v in os.environ.items() if k not in (logs.FORMAT_ENV, logs.LEVEL_ENV)} | {"PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([*prefix, sys.executable, "-m", "streamer.cli", "run", "--config", str(cfg), "--no-adapt", "--log-level", "info"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=lambda: ([lines.put(x) for x in proc.stdout], lines.put(None)), daemon=True).start()  # type: ignore[union-attr]
    records: list[dict] = []
    other: list[str] = []

    def read(timeout: float) -> bool:
        """One stdout line into records (or other); False at the end of stdout or after ``timeout`` s."""
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            return False
        if line is None:
            return False
        try:
            records.append(json.loads(line))
        except ValueError:
            other.append(line)
        return True

    def seen() -> set[tuple]:
        """(stage, camera) of every line, and ("event", name, camera) of every event."""
        return {(r.get("stage"), r.get("camera")) for r in records} | {("event", r.get("event"), r.get("camera")) for r in records}

    want = {("supervisor", None), ("infer", None), ("web", None)} | {("ingest", cam) for cam in CAMERAS}
    want |= {("event", event, cam) for cam in CAMERAS for event in ("camera_up", "first_result")}  # both from infer
    try:
        deadline = time.monotonic() + RUN_S
        while time.monotonic() < deadline and not want <= seen():
            if not read(1.0):
                assert proc.poll() is None, f"crowdwatch run exited: {proc.stderr.read()}"  # type: ignore[union-attr]
        assert want <= seen(), f"missing {sorted(want - seen(), key=str)}; non-JSON lines: {other[:5]}"
        # the children got the level and the format that auto chose, and their rotated files exist
        cmdlines = [c for c in map(_read, Path("/proc").glob("[0-9]*/cmdline")) if f"--config\0{cfg}".encode() in c]
        assert cmdlines and all(b"--log-level\0INFO\0--log-format\0json" in c for c in cmdlines if b"streamer.cli\0run" not in c)
        assert {"infer.log", "web.log", "supervisor.log", *(f"ingest-{c}.log" for c in CAMERAS)} <= {p.name for p in (tmp_path / "var" / "log").iterdir()}

        init = init_pid(proc, container)
        if container:  # crowdwatch run is PID 1 of its own PID namespace
            nspid = next(x for x in Path(f"/proc/{init}/status").read_text().splitlines() if x.startswith("NSpid:"))
            assert nspid.split()[-1] == "1" and b"streamer.cli\0run" in _read(Path(f"/proc/{init}/cmdline")), nspid
        os.kill(init, signal.SIGTERM)  # what `docker stop` sends
        while read(30.0):
            pass
        assert proc.wait(timeout=30) == 0, proc.stderr.read()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()  # in a container, --kill-child takes init and the namespace with it
            proc.wait()
    assert other == [], other[:5]
    assert all(tuple(r) == logs.KEYS for r in records), [r for r in records if tuple(r) != logs.KEYS][:3]
    assert records[-1]["stage"] == "supervisor" and records[-1]["event"] == "service_stopped", records[-3:]
    stages = ["infer", "web", *(f"ingest:{c}" for c in CAMERAS)]
    assert records[-1]["message"] == "stopped: " + ", ".join(f"{s} 0" for s in stages)  # each stopped by itself, none killed
    assert [c for c in map(_read, Path("/proc").glob("[0-9]*/cmdline")) if f"--config\0{cfg}".encode() in c] == []


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""
