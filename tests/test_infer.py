"""The inference stage in one process: real sockets, the real registry, a real (small) model."""

import logging
import shutil
import time

import numpy as np
import pytest
import zmq
from prometheus_client import generate_latest

import crowdwatch.wire as wire
from adapt.model.checkpoint import save_checkpoint
from adapt.store.registry import BASE, Registry
from adapt.store.runs import append_run
from crowdwatch.config import parse_config
from crowdwatch.fit import Fit
from crowdwatch.wire import AdaptationRun, FrameMessage, decode_result, encode_adaptation, encode_frame, open_socket
from streamer.exporter import Metrics
from streamer.infer import InferStage
from tests.test_network import perturbed_model


def sample(metrics: Metrics, name: str, **labels) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


FIT = Fit.plan(256, 192, 128, 96)  # a 256x192 camera in a 128x96 box


@pytest.fixture
def stage(tmp_path):
    yield from _stage(tmp_path)


def _stage(tmp_path, **cameras: dict):
    """The stage on three cameras (two synthetic, one rtsp); ``cameras`` adds keys to a camera's table."""
    save_checkpoint(tmp_path / "m.pt", perturbed_model(), {"version": "b1"})
    Registry(tmp_path / "models").publish(BASE, {"model.pt": tmp_path / "m.pt"}, {}, "b1")
    config = parse_config({
        "paths": {"var": str(tmp_path / "var"), "run": str(tmp_path / "run")},
        "model": {"registry": str(tmp_path / "models"), "backend": "torch", "max_batch": 4, "max_wait_ms": 50},
        "defaults": {"width": 128, "height": 96, "buffer": {"min_interval_s": 0}},
        "cameras": {name: {"url": url, **cameras.get(name, {})}
                    for name, url in (("lobby", "synthetic://"), ("hall", "synthetic://"), ("gate", "rtsp://cam.example/stream"))},
    }, base_dir=tmp_path)
    metrics = Metrics(process_metrics=False)
    ctx = zmq.Context()
    s = InferStage(config, metrics, ctx)
    push = open_socket(ctx, "push", config.transport.frames, bind=False)
    sub = open_socket(ctx, "sub", config.transport.results, bind=False)
    time.sleep(0.3)  # let the connections settle
    yield s, metrics, push, sub, tmp_path
    push.close(linger=0)
    sub.close(linger=0)
    s.close()
    ctx.term()


def test_frames_become_metrics_results_and_buffered_frames(stage):
    s, metrics, push, sub, tmp = stage
    rng = np.random.default_rng(0)
    for cam in ("lobby", "hall"):
        img = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
        push.send_multipart(encode_frame(FrameMessage(cam, 1, time.time_ns(), img, fit=FIT, truth=7.0, stats={"reconnects": 2, "dropped_sampling": 5})))
    done = 0
    deadline = time.monotonic() + 20
    while done < 2 and time.monotonic() < deadline:
        done += s.step()
    assert done == 2
    assert sample(metrics, "crowd_frames_total", camera="lobby", stage="infer") == 1
    assert sample(metrics, "crowd_people", camera="lobby") >= 0
    assert sample(metrics, "crowd_people_truth", camera="hall") == 7.0
    assert sample(metrics, "crowd_camera_up", camera="lobby") == 1
    assert sample(metrics, "crowd_camera_reconnects_total", camera="lobby") == 2
    assert sample(metrics, "crowd_frames_dropped_total", camera="lobby", stage="ingest", reason="sampling") == 5
    assert sample(metrics, "crowd_batch_size_count") >= 1
    assert sample(metrics, "crowd_model_info", camera="lobby", version="b1") == 1
    results = [decode_result(sub.recv_multipart()) for _ in range(2)]
    assert {r.camera for r in results} == {"lobby", "hall"}
    assert all(r.density.shape == (12, 16) and r.image is not None and r.fit == FIT for r in results)
    assert len(list((tmp / "var" / "buffer" / "lobby").glob("*.jpg"))) == 1


def test_malformed_frames_are_dropped_and_counted(stage):
    s, metrics, push, sub, tmp = stage
    push.send_multipart([b"{not json", b"x"])
    push.send_multipart([b'{"v": 1, "kind": "frame", "camera": "nobody", "seq": 1, "capture_ns": 1, "parts": []}'])
    for _ in range(5):
        s.step()
    drops = {s.labels["reason"]: s.value for fam in metrics.registry.collect() for s in fam.samples
             if s.name == "crowd_frames_dropped_total" and s.labels["stage"] == "infer" and s.value}
    assert drops.get("bad_json") == 1 and sum(drops.values()) == 2, drops


@pytest.fixture
def recorded_stage(tmp_path):
    # runs recorded before the stage starts
    append_run(tmp_path / "var", "lobby", {"time": 1000.0, "result": "failed", "reason": "schedule", "detail": "boom"})
    append_run(tmp_path / "var", "lobby", {"time": 2000.0, "result": "succeeded", "reason": "command", "detail": ""})
    append_run(tmp_path / "var", "lobby", {"time": 2500.0, "result": "maybe"})  # not a result: not exported, the rest is
    yield from _stage(tmp_path)


def test_adaptation_runs_are_exported_from_the_record_and_as_they_are_announced(recorded_stage):
    s, metrics, push, sub, tmp = recorded_stage
    # what was recorded before the stage started, read once
    assert sample(metrics, "crowd_adaptation_runs_total", camera="lobby", result="succeeded") == 1
    assert sample(metrics, "crowd_adaptation_runs_total", camera="lobby", result="failed") == 1
    assert sample(metrics, "crowd_adaptation_last_success_timestamp_seconds", camera="lobby") == 2000.0
    # then what is announced on the frames socket: a run it read already (sent while it started) is not counted again
    push.send_multipart(encode_adaptation(AdaptationRun("lobby", 2000.0, "succeeded")))
    push.send_multipart(encode_adaptation(AdaptationRun("lobby", 3000.0, "rejected")))
    push.send_multipart(encode_adaptation(AdaptationRun("hall", 3100.0, "succeeded")))
    deadline = time.monotonic() + 20
    while sample(metrics, "crowd_adaptation_runs_total", camera="hall", result="succeeded") != 1 and time.monotonic() < deadline:
        s.step()
    assert sample(metrics, "crowd_adaptation_runs_total", camera="lobby", result="rejected") == 1
    assert sample(metrics, "crowd_adaptation_runs_total", camera="lobby", result="succeeded") == 1
    assert sample(metrics, "crowd_adaptation_last_success_timestamp_seconds", camera="hall") == 3100.0
    assert sample(metrics, "crowd_frames_dropped_total", camera="lobby", stage="infer", reason="overflow") in (None, 0)


def test_the_loop_beats_even_without_frames(stage):
    """run() reports progress to the liveness check on every cycle, idle or not."""
    import threading

    s = stage[0]
    beats = []
    t = threading.Thread(target=s.run, kwargs={"beat": lambda: beats.append(time.monotonic())})
    t.start()
    deadline = time.monotonic() + 10
    while len(beats) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    s.stop_event.set()
    t.join(timeout=10)
    assert len(beats) >= 3 and not t.is_alive()


def test_a_stalled_camera_stops_exporting_its_crowd_figures(stage, caplog):
    s, metrics, push, sub, tmp = stage
    caplog.set_level(logging.INFO, logger="crowdwatch.infer")
    img = np.zeros((96, 128, 3), dtype=np.uint8)
    push.send_multipart(encode_frame(FrameMessage("lobby", 1, time.time_ns(), img, fit=FIT, truth=3.0)))
    deadline = time.monotonic() + 20
    while sample(metrics, "crowd_people", camera="lobby") is None and time.monotonic() < deadline:
        s.step()
    assert sample(metrics, "crowd_camera_up", camera="lobby") == 1
    s._mark_stalled(time.monotonic() + 3600)  # no frame for an hour
    assert sample(metrics, "crowd_camera_up", camera="lobby") == 0
    assert sample(metrics, "crowd_people", camera="lobby") is None
    assert sample(metrics, "crowd_people_truth", camera="lobby") is None
    assert sample(metrics, "crowd_close_pairs", camera="lobby") is None
    assert sample(metrics, "crowd_last_frame_timestamp_seconds", camera="lobby") is not None
    push.send_multipart(encode_frame(FrameMessage("lobby", 2, time.time_ns(), img, fit=FIT, truth=3.0)))
    deadline = time.monotonic() + 20
    while sample(metrics, "crowd_people", camera="lobby") is None and time.monotonic() < deadline:
        s.step()
    assert sample(metrics, "crowd_camera_up", camera="lobby") == 1
    assert sample(metrics, "crowd_people", camera="lobby") is not None
    # the log says the same: frames arrive, they are counted (once per up), they stop, they come back
    events = [r.event for r in caplog.records if getattr(r, "camera", None) == "lobby" and getattr(r, "event", None)]
    assert events == ["camera_up", "first_result", "camera_down", "camera_up", "first_result"]


def _serve_until(s, metrics, camera, frames_before, timeout=20.0):
    deadline = time.monotonic() + timeout
    while (sample(metrics, "crowd_frames_total", camera=camera, stage="infer") or 0) <= frames_before and time.monotonic() < deadline:
        s.step()
    return sample(metrics, "crowd_frames_total", camera=camera, stage="infer")


def _ignored(metrics, camera, what):
    return sample(metrics, "crowd_wire_ignored_total", camera=camera, stage="infer", what=what)


def test_untrusted_frame_contents_are_dropped_counted_and_the_stage_goes_on(stage):
    s, metrics, push, sub, tmp = stage
    img = np.zeros((96, 128, 3), dtype=np.uint8)

    def good(cam, seq, **kw):
        push.send_multipart(encode_frame(FrameMessage(cam, seq, time.time_ns(), img, fit=FIT, **kw)))

    # 1. a well-formed 4096x4096 frame for a 128x96 camera: dropped unread, counted
    push.send_multipart(encode_frame(FrameMessage("gate", 1, time.time_ns(), np.zeros((4096, 4096, 3), np.uint8))))
    deadline = time.monotonic() + 20  # 48 MB: under load it takes more than a step to arrive
    while sample(metrics, "crowd_frames_dropped_total", camera="gate", stage="infer", reason="oversized") is None and time.monotonic() < deadline:
        s.step()
    assert sample(metrics, "crowd_frames_dropped_total", camera="gate", stage="infer", reason="oversized") == 1
    assert sample(metrics, "crowd_frames_total", camera="gate", stage="infer") == 0
    good("gate", 2)
    assert _serve_until(s, metrics, "gate", 0) == 1

    # 2. a stats key the exporter would refuse as a label: dropped and counted, no new label
    good("gate", 3, stats={"dropped_" + "q" * 40: 5, "dropped_sampling": 1})
    assert _serve_until(s, metrics, "gate", 1) == 2
    assert _ignored(metrics, "gate", "unknown_stat") == 1
    assert sample(metrics, "crowd_frames_dropped_total", camera="gate", stage="ingest", reason="sampling") == 1

    # 3. an absurd reconnect count: clamped, counted, one increment (no loop per reconnect)
    t0 = time.monotonic()
    good("gate", 4, stats={"reconnects": 100_000_000})
    assert _serve_until(s, metrics, "gate", 2) == 3
    assert time.monotonic() - t0 < 10
    assert _ignored(metrics, "gate", "clamped_stat") == 1
    assert sample(metrics, "crowd_camera_reconnects_total", camera="gate") == wire.STATS_LIMITS["reconnects"]

    # 4. new dropped_<x> keys in every frame cannot grow /metrics
    before = sum(1 for fam in metrics.registry.collect() for _ in fam.samples)
    for i in range(20):
        good("gate", 5 + i, stats={f"dropped_x{i}": 1})
        _serve_until(s, metrics, "gate", 3 + i)
    after = sum(1 for fam in metrics.registry.collect() for _ in fam.samples)
    assert after == before, (before, after)
    assert _ignored(metrics, "gate", "unknown_stat") == 21

    # 5. truth from a camera that is not synthetic: dropped and counted, neither exported nor published
    while True:  # empty the results published so far
        try:
            sub.recv_multipart(flags=zmq.NOBLOCK)
        except zmq.Again:
            break
    good("gate", 30, truth=999.0)
    assert _serve_until(s, metrics, "gate", 23) == 24
    assert _ignored(metrics, "gate", "truth") == 1
    assert sample(metrics, "crowd_people_truth", camera="gate") is None
    assert decode_result(sub.recv_multipart()).truth is None
    # a synthetic camera's truth is still believed
    good("hall", 1, truth=7.0)
    _serve_until(s, metrics, "hall", 0)
    assert sample(metrics, "crowd_people_truth", camera="hall") == 7.0
    assert _ignored(metrics, "hall", "truth") == 0


@pytest.fixture
def full_disk_stage(tmp_path):
    # hall asks for more free space than any disk has: its buffer finds the disk full (a real statvfs)
    yield from _stage(tmp_path, hall={"buffer": {"min_free_bytes": "1000TiB"}})


def test_buffer_write_failures_are_counted_per_camera(full_disk_stage):
    s, metrics, push, sub, tmp = full_disk_stage
    for cam in ("lobby", "hall", "gate"):
        for reason in ("disk_full", "write_error"):  # every camera's counters exist from the start, at 0
            assert sample(metrics, "crowd_buffer_write_failures_total", camera=cam, reason=reason) == 0
    # lobby's buffer folder becomes a file: a real failed write (a read-only folder would do too, but not for root)
    shutil.rmtree(tmp / "var" / "buffer" / "lobby")
    (tmp / "var" / "buffer" / "lobby").write_text("not a folder")
    rng = np.random.default_rng(1)
    for seq in (1, 2):
        for cam in ("lobby", "hall", "gate"):
            img = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
            push.send_multipart(encode_frame(FrameMessage(cam, seq, time.time_ns(), img, fit=Fit.identity(128, 96))))
        for cam in ("lobby", "hall", "gate"):
            _serve_until(s, metrics, cam, seq - 1)
    assert sample(metrics, "crowd_buffer_write_failures_total", camera="lobby", reason="write_error") == 2
    assert sample(metrics, "crowd_buffer_write_failures_total", camera="hall", reason="disk_full") == 2
    assert sample(metrics, "crowd_buffer_write_failures_total", camera="gate", reason="write_error") == 0
    assert sample(metrics, "crowd_buffer_write_failures_total", camera="gate", reason="disk_full") == 0
    assert sample(metrics, "crowd_buffer_frames", camera="gate") == 2
    assert sample(metrics, "crowd_buffer_frames", camera="lobby") == sample(metrics, "crowd_buffer_frames", camera="hall") == 0
    text = generate_latest(metrics.registry).decode()  # what Prometheus scrapes
    assert 'crowd_buffer_write_failures_total{camera="lobby",reason="write_error"} 2.0' in text


@pytest.fixture
def zoned_stage(tmp_path):
    # gate's frame size is known only from its frames: its door reaches beyond a 128x96 frame
    yield from _stage(tmp_path, gate={"zones": {"door": [[0, 0], [100, 0], [500, 90]], "desk": [[0, 0], [50, 0], [50, 50]]}})


def test_a_zone_beyond_the_frame_of_a_streaming_camera_is_logged_once(zoned_stage, caplog):
    s, metrics, push, sub, tmp = zoned_stage
    img = np.zeros((96, 128, 3), dtype=np.uint8)
    with caplog.at_level("WARNING", logger="crowdwatch.infer"):
        for seq in (1, 2):
            push.send_multipart(encode_frame(FrameMessage("gate", seq, time.time_ns(), img, fit=Fit.identity(128, 96))))
            assert _serve_until(s, metrics, "gate", seq - 1) == seq
    lines = [r for r in caplog.records if getattr(r, "event", None) == "zone_outside_frame"]
    assert len(lines) == 1 and lines[0].camera == "gate"
    assert lines[0].getMessage() == "gate: zone door has point [500.0, 90.0] outside the camera's 128x96 frame; only its part inside is counted"
