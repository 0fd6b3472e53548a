import datetime as dt
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from adapt.store.runs import append_run, read_runs, run_log_path
from crowdwatch.fit import Fit
from crowdwatch.result import Figures, Result
from crowdwatch.wire import AdaptationRun, decode_inbound, encode_result, open_socket
from streamer.scheduler import CameraSchedule, Scheduler, UncertaintyFeed, UncertaintyWatch, next_daily, next_due

UTC = dt.UTC


def ts(*args):
    return dt.datetime(*args, tzinfo=UTC).timestamp()


def test_daily_and_interval_schedules():
    assert next_daily(ts(2026, 1, 1, 2, 0), 3, 0, UTC) == ts(2026, 1, 1, 3, 0)
    assert next_daily(ts(2026, 1, 1, 3, 0), 3, 0, UTC) == ts(2026, 1, 2, 3, 0)
    assert next_due(None, 1000.0, 600.0, None) == 1600.0
    assert next_due(5000.0, 1000.0, 600.0, None) == 5600.0
    assert next_due(ts(2026, 1, 1, 4, 0), 0, None, (3, 0), UTC) == ts(2026, 1, 2, 3, 0)


def test_uncertainty_must_stay_high_for_the_whole_window():
    w = UncertaintyWatch(threshold=10.0, for_s=60.0)
    assert not w.update(12.0, 0.0)
    assert not w.update(12.0, 59.0)
    assert w.update(12.0, 60.0)
    assert not w.update(9.0, 61.0)  # a dip restarts the window
    assert not w.update(12.0, 100.0)
    assert not w.update(None, 200.0)


def make(tmp_path, script, frames=100, **sched_kw):
    cams = {"lobby": CameraSchedule("lobby", sched_kw.get("interval_s", 600.0), None, sched_kw.get("watch"))}
    clock = {"t": 1000.0}
    s = Scheduler(
        cams, tmp_path, command=lambda cam, report: [sys.executable, "-c", script],
        buffer_frames=lambda cam: frames, uncertainty=sched_kw.get("uncertainty", lambda cam: None),
        started=1000.0, clock=lambda: clock["t"],
    )
    return s, clock


def test_runs_are_scheduled_recorded_and_classified(tmp_path):
    s, clock = make(tmp_path, "import sys; sys.exit(0)")
    assert s.due() == []
    clock["t"] = 1600.0
    assert s.due() == [("lobby", "schedule")]
    assert s.run_one("lobby", "schedule") == "succeeded"
    assert s.due() == []  # next one is an interval later
    s.command = lambda cam, report: [sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(1)"]
    assert s.run_one("lobby", "schedule") == "failed"
    s.command = lambda cam, report: [sys.executable, "-c", "import sys; sys.exit(3)"]
    assert s.run_one("lobby", "schedule") == "rejected"
    runs = read_runs(tmp_path, "lobby")
    assert [r["result"] for r in runs] == ["succeeded", "failed", "rejected"]
    assert runs[1]["detail"] == "boom"


def test_a_small_buffer_is_skipped_without_running(tmp_path):
    s, clock = make(tmp_path, "raise SystemExit(0)", frames=2)
    assert s.run_one("lobby", "schedule") == "skipped"


def test_uncertainty_trigger_comes_first(tmp_path):
    values = {"lobby": 50.0}
    s, clock = make(tmp_path, "pass", watch=UncertaintyWatch(10.0, 30.0), uncertainty=values.get, interval_s=1e9)
    assert s.due() == []
    clock["t"] += 31
    assert s.due() == [("lobby", "uncertainty")]


def test_last_run_survives_a_restart_and_torn_lines_are_ignored(tmp_path):
    append_run(tmp_path, "lobby", {"time": 5000.0, "result": "succeeded"})
    with run_log_path(tmp_path, "lobby").open("a") as f:
        f.write('{"time": 6000, "res')  # crash mid-write
    s, clock = make(tmp_path, "pass")
    assert s.cameras["lobby"].last_run == 5000.0
    assert len(read_runs(tmp_path, "lobby")) == 1


def test_a_job_that_records_its_own_run_is_recorded_once(tmp_path):
    # `crowdwatch adapt --record VAR` appends the run itself; the scheduler must not add a second line
    script = ("from adapt.store.runs import append_run; "
              f"append_run({str(tmp_path)!r}, 'lobby', {{'time': 1.0, 'result': 'rejected', 'reason': 'command'}}); raise SystemExit(3)")
    s, clock = make(tmp_path, script)
    assert s.run_one("lobby", "schedule") == "rejected"
    assert [r["result"] for r in read_runs(tmp_path, "lobby")] == ["rejected"]


@pytest.fixture
def ipc_dir():
    # Short path: unix socket paths are limited to 107 bytes.
    d = Path(tempfile.mkdtemp(prefix="cw-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def received_run(pull: zmq.Socket) -> AdaptationRun:
    assert pull.poll(10_000), "no run was announced"
    return decode_inbound(pull.recv_multipart())


def test_adapt_command_is_one_command_on_the_config(tmp_path, ipc_dir):
    from crowdwatch.config import load_config
    from streamer.scheduler import adapt_command

    config = tmp_path / "config.toml"
    config.write_text(f'[paths]\nvar = "var"\nrun = "{ipc_dir}"\n[model]\nregistry = "models"\n[cameras.lobby]\nurl = "synthetic://"\n'
                      '[cameras.lobby.adapt]\nkeep_count = false\n')
    var, report = tmp_path / "var", tmp_path / "r.json"
    argv = adapt_command(config, var)("lobby", report)
    assert argv[3:] == ["adapt", "--config", str(config), "--camera", "lobby", "--json", str(report), "--record", str(var)]
    # the adapt command takes them: the registry is the config's (empty here), and the job records its failure
    # itself and announces it to infer, on the config's frames socket
    from adapt.commands.adapt import main

    ctx = zmq.Context()
    pull = open_socket(ctx, "pull", load_config(config).transport.frames_bind, bind=True)
    try:
        assert main(argv[4:]) == 1
        (run,) = read_runs(var, "lobby")
        assert run["result"] == "failed" and str(tmp_path / "models") in run["detail"]
        assert received_run(pull) == AdaptationRun("lobby", run["time"], "failed")
    finally:
        pull.close(linger=0)
        ctx.term()


def test_runs_recorded_here_are_announced_to_the_cameras_worker(tmp_path, ipc_dir):
    from crowdwatch.config import parse_config

    config = parse_config({"paths": {"var": str(tmp_path), "run": str(ipc_dir)}, "server": {"infer_workers": 2},
                           "cameras": {"lobby": {"url": "synthetic://", "shard": 1}}}, base_dir=tmp_path)  # fmt: skip
    ctx = zmq.Context()
    workers = [open_socket(ctx, "pull", config.endpoint("frames_bind", shard), bind=True) for shard in (0, 1)]
    try:
        s, clock = make(tmp_path, "raise SystemExit(0)", frames=2)
        s.config = lambda: config
        assert s.run_one("lobby", "schedule") == "skipped"
        assert received_run(workers[1]) == AdaptationRun("lobby", 1000.0, "skipped")
        assert read_runs(tmp_path, "lobby")[-1]["time"] == 1000.0
        assert not workers[0].poll(0)  # delivered before run_one returned: nothing went to the other worker
    finally:
        for sock in workers:
            sock.close(linger=0)
        ctx.term()


def lobby_result(uncertainty: float | None, camera: str = "lobby") -> list:
    return encode_result(Result(camera=camera, seq=1, capture_ns=time.time_ns(), model_version="v1",
                                figures=Figures(count=3.0, uncertainty=uncertainty), fit=Fit.identity(64, 64),
                                density=np.zeros((8, 8), np.float32), image=np.zeros((64, 64, 3), np.uint8)), jpeg_quality=80)  # fmt: skip


def test_the_uncertainty_comes_from_the_results_stream(tmp_path, ipc_dir):
    ctx = zmq.Context()
    endpoint = f"ipc://{ipc_dir}/results.ipc"
    pub = open_socket(ctx, "pub", endpoint, bind=True)
    now = {"t": 0.0}
    feed = UncertaintyFeed([endpoint], {"lobby": 60.0}, clock=lambda: now["t"])
    stop = threading.Event()
    thread = feed.start(stop)
    try:
        assert feed("lobby") is None  # nothing heard yet

        def publish_until(parts: list, value: float | None) -> None:
            deadline = time.monotonic() + 10
            while feed("lobby") != value and time.monotonic() < deadline:  # a new subscriber misses the first messages
                pub.send_multipart(parts)
                time.sleep(0.05)
            assert feed("lobby") == value

        publish_until(lobby_result(50.0), 50.0)
        # malformed, unknown or half-broken messages are skipped and the feed goes on
        head, density, image = lobby_result(20.0)
        pub.send_multipart([b"{not json", b"x"])
        pub.send_multipart(lobby_result(99.0, camera="ghost"))
        publish_until([head, density, b"not even a jpeg"], 20.0)  # only the header is read: the figures, not the frame
        # the scheduler's trigger runs on it
        s, clock = make(tmp_path, "pass", watch=UncertaintyWatch(10.0, 30.0), uncertainty=feed, interval_s=1e9)
        assert s.due() == []
        clock["t"] += 31
        assert s.due() == [("lobby", "uncertainty")]
        # a camera whose results stopped has no uncertainty: the window starts again
        now["t"] += 61
        assert feed("lobby") is None and s.due() == []
    finally:
        stop.set()
        thread.join(timeout=10)
        pub.close(linger=0)
        ctx.term()


def test_a_job_past_its_timeout_is_stopped_and_recorded_as_failed(tmp_path):
    import time

    s, clock = make(tmp_path, "import time; print('epoch 1', flush=True); time.sleep(60)")
    s.cameras["lobby"].timeout_s = 1.0
    t0 = time.monotonic()
    assert s.run_one("lobby", "schedule") == "failed"
    assert time.monotonic() - t0 < 15
    run = read_runs(tmp_path, "lobby")[-1]
    assert run["detail"].startswith("timed out after 1 s") and "epoch 1" in run["detail"]
    assert s.running is None


def test_the_whole_job_output_is_kept_in_a_bounded_rotating_log(tmp_path, monkeypatch):
    import streamer.scheduler as scheduler

    monkeypatch.setattr(scheduler, "JOB_LOG_BYTES", 4096)
    # 100 KiB of stdout, then a stderr line: everything reaches the log, at most two files of 4 KiB are kept
    s, _ = make(tmp_path, "import sys\nfor i in range(1000): print(f'line {i:04d} ' + 'x' * 90)\nsys.stdout.flush()\n"
                          "print('the real reason', file=sys.stderr); sys.exit(1)")
    assert s.run_one("lobby", "schedule") == "failed"
    log_dir = tmp_path / "adapt" / "lobby"
    current, previous = log_dir / "job.log", log_dir / "job.log.1"
    assert current.stat().st_size <= 4096 and previous.stat().st_size <= 4096
    assert current.read_text().rstrip().endswith("the real reason")
    assert "line 0999" in current.read_text() + previous.read_text()
    assert read_runs(tmp_path, "lobby")[-1]["detail"] == "the real reason"
    # a second run starts a fresh job.log
    s.command = lambda cam, report: [sys.executable, "-c", "print('second run')"]
    s.run_one("lobby", "schedule")
    assert current.read_text() == "second run\n"


def test_a_job_runs_at_low_priority_and_knows_its_supervisor(tmp_path):
    """Nice 10 (the online stages come first), set with no preexec_fn; the supervisor named for pdeath.watch_parent."""
    from streamer.pdeath import SUPERVISOR_ENV

    nice_here = os.nice(0)
    s, _ = make(tmp_path, f"import os; print(os.nice(0), os.environ[{SUPERVISOR_ENV!r}])")
    assert s.run_one("lobby", "schedule") == "succeeded"
    nice, supervisor = (tmp_path / "adapt" / "lobby" / "job.log").read_text().split()
    assert int(nice) == max(nice_here, 10) and int(supervisor) == os.getpid()


def test_a_jobs_json_lines_are_relayed_and_kept_in_its_log(tmp_path, caplog):
    import json
    import logging

    line = json.dumps({"time": "t", "level": "WARNING", "stage": "adapt", "camera": "lobby", "event": "adaptation_verdict", "message": "m"})
    s, _ = make(tmp_path, f"import sys\nprint({line!r}, file=sys.stderr, flush=True)\nprint('the real reason', file=sys.stderr)\nsys.exit(1)")
    with caplog.at_level(logging.INFO, logger="crowdwatch.scheduler"):
        assert s.run_one("lobby", "schedule") == "failed"
    relayed = [r for r in caplog.records if getattr(r, "event", None) == "adaptation_verdict" and r.getMessage() == "m"]
    assert relayed and relayed[0].stage == "adapt" and relayed[0].camera == "lobby" and relayed[0].levelname == "WARNING"
    text = (tmp_path / "adapt" / "lobby" / "job.log").read_text()
    assert line in text and "the real reason" in text  # the whole output, JSON lines included
    assert read_runs(tmp_path, "lobby")[-1]["detail"] == "the real reason"  # the last non-JSON line
