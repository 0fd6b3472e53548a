"""The inference stage in one process: real sockets, the real registry, a real (small) model."""

import time

import numpy as np
import pytest
import zmq

from adapt.model.checkpoint import save_checkpoint
from adapt.store.registry import BASE, Registry
from adapt.store.runs import append_run
from crowdwatch.config import parse_config
from streamer.exporter import Metrics
from streamer.infer import InferStage
from streamer.wire import FrameMessage, decode_result, encode_frame, open_socket
from tests.test_network import perturbed_model


def sample(metrics: Metrics, name: str, **labels) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


@pytest.fixture
def stage(tmp_path):
    save_checkpoint(tmp_path / "m.pt", perturbed_model(), {"version": "b1"})
    Registry(tmp_path / "models").publish(BASE, {"model.pt": tmp_path / "m.pt"}, {}, "b1")
    config = parse_config({
        "paths": {"var": str(tmp_path / "var"), "run": str(tmp_path / "run")},
        "model": {"registry": str(tmp_path / "models"), "backend": "torch", "max_batch": 4, "max_wait_ms": 50},
        "defaults": {"width": 128, "height": 96, "buffer": {"min_interval_s": 0}},
        "cameras": {"lobby": {"url": "synthetic://"}, "hall": {"url": "synthetic://"}},
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
        push.send_multipart(encode_frame(FrameMessage(cam, 1, time.time_ns(), img, source_size=(128, 96), truth=7.0, stats={"reconnects": 2, "dropped_sampling": 5})))
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
    assert all(r.density.shape == (12, 16) and r.image is not None and r.source_size == (128, 96) for r in results)
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


def test_adaptation_runs_are_exported(stage):
    s, metrics, push, sub, tmp = stage
    append_run(tmp / "var", "lobby", {"time": 1000.0, "result": "failed"})
    append_run(tmp / "var", "lobby", {"time": 2000.0, "result": "succeeded"})
    s._poll_adaptation_runs(now=1e9)
    assert sample(metrics, "crowd_adaptation_runs_total", camera="lobby", result="succeeded") == 1
    assert sample(metrics, "crowd_adaptation_runs_total", camera="lobby", result="failed") == 1
    assert sample(metrics, "crowd_adaptation_last_success_timestamp_seconds", camera="lobby") == 2000.0
    append_run(tmp / "var", "lobby", {"time": 3000.0, "result": "rejected"})
    s._poll_adaptation_runs(now=2e9)
    assert sample(metrics, "crowd_adaptation_runs_total", camera="lobby", result="rejected") == 1
    assert sample(metrics, "crowd_adaptation_runs_total", camera="lobby", result="succeeded") == 1  # not counted twice


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


def test_a_stalled_camera_stops_exporting_its_crowd_figures(stage):
    s, metrics, push, sub, tmp = stage
    img = np.zeros((96, 128, 3), dtype=np.uint8)
    push.send_multipart(encode_frame(FrameMessage("lobby", 1, time.time_ns(), img, source_size=(128, 96), truth=3.0)))
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
    push.send_multipart(encode_frame(FrameMessage("lobby", 2, time.time_ns(), img, source_size=(128, 96), truth=3.0)))
    deadline = time.monotonic() + 20
    while sample(metrics, "crowd_people", camera="lobby") is None and time.monotonic() < deadline:
        s.step()
    assert sample(metrics, "crowd_camera_up", camera="lobby") == 1
    assert sample(metrics, "crowd_people", camera="lobby") is not None
