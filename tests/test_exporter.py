"""Exporter: scrape a real server on an ephemeral port and check names, labels and values."""

from __future__ import annotations

import math
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from crowdwatch.config import parse_config
from crowdwatch.fit import Fit
from crowdwatch.result import Figures, Result
from crowdwatch.wire import AdaptationRun
from streamer.exporter import Metrics, MetricsServer

DESIGN_NAMES = {
    "crowd_people", "crowd_zone_people", "crowd_count_uncertainty", "crowd_density_peak_per_m2",
    "crowd_close_pairs", "crowd_area_over_density_ratio", "crowd_people_threshold",
    "crowd_density_threshold_per_m2", "crowd_close_pairs_threshold", "crowd_uncertainty_threshold",
    "crowd_frames", "crowd_frames_dropped", "crowd_camera_up", "crowd_camera_reconnects",
    "crowd_inference_seconds", "crowd_batch_size", "crowd_frame_latency_seconds", "crowd_model_info",
    "crowd_adaptation_runs", "crowd_adaptation_last_success_timestamp_seconds", "crowd_buffer_frames",
    "crowd_frame_latency_threshold_seconds", "crowd_camera_stall_threshold_seconds",
    "crowd_adaptation_max_age_seconds", "crowd_adaptation_failures_threshold",
    "crowd_area_over_density_ratio_threshold", "crowd_last_frame_timestamp_seconds",
}  # fmt: skip


def camera_config(tmp_path: Path, *, adapt_enabled: bool = True):  # type: ignore[no-untyped-def]
    cfg = parse_config(
        {
            "defaults": {"thresholds": {"people": 80, "close_pairs": 12, "latency_p95": "1500ms", "stall": "2m"}},
            "cameras": {"plaza": {"url": "synthetic://", "adapt": {"enabled": adapt_enabled, "max_age": "48h"}}},
        },
        base_dir=tmp_path,
        environ={},
    )
    return cfg.cameras["plaza"]


def result(camera: str = "plaza", *, truth: float | None = None, capture_ns: int = 0, **kw: object) -> Result:
    figures: dict[str, object] = dict(
        count=57.5, zones={"fountain": 12.25, "entrance": 3.0}, uncertainty=2.5, density_peak_per_m2=1.75,
        close_pairs=4.5, area_over_density_ratio=0.125, calibrated=True,
    )  # fmt: skip
    figures.update(kw)
    return Result(camera=camera, seq=1, capture_ns=capture_ns, model_version="v1", figures=Figures(**figures),  # type: ignore[arg-type]
                  fit=Fit.identity(64, 64), truth=truth)  # fmt: skip


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture
def served() -> Iterator[tuple[Metrics, MetricsServer]]:
    metrics = Metrics()
    with MetricsServer(metrics, "127.0.0.1", 0) as server:
        yield metrics, server


def test_crowd_figures_thresholds_and_pipeline_are_exported(served: tuple[Metrics, MetricsServer], tmp_path: Path) -> None:
    metrics, server = served
    assert server.port != 0 and server.url.startswith("http://127.0.0.1:")
    metrics.configure_camera(camera_config(tmp_path), stages=("infer",))
    metrics.observe(result(capture_ns=int(999.5e9), truth=60), now=1000.0)
    metrics.frame("ingest", "plaza", 3)
    metrics.drop("infer", "overflow", "plaza")
    metrics.drop("infer", "bad_json")
    metrics.camera_up("plaza", True)
    metrics.camera_reconnect("plaza")
    metrics.observe_inference(0.04, 3)
    metrics.model_version("plaza", "base-0001")
    metrics.model_version("plaza", "plaza-0002")
    metrics.adaptation_run(AdaptationRun("plaza", 1000.0, "failed"))
    metrics.adaptation_run(AdaptationRun("plaza", 1234.0, "succeeded"))
    metrics.buffer_frames("plaza", 42)

    s = scrape(server.url)
    names = {name for name, _ in s}
    cam = (("camera", "plaza"),)
    for name in DESIGN_NAMES:
        assert any(n == name or n.startswith(name + "_") for n in names), name

    assert s[("crowd_people", cam)] == 57.5
    assert s[("crowd_people_truth", cam)] == 60
    assert s[("crowd_zone_people", (("camera", "plaza"), ("zone", "fountain")))] == 12.25
    assert s[("crowd_zone_people", (("camera", "plaza"), ("zone", "entrance")))] == 3.0
    assert s[("crowd_count_uncertainty", cam)] == 2.5
    assert s[("crowd_density_peak_per_m2", cam)] == 1.75
    assert s[("crowd_close_pairs", cam)] == 4.5
    assert s[("crowd_area_over_density_ratio", cam)] == 0.125
    assert s[("crowd_calibrated", cam)] == 1
    assert s[("crowd_last_frame_timestamp_seconds", cam)] == 1000.0

    assert s[("crowd_people_threshold", cam)] == 80
    assert s[("crowd_close_pairs_threshold", cam)] == 12
    assert s[("crowd_density_threshold_per_m2", cam)] == 4.0
    assert s[("crowd_area_over_density_ratio_threshold", cam)] == 0.1
    assert s[("crowd_uncertainty_threshold", cam)] == 10.0
    assert s[("crowd_frame_latency_threshold_seconds", cam)] == 1.5
    assert s[("crowd_camera_stall_threshold_seconds", cam)] == 120
    assert s[("crowd_adaptation_max_age_seconds", cam)] == 48 * 3600
    assert s[("crowd_adaptation_failures_threshold", cam)] == 0

    assert s[("crowd_frames_total", (("camera", "plaza"), ("stage", "ingest")))] == 3
    assert s[("crowd_frames_total", (("camera", "plaza"), ("stage", "infer")))] == 0  # pre-created
    assert s[("crowd_frames_dropped_total", (("camera", "plaza"), ("reason", "overflow"), ("stage", "infer")))] == 1
    assert s[("crowd_frames_dropped_total", (("camera", ""), ("reason", "bad_json"), ("stage", "infer")))] == 1
    assert s[("crowd_camera_up", cam)] == 1
    assert s[("crowd_camera_reconnects_total", cam)] == 1
    assert s[("crowd_inference_seconds_count", ())] == 1
    assert s[("crowd_batch_size_sum", ())] == 3
    assert s[("crowd_frame_latency_seconds_count", cam)] == 1
    assert s[("crowd_frame_latency_seconds_bucket", (("camera", "plaza"), ("le", "0.5")))] == 1
    assert s[("crowd_frame_latency_seconds_bucket", (("camera", "plaza"), ("le", "0.25")))] == 0
    # Only the current model version is exported.
    assert s[("crowd_model_info", (("camera", "plaza"), ("version", "plaza-0002")))] == 1
    assert ("crowd_model_info", (("camera", "plaza"), ("version", "base-0001"))) not in s
    assert s[("crowd_adaptation_runs_total", (("camera", "plaza"), ("result", "failed")))] == 1
    assert s[("crowd_adaptation_runs_total", (("camera", "plaza"), ("result", "rejected")))] == 0
    assert s[("crowd_adaptation_last_success_timestamp_seconds", cam)] == 1234.0
    assert s[("crowd_buffer_frames", cam)] == 42


def test_missing_figures_are_nan_and_disabled_adaptation_has_no_alert_gauges(tmp_path: Path) -> None:
    metrics = Metrics(process_metrics=False)
    cam = camera_config(tmp_path)
    metrics.configure_camera(cam)
    metrics.observe(result(uncertainty=None, calibrated=False))
    off = camera_config(tmp_path, adapt_enabled=False)
    metrics.configure_camera(off)
    with MetricsServer(metrics, port=0) as server:
        s = scrape(server.url)
    assert math.isnan(s[("crowd_count_uncertainty", (("camera", "plaza"),))])
    assert s[("crowd_calibrated", (("camera", "plaza"),))] == 0
    assert ("crowd_adaptation_max_age_seconds", (("camera", "plaza"),)) not in s
    assert not any(name.startswith("process_") for name, _ in s)


def test_health_and_readiness(served: tuple[Metrics, MetricsServer]) -> None:
    _, server = served
    assert status(server.url + "/healthz") == 200
    assert status(server.url + "/readyz") == 503
    server.set_ready()
    assert status(server.url + "/readyz") == 200
    server.set_ready(False)
    assert status(server.url + "/readyz") == 503
    assert status(server.url + "/nope") == 404


def test_registries_are_independent() -> None:
    a, b = Metrics(process_metrics=False), Metrics(process_metrics=False)
    a.camera_up("plaza", True)
    assert a.registry.get_sample_value("crowd_camera_up", {"camera": "plaza"}) == 1
    assert b.registry.get_sample_value("crowd_camera_up", {"camera": "plaza"}) is None


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.camera_up("Bad Name", True),
        lambda m: m.drop("infer", "Not A Reason", "plaza"),
        lambda m: m.frame("in-fer", "plaza"),
        lambda m: m.adaptation_run(AdaptationRun("plaza", 1.0, "maybe")),  # type: ignore[arg-type]
        lambda m: m.model_version("plaza", ""),
    ],
)
def test_bad_labels_are_programming_errors(call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        call(Metrics(process_metrics=False))


def test_server_stops_and_frees_the_port() -> None:
    server = MetricsServer(Metrics(process_metrics=False), port=0).start()
    url = server.url
    assert status(url + "/healthz") == 200
    server.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "/healthz", timeout=2)


def test_healthz_turns_unhealthy_when_the_loop_stops_beating() -> None:
    server = MetricsServer(Metrics(process_metrics=False), port=0, liveness_timeout_s=0.3).start()
    try:
        assert status(server.url + "/healthz") == 200  # no beat yet: still loading
        server.beat()
        assert status(server.url + "/healthz") == 200
        time.sleep(0.6)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(server.url + "/healthz", timeout=2)
        assert err.value.code == 503
        assert b"stalled" in err.value.read()
        assert status(server.url + "/metrics") == 200  # still scrapeable while unhealthy
        server.beat()
        assert status(server.url + "/healthz") == 200
    finally:
        server.stop()


def test_healthz_without_a_timeout_ignores_beats() -> None:
    server = MetricsServer(Metrics(process_metrics=False), port=0).start()
    try:
        server.beat()
        server._last_beat -= 3600
        assert status(server.url + "/healthz") == 200
    finally:
        server.stop()


CROWD_SERIES = ("crowd_people", "crowd_people_truth", "crowd_count_uncertainty", "crowd_density_peak_per_m2",
                "crowd_close_pairs", "crowd_area_over_density_ratio")  # fmt: skip


def test_a_down_camera_exports_no_crowd_figures_until_results_return(served: tuple[Metrics, MetricsServer], tmp_path: Path) -> None:
    metrics, server = served
    metrics.configure_camera(camera_config(tmp_path), stages=("infer",))
    metrics.camera_up("plaza", True)
    metrics.camera_up("hall", True)
    metrics.observe(result(truth=60, capture_ns=int(999e9)), now=1000.0)
    metrics.observe(result("hall", count=9.0, capture_ns=int(999e9)), now=1000.0)
    cam = (("camera", "plaza"),)
    fountain = (("camera", "plaza"), ("zone", "fountain"))

    metrics.camera_up("plaza", False)
    s = scrape(server.url)
    for name in CROWD_SERIES:
        assert (name, cam) not in s, name
    assert not any(name == "crowd_zone_people" and dict(labels)["camera"] == "plaza" for name, labels in s)
    # the truth about the camera stays: it is down, and when its last frame was
    assert s[("crowd_camera_up", cam)] == 0
    assert s[("crowd_last_frame_timestamp_seconds", cam)] == 1000.0
    assert s[("crowd_people_threshold", cam)] == 80 and s[("crowd_calibrated", cam)] == 1
    # another camera is untouched
    assert s[("crowd_people", (("camera", "hall"),))] == 9.0
    metrics.camera_up("plaza", False)  # idempotent

    metrics.camera_up("plaza", True)
    metrics.observe(result(count=12.0, zones={"fountain": 2.0}, capture_ns=int(1009e9)), now=1010.0)
    s = scrape(server.url)
    assert s[("crowd_people", cam)] == 12.0
    assert s[("crowd_zone_people", fountain)] == 2.0
    assert s[("crowd_close_pairs", cam)] == 4.5
    assert ("crowd_people_truth", cam) not in s  # this frame carried no truth
    assert s[("crowd_last_frame_timestamp_seconds", cam)] == 1010.0
