import datetime as dt
import sys

from adapt.store.runs import append_run, read_runs, run_log_path
from streamer.scheduler import CameraSchedule, Scheduler, UncertaintyWatch, next_daily, next_due

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


def test_adapt_command_carries_each_cameras_own_options(tmp_path):
    from streamer.scheduler import adapt_command

    extra = {"lobby": ["--labels", "/l", "--no-per-person-uncertainty"]}
    argv = adapt_command(tmp_path / "models", tmp_path / "buffer", lambda cam: extra.get(cam, []))
    assert argv("lobby", tmp_path / "r.json")[-3:] == ["--labels", "/l", "--no-per-person-uncertainty"]
    assert argv("yard", tmp_path / "r.json")[-1] == str(tmp_path / "buffer")
    # the adapt command accepts them: it fails on the missing frames, not on the options
    from adapt.commands.adapt import main

    assert main(["--camera", "lobby", "--frames", str(tmp_path / "nope"), "--no-per-person-uncertainty", "--models", str(tmp_path / "models")]) == 1
