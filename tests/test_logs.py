"""crowdwatch.logs: one key set in JSON, text on a terminal, rotation, and `crowdwatch run` logging JSON from every stage."""

from __future__ import annotations

import io
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from crowdwatch import logs
from tests.conftest import REPO, free_port, site_toml

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



@pytest.mark.slow
def test_run_in_a_container_logs_json_lines_from_every_stage(tmp_path):
    """stdout is a pipe (as in a container): every stage's lines arrive there as JSON, with the key set."""
    if not (REPO / "models" / "base" / "current").is_file():
        pytest.fail("the shipped base model is missing from models/base")
    cfg = tmp_path / "config.toml"
    cfg.write_text(site_toml(tmp_path, free_port(), free_port(), """
[cameras.east]
url = "synthetic://?people=10&style=day&seed=3"
""", sections='[log]\nfile_max_bytes = "1MiB"'))
    env = {k: v for k, v in os.environ.items() if k not in (logs.FORMAT_ENV, logs.LEVEL_ENV)} | {"PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "streamer.cli", "run", "--config", str(cfg), "--no-adapt", "--log-level", "info"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    seen: dict[str, dict] = {}
    other: list[str] = []
    try:
        deadline = time.monotonic() + 120
        want = {"supervisor", "ingest", "infer", "web"}
        while time.monotonic() < deadline and not (want <= seen.keys() and "camera_up" in {r["event"] for r in seen.values()}):
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                assert proc.poll() is None, f"crowdwatch run exited: {proc.stderr.read()}"  # type: ignore[union-attr]
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                other.append(line)
                continue
            assert tuple(rec) == logs.KEYS, rec
            seen.setdefault(rec["stage"], rec)
            if rec["event"] == "camera_up":
                seen["camera_up"] = rec
        assert want <= seen.keys(), f"stages seen: {sorted(seen)}; non-JSON lines: {other[:5]}"
        assert seen["camera_up"]["stage"] == "infer" and seen["camera_up"]["camera"] == "east"
        assert seen["ingest"]["camera"] == "east"
        assert other == [], other[:5]
        # the children got the level and format, and their rotated files exist
        cmdlines = [Path(f"/proc/{p.name}/cmdline").read_bytes() for p in Path("/proc").iterdir() if p.name.isdigit()
                    and f"--config\0{cfg}".encode() in _read(p / "cmdline")]
        assert cmdlines and all(b"--log-level\0INFO\0--log-format\0json" in c for c in cmdlines if b"streamer.cli\0run" not in c)
        assert {"infer.log", "web.log", "ingest-east.log", "supervisor.log"} <= {p.name for p in (tmp_path / "var" / "log").iterdir()}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""
