"""The supervisor's children (stages and adaptation jobs) die with it, even on SIGKILL."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from streamer import pdeath
from tests.conftest import child_pids, free_port, pid_alive

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
    sleeper = [sys.executable, "-c", "import time; from streamer.pdeath import watch_parent; watch_parent(); time.sleep(120)"]  # as streamer.cli
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


@pytest.mark.skipif(not pdeath.available(), reason="needs Linux prctl(PR_SET_PDEATHSIG)")
def test_sigkill_of_the_supervisor_takes_every_child_with_it(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=tmp_path, env=env)
    kids: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # infer, web, 2 ingest, 1 adaptation job
            kids = child_pids(proc.pid)
            if len(kids) >= 5:
                break
            time.sleep(0.2)
        assert len(kids) == 5, f"expected 5 children, found {kids}"
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(pid_alive(p) for p in kids):
            time.sleep(0.1)
        assert [p for p in kids if pid_alive(p)] == [], "children outlived the SIGKILLed supervisor"
    finally:
        _kill_all(proc, kids)


def _kill_all(proc: subprocess.Popen, kids: list[int]) -> None:
    """The supervisor, then any child it left: a test leaks no process."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for pid in kids:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


# A parent that starts one child as crowdwatch run does (PDEATHSIG where there is prctl) and prints its pid.
ORPHAN_PARENT = textwrap.dedent("""
    import os, subprocess, sys, time
    from streamer.pdeath import SUPERVISOR_ENV
    env = {**os.environ, SUPERVISOR_ENV: str(os.getpid()), "CROWDWATCH_HEARTBEAT": sys.argv[2]}
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], env=env)  # as crowdwatch run
    print(child.pid, flush=True)
    time.sleep(120)
""")
ORPHAN_CHILD = textwrap.dedent("""
    import signal, sys, time
    from pathlib import Path
    from streamer import pdeath
    marker = Path(sys.argv[1])
    def on_term(*_):
        marker.write_text("SIGTERM")
        sys.exit(0)
    signal.signal(signal.SIGTERM, signal.SIG_IGN if marker.name == "stuck" else on_term)  # SIG_IGN: a stage that never stops
    if marker.name == "clean-without-prctl":
        pdeath._PRCTL = None  # as on a system without it: the watch thread sends the SIGTERM
    assert pdeath.watch_parent(grace_s=1.0, poll_s=0.05) is not None
    marker.with_suffix(".ready").write_text("")
    time.sleep(120)
""")


@pytest.mark.parametrize("kind", ["clean", "clean-without-prctl", "stuck"])
def test_a_stage_outlives_its_dead_supervisor_by_the_grace_at_most(tmp_path, kind):
    """SIGTERM when the supervisor dies (PDEATHSIG, else watch_parent's), then watch_parent's hard exit after the grace."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    marker = tmp_path / kind
    child_code = ORPHAN_CHILD.replace("sys.argv[1]", repr(str(marker)))
    beat = tmp_path / "child.beat"
    proc = subprocess.Popen([sys.executable, "-c", ORPHAN_PARENT, child_code, str(beat)], env=env, stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    try:
        deadline = time.monotonic() + 30
        while not marker.with_suffix(".ready").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.with_suffix(".ready").exists(), "the child never started watching"
        proc.kill()
        proc.wait()
        t0 = time.monotonic()
        while pid_alive(child) and time.monotonic() - t0 < 20:
            time.sleep(0.05)
        assert not pid_alive(child), "the child outlived its supervisor"
        assert marker.exists() == kind.startswith("clean")  # the clean one stopped on the SIGTERM
        stuck = tmp_path / "child.stuck"
        if kind == "stuck":  # it says why it went, and where its main thread was
            text = stuck.read_text()
            assert "still running 1 s after SIGTERM" in text and 'File "<string>"' in text, text
        else:
            assert not stuck.exists()
    finally:
        _kill_all(proc, [child])


def test_a_second_signal_during_the_first_handler_returns_at_once():
    """The first handler may be inside Event.set(), holding its lock: a nested one must not call it again."""
    from streamer.shutdown import stop_on_signals

    stop, calls = threading.Event(), []

    def on_signal(signum: int) -> None:
        calls.append(signum)
        os.kill(os.getpid(), signal.SIGTERM)  # delivered now, inside this handler
        time.sleep(0.05)

    previous = stop_on_signals(stop, on_signal)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        assert stop.is_set() and calls == [signal.SIGTERM]
        os.kill(os.getpid(), signal.SIGINT)  # later signals: nothing more
        time.sleep(0.05)
        assert calls == [signal.SIGTERM]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def test_sighup_sets_the_reload_flag_every_time():
    from streamer.shutdown import set_on_signal

    reload = threading.Event()
    previous = set_on_signal(reload, signal.SIGHUP)
    try:
        for _ in range(2):  # the supervisor clears the flag after each reload
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.05)
            assert reload.is_set()
            reload.clear()
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_a_stage_whose_supervisor_died_before_it_watched_stops_at_once(tmp_path):
    """The window between exec and watch_parent: the parent is already not the supervisor it was started by."""
    marker = tmp_path / "clean"
    code = ORPHAN_CHILD.replace("sys.argv[1]", repr(str(marker)))
    env = {**os.environ, "PYTHONPATH": str(REPO), pdeath.SUPERVISOR_ENV: str(os.getppid())}  # not the child's parent
    done = subprocess.run([sys.executable, "-c", code], env=env, timeout=30)
    assert done.returncode == 0 and marker.read_text() == "SIGTERM"


def test_watch_parent_needs_a_supervisor_and_keeps_it_from_what_the_stage_starts():
    assert pdeath.watch_parent(environ={}) is None  # started by hand or by an orchestrator
    env = {pdeath.SUPERVISOR_ENV: "not a pid"}
    assert pdeath.watch_parent(environ=env) is None
    assert env == {}  # removed: a stage's own children do not take it for their supervisor


# A minimal real stage: beats its heartbeat from its loop, as infer, web and ingest do.
BEATING_STAGE = "from streamer.heartbeat import Heartbeat; import time\nhb = Heartbeat.from_env()\nwhile True:\n    hb.beat(); time.sleep(0.1)"


def _stage_config(tmp_path, **server):
    from crowdwatch.config.loader import parse_config

    return parse_config({"server": {"stall_restart": "2s", "start_timeout": "5s", **server},
                         "paths": {"var": str(tmp_path / "var"), "run": str(tmp_path / "run")},
                         "cameras": {"east": {"url": "synthetic://?people=3"}}})


def _run_supervisor(monkeypatch, tmp_path, argv_for, config=None):
    from streamer import supervisor

    env_path = f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    monkeypatch.setenv("PYTHONPATH", env_path)
    monkeypatch.setattr(supervisor, "stage_argv", lambda stage, config_path, *extra: argv_for(stage))
    built: list = []
    real_build = supervisor.build_children
    monkeypatch.setattr(supervisor, "build_children", lambda *a: built.extend(real_build(*a)) or built)
    stop = threading.Event()
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(supervisor.supervise(config or _stage_config(tmp_path), tmp_path / "config.toml", stop,
                                                                          tick_s=0.1, with_scheduler=False)), daemon=True)
    t.start()
    return built, stop, t, result


def _wait(pred, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("victim", ["infer", "ingest:east"])
def test_a_sigstopped_stage_is_replaced_within_60_s(monkeypatch, tmp_path, victim):
    built, stop, t, _ = _run_supervisor(monkeypatch, tmp_path, lambda stage: [sys.executable, "-c", BEATING_STAGE])
    try:
        assert _wait(lambda: len(built) == 3 and all(c.proc is not None for c in built), 30)
        child = next(c for c in built if c.name == victim)
        assert _wait(lambda: child.heartbeat.exists(), 30)
        old = child.proc.pid
        os.kill(old, signal.SIGSTOP)
        t0 = time.monotonic()
        assert _wait(lambda: child.proc is not None and child.proc.pid != old, 60), f"{victim} was not replaced within 60 s"
        assert time.monotonic() - t0 < 60 and child.stalls == 1
        assert not pid_alive(old)
        others = [c for c in built if c is not child]
        assert all(c.restarts == 0 and c.stalls == 0 for c in others)  # only the stopped stage was touched
    finally:
        stop.set()
        t.join(30)


def _crowdwatch_run(tmp_path, server: dict, registry: Path, timeout=120):
    cfg = tmp_path / "config.toml"
    srv = "\n".join(f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}" for k, v in server.items())
    cfg.write_text(f'[server]\n{srv}\n[paths]\nvar = "var"\nrun = "run"\n[model]\nregistry = "{registry}"\n'
                   'providers = ["CPUExecutionProvider"]\n[cameras.east]\nurl = "synthetic://?people=3"\n')
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "streamer.cli", "run", "--config", str(cfg), "--no-adapt"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_non_transient_start_errors_stop_with_one_clear_line_and_no_retry(tmp_path):
    import socket as socketlib

    # a missing registry is caught when the config loads, before any stage starts (exit 2, as for any bad config)
    ports = {"metrics_port": free_port(), "web_port": free_port()}
    out = _crowdwatch_run(tmp_path, ports, tmp_path / "no-such-registry")
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        f"crowdwatch run: {tmp_path / 'config.toml'}: model.registry: expected a model registry folder "
        f"(<registry>/<camera or base>/<version>/model.pt), found no folder at {tmp_path / 'no-such-registry'}"], out.stderr
    # so is a registry without a model for the camera
    (tmp_path / "empty-registry" / "base").mkdir(parents=True)
    out = _crowdwatch_run(tmp_path, ports, tmp_path / "empty-registry")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "model.registry: expected a current model for every camera" in out.stderr and "found none for east" in out.stderr
    # the metrics port in use
    with socketlib.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        ports = {"metrics_port": busy.getsockname()[1], "web_port": free_port()}
        out = _crowdwatch_run(tmp_path, ports, REPO / "models")
    fatal = [ln for ln in out.stderr.splitlines() if ln.startswith("crowdwatch run:")]
    assert out.returncode == 1 and len(fatal) == 1, out.stderr
    assert "infer cannot start" in fatal[0] and "in use" in fatal[0]
    assert "restart" not in out.stderr.replace("not restarting", "")


def test_an_exiting_stage_shows_its_last_error_line(tmp_path, caplog):
    from streamer.supervisor import Child

    log = tmp_path / "x.log"
    child = Child("ingest:east", [sys.executable, "-c", "import sys; print('noise'); sys.exit('cannot open camera: boom')"], log_path=log)
    child.start(time.monotonic())
    child.proc.wait()
    with caplog.at_level("WARNING"):
        child.check(time.monotonic())
    assert "ingest:east exited with 1; restart 1 in 1 s; its last line: cannot open camera: boom" in caplog.text


def test_an_ingest_whose_file_is_missing_stays_up_marked_down_and_retries(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[paths]\nvar = "var"\nrun = "run"\n[cameras.gone]\nurl = "{tmp_path / "missing.mp4"}"\n')
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "streamer.cli", "ingest", "--config", str(cfg), "--camera", "gone"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # its log lines are on stdout
    try:
        deadline = time.monotonic() + 30
        lines = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "camera down" in line:
                break
        assert any("gone: camera down: video file not found" in ln and "retrying in 5 s" in ln for ln in lines), lines
        assert proc.poll() is None  # not a crash: it waits and retries
        proc.terminate()
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_childs_lines_pass_through_unchanged_and_its_logged_error_is_its_last_line(capfd, caplog):
    import json

    from streamer.supervisor import Child

    err = json.dumps({"time": "t", "level": "ERROR", "stage": "infer", "camera": None, "event": None, "message": "Traceback\nValueError: bad"})
    info = json.dumps({"time": "t", "level": "INFO", "stage": "infer", "camera": None, "event": None, "message": "still going"})
    script = f"print({err!r}, flush=True); print({info!r}, flush=True); raise SystemExit(1)"
    child = Child("infer", [sys.executable, "-c", script])  # no log file: [log] files = false
    child.start(time.monotonic())
    child.proc.wait()
    with caplog.at_level("WARNING"):
        child.check(time.monotonic())
    assert "infer exited with 1; restart 1 in 1 s; its last line: ValueError: bad" in caplog.text
    out = capfd.readouterr().out
    assert err in out and info in out  # passed on to this process's stdout as they were


# `crowdwatch run` itself (its SIGHUP handler), every stage replaced by a beating sleeper that keeps its argv.
RUN_WITH_SLEEPERS = textwrap.dedent("""
    import sys
    from streamer import supervisor
    stage = [sys.executable, "-c", sys.argv[2]]
    supervisor.stage_argv = lambda name, config_path, *extra: stage + [name, *extra]
    sys.exit(supervisor.main(["--config", sys.argv[1], "--no-adapt", "--log-format", "json"]))
""")


def _stages(ppid: int) -> dict[str, int]:
    """The supervisor's children by stage name (infer, infer:1, web, ingest:CAMERA) -> pid."""
    out = {}
    for pid in child_pids(ppid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[3:]
        except OSError:
            continue
        if argv and pid_alive(pid):
            name = argv[0]
            for flag in ("--shard", "--camera"):
                if flag in argv:
                    name += ":" + argv[argv.index(flag) + 1]
            out[name] = pid
    return out


def _site_config(path: Path, ports: tuple[int, int], cameras: dict[str, str], workers: int = 2) -> None:
    tables = "".join(f"[cameras.{name}]\nurl = \"synthetic://\"\n{extra}\n" for name, extra in cameras.items())
    path.write_text(f'[server]\ninfer_workers = {workers}\nmetrics_port = {ports[0]}\nweb_port = {ports[1]}\n'
                    f'[paths]\nvar = "var"\nrun = "run"\n[model]\nregistry = "{REPO / "models"}"\n'
                    f'providers = ["CPUExecutionProvider"]\n{tables}')


def test_sighup_restarts_only_the_stages_the_config_change_touches(tmp_path):
    cfg = tmp_path / "config.toml"
    ports = (free_port(), free_port())  # nothing listens there: the stages are sleepers
    _site_config(cfg, ports, {"east": "shard = 0", "west": "shard = 1", "north": "shard = 1"})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = open(tmp_path / "out.log", "w")  # closed below
    proc = subprocess.Popen([sys.executable, "-c", RUN_WITH_SLEEPERS, str(cfg), BEATING_STAGE], cwd=tmp_path, env=env,
                            stdout=out, stderr=subprocess.STDOUT)

    def reload(cameras: dict[str, str], **kw) -> tuple[dict[str, int], dict[str, int]]:
        before = _stages(proc.pid)
        _site_config(cfg, ports, cameras, **kw)
        proc.send_signal(signal.SIGHUP)
        reloads = len(_events("config_reloaded"))
        assert _wait(lambda: len(_events("config_reloaded")) > reloads, 30), _events("config_reload_failed")
        assert _wait(lambda: set(_stages(proc.pid)) == expected(cameras, kw.get("workers", 2)), 30), _stages(proc.pid)
        return before, _stages(proc.pid)

    def expected(cameras, workers):
        return {"infer", *(f"infer:{i}" for i in range(1, workers)), "web", *(f"ingest:{c}" for c in cameras)}

    def _events(name: str) -> list[dict]:
        import json

        lines = (tmp_path / "out.log").read_text().splitlines()
        return [e for e in (json.loads(ln) for ln in lines if ln.startswith("{")) if e.get("event") == name]

    try:
        assert _wait(lambda: set(_stages(proc.pid)) == expected(["east", "west", "north"], 2), 30), _stages(proc.pid)

        # one camera's fps: its ingest, its worker and the overlay; east, north and worker 0 untouched
        before, after = reload({"east": "shard = 0", "west": "shard = 1\nfps = 2", "north": "shard = 1"})
        assert {n for n in before if before[n] != after[n]} == {"ingest:west", "infer:1", "web"}
        assert "restarted infer:1, web, ingest:west; started none; stopped none; 3 unchanged" in _events("config_reloaded")[-1]["message"]

        # a camera removed, one added on worker 0
        before, after = reload({"east": "shard = 0", "west": "shard = 1\nfps = 2", "south": "shard = 0"})
        assert "ingest:north" not in after and not pid_alive(before["ingest:north"])
        assert {n for n in before if n in after and before[n] != after[n]} == {"infer", "infer:1", "web"}
        assert after["ingest:east"] == before["ingest:east"] and after["ingest:west"] == before["ingest:west"]

        # a config that does not load changes nothing
        stages = _stages(proc.pid)
        cfg.write_text(cfg.read_text().replace("fps = 2", "fps = -2"))
        proc.send_signal(signal.SIGHUP)
        assert _wait(lambda: len(_events("config_reload_failed")) == 1, 30)
        assert "cameras.west.fps" in _events("config_reload_failed")[0]["message"]
        time.sleep(1)
        assert _stages(proc.pid) == stages and proc.poll() is None

        # a third worker: worker 2 starts; the cameras that hash to it move (here none: all are pinned)
        before, after = reload({"east": "shard = 0", "west": "shard = 1\nfps = 2", "south": "shard = 0"}, workers=3)
        assert {n for n in before if before[n] != after[n]} == {"web"} and "infer:2" in after
    finally:
        kids = child_pids(proc.pid)
        proc.terminate()
        try:
            proc.wait(timeout=30)
        finally:
            _kill_all(proc, kids)
            out.close()
