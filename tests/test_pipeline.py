"""End to end: `crowdwatch run` with synthetic cameras, the shipped model, real processes and sockets.

Checks that counts reach /metrics close to the synthetic truth, that a killed
infer process is restarted by the supervisor while ingest keeps running, and
that SIGTERM shuts everything down; with two inference workers, that each
serves its own cameras, the overlay sees all, and killing one leaves the
other's cameras counting.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port, kill_run, scrape, site_toml, stage_pids, value, wait_for

pytestmark = pytest.mark.slow

# Mean |estimate - truth| must stay within REL_TOLERANCE * truth + ABS_TOLERANCE.
# Measured with the shipped synthetic-only model on these 320x256 streams: it
# overcounts by about 40% (52 vs 38, 21 vs 15), mostly people cut off at the
# frame edges, which the truth does not count; see research/NOTEBOOK.md.
REL_TOLERANCE = 0.5
ABS_TOLERANCE = 5.0


def write_config(tmp: Path, metrics_port: int, web_port: int, workers: int = 1) -> Path:
    models = REPO / "models"
    cfg = tmp / "config.toml"
    # with two workers, east is served by worker 0 and west by worker 1
    shards = ("", "") if workers == 1 else ("shard = 0", "shard = 1")
    cfg.write_text(site_toml(tmp, metrics_port, web_port, f"""
[cameras.east]
url = "synthetic://?people=40&style=day&seed=3"
{shards[0]}
[cameras.west]
url = "synthetic://?people=15&style=overcast&seed=4"
{shards[1]}
""", server=f"infer_workers = {workers}", registry=models))
    return cfg


@contextlib.contextmanager
def crowdwatch_run(tmp_path: Path, workers: int = 1):
    """`crowdwatch run --no-adapt` on two synthetic cameras: (process, metrics port, web port)."""
    if not (REPO / "models" / "base" / "current").is_file():
        pytest.fail("the shipped base model is missing from models/base")
    mport, wport = free_port(), free_port()
    while workers > 1 and mport + 1 == wport:
        wport = free_port()
    cfg = write_config(tmp_path, mport, wport, workers)
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamer.cli", "run", "--config", str(cfg), "--no-adapt"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        yield proc, mport, wport
    finally:
        kill_run(proc)


@pytest.fixture
def running(tmp_path):
    with crowdwatch_run(tmp_path) as (proc, mport, _):
        yield proc, mport, tmp_path


def test_run_counts_restarts_and_stops(running):
    proc, port, tmp = running
    # counts for both cameras, close to the synthetic truth
    wait_for(lambda: all((value(scrape(port), "crowd_frames_total", camera=c, stage="infer") or 0) >= 3 for c in ("east", "west")), 90, "frames from both cameras")
    est, truth = {"east": [], "west": []}, {"east": [], "west": []}
    for _ in range(10):
        m = scrape(port)
        for cam in est:
            est[cam].append(value(m, "crowd_people", camera=cam))
            truth[cam].append(value(m, "crowd_people_truth", camera=cam))
        time.sleep(0.5)
    for cam in est:
        errors = [abs(e - t) for e, t in zip(est[cam], truth[cam])]
        mean_truth = sum(truth[cam]) / len(truth[cam])
        assert mean_truth > 3, f"{cam}: synthetic truth {mean_truth} is too small to test against"
        assert sum(errors) / len(errors) <= REL_TOLERANCE * mean_truth + ABS_TOLERANCE, f"{cam}: estimates {est[cam]} vs truth {truth[cam]}"
    m = scrape(port)
    assert value(m, "crowd_camera_up", camera="east") == 1
    assert value(m, "crowd_count_uncertainty", camera="east") is not None
    assert value(m, "crowd_close_pairs", camera="east") is not None

    # kill infer: the supervisor restarts it; ingest processes keep running
    before = stage_pids(proc.pid)
    assert {"infer", "ingest:east", "ingest:west"} <= set(before), before
    os.kill(before["infer"], signal.SIGKILL)
    wait_for(lambda: stage_pids(proc.pid).get("infer") not in (None, before["infer"]), 30, "a new infer process")
    wait_for(lambda: (value(scrape(port), "crowd_frames_total", camera="east", stage="infer") or 0) >= 2, 60, "frames after the restart")
    after = stage_pids(proc.pid)
    assert after["ingest:east"] == before["ingest:east"] and after["ingest:west"] == before["ingest:west"]

    # SIGTERM: clean shutdown, children gone
    kids = stage_pids(proc.pid)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    for pid in kids.values():
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]


def test_run_rejects_a_bad_config(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[cameras.lobby]\nurl = "synthetic://"\nfps = "fast"\n')
    r = subprocess.run([sys.executable, "-m", "streamer.cli", "run", "--config", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "cameras.lobby.fps" in r.stderr


def frames(port: int, camera: str) -> float:
    return value(scrape(port), "crowd_frames_total", camera=camera, stage="infer") or 0


def web_results(port: int) -> dict[str, dict]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/results", timeout=2).read()
    return {c["camera"]: c for c in json.loads(body)["cameras"]}


def test_two_workers_split_the_cameras_and_one_killed_leaves_the_other_counting(tmp_path):
    with crowdwatch_run(tmp_path, workers=2) as (proc, port, wport):
        # east on worker 0 (metrics_port), west on worker 1 (metrics_port + 1), each exporting only its own
        wait_for(lambda: frames(port, "east") >= 2 and frames(port + 1, "west") >= 2, 120, "frames from both workers")
        m0, m1 = scrape(port), scrape(port + 1)
        assert value(m0, "crowd_camera_up", camera="east") == 1 and value(m0, "crowd_camera_up", camera="west") is None
        assert value(m1, "crowd_camera_up", camera="west") == 1 and value(m1, "crowd_camera_up", camera="east") is None
        # the overlay subscribes to both workers
        wait_for(lambda: all(r["seq"] is not None for r in web_results(wport).values()), 30, "results of both cameras in the overlay")
        assert set(web_results(wport)) == {"east", "west"}

        before = stage_pids(proc.pid)
        assert {"infer", "infer:1", "web", "ingest:east", "ingest:west"} == set(before), before
        west, seq = frames(port + 1, "west"), web_results(wport)["west"]["seq"]
        os.kill(before["infer"], signal.SIGKILL)
        # worker 0 is replaced (1 s backoff, start-up, model) and east counts again on the new one ...
        wait_for(lambda: stage_pids(proc.pid).get("infer") not in (None, before["infer"]) and frames(port, "east") >= 1, 90,
                 "east counting again on a new worker 0")
        # ... while west went on counting on worker 1 all along, in the metrics and in the overlay
        assert frames(port + 1, "west") >= west + 2 and web_results(wport)["west"]["seq"] > seq
        after = stage_pids(proc.pid)
        assert after["infer:1"] == before["infer:1"] and after["ingest:west"] == before["ingest:west"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
