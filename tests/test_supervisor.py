"""The supervisor's children (stages and adaptation jobs) die with it, even on SIGKILL."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from streamer import pdeath

REPO = Path(__file__).resolve().parents[1]

# Runs the real supervise() loop and a real Scheduler job, with every child's
# argv replaced by a sleeper (no model, no camera), then prints the pids.
SCRIPT = textwrap.dedent("""
    import sys, threading, time
    from pathlib import Path
    from crowdwatch.config.loader import parse_config
    from streamer import supervisor
    from streamer.scheduler import CameraSchedule, Scheduler

    tmp = Path(sys.argv[1])
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    supervisor.stage_argv = lambda stage, config_path, *extra: sleeper + [stage, *extra]
    config = parse_config({"paths": {"var": str(tmp / "var"), "run": str(tmp / "run")},
                           "cameras": {"east": {"url": "synthetic://?people=3"}, "west": {"url": "synthetic://?people=4"}}})
    stop = threading.Event()
    sched = Scheduler({"east": CameraSchedule("east", 600.0, None, None)}, tmp / "var",
                      command=lambda cam, report: sleeper + ["adapt"], buffer_frames=lambda cam: 100)
    threading.Thread(target=sched.run_one, args=("east", "test"), daemon=True).start()
    threading.Thread(target=supervisor.supervise, args=(config, tmp / "config.toml", stop),
                     kwargs={"tick_s": 0.1, "with_scheduler": False}, daemon=True).start()
    time.sleep(120)
""")


def _pid_alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _children(ppid: int) -> list[int]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == ppid:
                    out.append(int(proc.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


@pytest.mark.skipif(not pdeath.available(), reason="needs Linux prctl(PR_SET_PDEATHSIG)")
def test_sigkill_of_the_supervisor_takes_every_child_with_it(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=tmp_path, env=env)
    kids: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # infer, web, 2 ingest, 1 adaptation job
            kids = _children(proc.pid)
            if len(kids) >= 5:
                break
            time.sleep(0.2)
        assert len(kids) == 5, f"expected 5 children, found {kids}"
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_pid_alive(p) for p in kids):
            time.sleep(0.1)
        assert [p for p in kids if _pid_alive(p)] == [], "children outlived the SIGKILLed supervisor"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in kids:
            if _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_without_prctl_the_preexec_fn_is_what_was_asked(monkeypatch):
    monkeypatch.setattr(pdeath, "_PRCTL", None)
    assert pdeath.die_with_parent() is None
    f = lambda: None  # noqa: E731
    assert pdeath.die_with_parent(then=f) is f
