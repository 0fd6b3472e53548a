"""Config: defaults and overrides, every kind of bad value names its key, env, repo file."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from crowdwatch.config import (
    Config,
    ConfigError,
    deep_merge,
    load_config,
    parse_config,
    parse_duration,
    parse_size,
)

REPO = Path(__file__).resolve().parents[1]

CAL = {"image": [[0, 470], [640, 470], [420, 180], [220, 180]], "ground": [[-5, 0], [5, 0], [5, 20], [-5, 20]]}


def base() -> dict[str, Any]:
    return {
        "defaults": {"fps": 2, "thresholds": {"people": 100, "close_pairs": 5}, "adapt": {"interval": "12h"}},
        "cameras": {
            "lobby": {"url": "rtsp://cam.local:554/s1", "thresholds": {"people": 40}, "calibration": copy.deepcopy(CAL)},
            "yard": {"url": "synthetic://?people=10", "fps": 0.5, "adapt": {"daily": "03:30"}},
        },
    }


def parse(data: dict[str, Any], tmp_path: Path, environ: dict[str, str] | None = None) -> Config:
    return parse_config(data, "test.toml", base_dir=tmp_path, environ=environ or {})


def test_repo_config_loads_out_of_the_box() -> None:
    cfg = load_config(REPO / "config.toml", environ={})
    assert set(cfg.cameras) >= {"plaza", "concourse"}
    assert all(c.source_kind == "synthetic" for c in cfg.cameras.values())
    assert cfg.server.metrics_host == cfg.server.web_host == "127.0.0.1"
    assert cfg.server.liveness_timeout_s == 120
    assert cfg.model.backend == "onnxruntime" and cfg.model.providers == ("CPUExecutionProvider",)
    assert cfg.transport.frames.startswith("ipc://") and cfg.transport.frame_encoding == "rgb24"
    plaza, concourse = cfg.cameras["plaza"], cfg.cameras["concourse"]
    assert plaza.calibration is not None and len(plaza.zones) == 2
    assert plaza.synthetic_options == {"people": "60", "style": "day"}
    assert "ramp" in concourse.synthetic_options
    assert concourse.thresholds.people < plaza.thresholds.people
    assert concourse.adapt.daily == (3, 0) and concourse.adapt.interval_s is None
    for cam in cfg.cameras.values():
        assert cam.width % 32 == 0 and cam.height % 32 == 0 and 1 <= cam.fps <= 2


def test_defaults_and_overrides_merge(tmp_path: Path) -> None:
    cfg = parse(base(), tmp_path)
    lobby, yard = cfg.cameras["lobby"], cfg.cameras["yard"]
    assert lobby.fps == 2.0 and yard.fps == 0.5
    # Nested tables merge key by key: people overridden, close_pairs inherited.
    assert lobby.thresholds.people == 40 and lobby.thresholds.close_pairs == 5
    assert yard.thresholds.people == 100
    # Built-in defaults fill the rest.
    assert lobby.thresholds.density_per_m2 == 4.0 and lobby.distance_m == 1.5
    assert lobby.adapt.interval_s == 12 * 3600 and lobby.adapt.daily is None
    # Setting `daily` replaces the inherited `interval`.
    assert yard.adapt.daily == (3, 30) and yard.adapt.interval_s is None
    assert lobby.calibration is not None and yard.calibration is None
    assert lobby.source_kind == "rtsp" and yard.source_kind == "synthetic"


def test_deep_merge_does_not_mutate_inputs() -> None:
    a = {"t": {"x": 1, "y": 2}, "l": [1]}
    b = {"t": {"y": 3}, "z": 4}
    assert deep_merge(a, b) == {"t": {"x": 1, "y": 3}, "l": [1], "z": 4}
    assert a == {"t": {"x": 1, "y": 2}, "l": [1]}


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value


@pytest.mark.parametrize(
    ("key", "value", "path", "expected"),
    [
        ("cameras.lobby.fps", "fast", "cameras.lobby.fps", "a number"),
        ("cameras.lobby.fps", 0, "cameras.lobby.fps", "in (0, 60]"),
        ("cameras.lobby.fps", True, "cameras.lobby.fps", "a number"),
        ("cameras.lobby.width", 650, "cameras.lobby.width", "multiple of 32"),
        ("cameras.lobby.height", 480.0, "cameras.lobby.height", "an integer"),
        ("cameras.lobby.url", "ftp://x/y", "cameras.lobby.url", "source URL"),
        ("cameras.lobby.url", "rtsp://:554/x", "cameras.lobby.url", "missing host"),
        ("cameras.lobby.url", "synthetic://?people=1&people=2", "cameras.lobby.url", "distinct"),
        ("cameras.lobby.loop", "yes", "cameras.lobby.loop", "true or false"),
        ("cameras.lobby.distance_m", -1, "cameras.lobby.distance_m", "in (0, 100]"),
        ("cameras.lobby.zones.door", [[0, 0], [1, 1]], "cameras.lobby.zones.door", "at least 3"),
        ("cameras.lobby.zones.door", [[0, 0], [1, 1], [2, 2]], "cameras.lobby.zones.door", "non-zero area"),
        ("cameras.lobby.zones.door", [[0, 0], [1, "a"], [2, 0]], "cameras.lobby.zones.door[1]", "[x, y] pair"),
        ("cameras.lobby.zones.Door", [[0, 0], [1, 0], [1, 1]], "cameras.lobby.zones.Door", "zone name"),
        ("cameras.lobby.calibration.ground", [[0, 0], [1, 0], [1, 1]], "cameras.lobby.calibration.ground", "at least 4"),
        ("cameras.lobby.calibration.image", [[0, 0], [1, 0], [2, 0], [3, 0]], "cameras.lobby.calibration", "collinear"),
        ("cameras.lobby.calibration.max_cell_area_m2", 0, "cameras.lobby.calibration.max_cell_area_m2", "(0, inf]"),
        ("cameras.lobby.thresholds.area_over_density_ratio", 1.5, "cameras.lobby.thresholds.area_over_density_ratio", "[0, 1]"),
        ("cameras.lobby.thresholds.latency_p95", True, "cameras.lobby.thresholds.latency_p95", "duration string"),
        ("cameras.lobby.thresholds.latency_p95", -2, "cameras.lobby.thresholds.latency_p95", "a duration above 0s"),
        ("cameras.lobby.thresholds.stall", "soon", "cameras.lobby.thresholds.stall", "duration string"),
        ("cameras.lobby.adapt.daily", "25:00", "cameras.lobby.adapt.daily", "HH:MM"),
        ("cameras.lobby.adapt.interval", "10s", "cameras.lobby.adapt.interval", "at least 60s"),
        ("cameras.lobby.adapt.uncertainty_trigger.for", "1x", "cameras.lobby.adapt.uncertainty_trigger.for", "duration"),
        ("cameras.lobby.buffer.max_bytes", "lots", "cameras.lobby.buffer.max_bytes", "size"),
        ("cameras.lobby.buffer.max_frames", 0, "cameras.lobby.buffer.max_frames", "an integer in [1,"),
        ("cameras.lobby.buffer.dedup_threshold", 300, "cameras.lobby.buffer.dedup_threshold", "[0, 255]"),
        ("cameras.lobby.thresholds", 5, "cameras.lobby.thresholds", "a table"),
        ("defaults.fps", 100, "defaults.fps", "in (0, 60]"),
        ("defaults.url", "rtsp://x/y", "defaults.url", "no url in [defaults]"),
        ("server.metrics_port", 70000, "server.metrics_port", "[1, 65535]"),
        ("server.metrics_port", 0, "server.metrics_port", "a fixed port in [1, 65535]"),
        ("server.web_port", 9108, "server.web_port", "a port no other server of this config listens on (server.metrics_port is"),
        ("cameras.lobby.url", "synthetic://?people=-1", "cameras.lobby.url", "people in 0..2000"),
        ("cameras.lobby.url", "synthetic://?style=noir", "cameras.lobby.url", "a style from day,"),
        ("cameras.lobby.url", "synthetic://?colour=red", "cameras.lobby.url", "options from people,"),
        ("cameras.lobby.url", "synthetic://?ramp=0:10", "cameras.lobby.url", "ramp=START:END:SECONDS"),
        ("cameras.lobby.url", "synthetic://?size=32x32", "cameras.lobby.url", "each side in 64..4096"),
        ("cameras.lobby.zones.door", [[0, 0], [10, 10], [10, 0], [0, 10]], "cameras.lobby.zones.door", "edges do not cross"),
        ("cameras.lobby.zones.door", [[0, 0], [-5, 0], [10, 10]], "cameras.lobby.zones.door[1]", "(pixel coordinates are not negative)"),
        ("cameras.yard.zones.door", [[0, 0], [700, 0], [10, 10]], "cameras.yard.zones.door[1]", "inside the camera's 640x480 frame"),
        ("cameras.yard.url", "synthetic://?size=320x240", "cameras.yard.zones.all[1]", "inside the camera's 320x240 frame"),
        ("server.web_host", "", "server.web_host", "host"),
        ("server.infer_workers", 0, "server.infer_workers", "an integer in [1, 64]"),
        ("cameras.lobby.shard", 1, "cameras.lobby.shard", "a shard in 0..0 ([server] infer_workers = 1)"),
        ("cameras.lobby.shard", -1, "cameras.lobby.shard", "an integer in [0, 63]"),
        ("server.liveness_timeout", "500ms", "server.liveness_timeout", "at least"),
        ("cameras.lobby.adapt.time_budget", "7h", "cameras.lobby.adapt.time_budget", "shorter than adapt.timeout (21600 s)"),
        ("cameras.lobby.adapt.time_budget", "1m", "cameras.lobby.adapt.time_budget", "at least"),
        ("transport.frames", "tcp://host", "transport.frames", "tcp://HOST:PORT"),
        ("transport.frames", "inproc://x", "transport.frames", "ipc://PATH"),
        ("transport.frames", "ipc:///" + "x" * 120, "transport.frames", "at most 107 bytes"),
        ("transport.results", "tcp://a:1", "transport.results", "different endpoint"),
        ("transport.jpeg_quality", 101, "transport.jpeg_quality", "[0, 100]"),
        ("transport.hwm", 0, "transport.hwm", "[1, 10000]"),
        ("transport.max_frame_age", "0s", "transport.max_frame_age", "a duration above 0"),
        ("transport.curve.enabled", True, "transport.curve.enabled", "only with tcp://"),
        ("transport.curve.server_secret_env", "not a name", "transport.curve.server_secret_env", "variable name"),
        ("model.backend", "tensorrt", "model.backend", "onnxruntime, torch"),
        ("model.providers", [], "model.providers", "non-empty list"),
        ("model.max_batch", 0, "model.max_batch", "[1, 256]"),
        ("model.torch_device", "gpu", "model.torch_device", '"cuda:N"'),
    ],
)
def test_bad_values_name_their_key(tmp_path: Path, key: str, value: Any, path: str, expected: str) -> None:
    data = base()
    if key == "transport.results":
        data["transport"] = {"frames": "tcp://a:1"}
    if key == "cameras.yard.url":  # a zone that fits the default frame, not the one the URL renders
        data["cameras"]["yard"]["zones"] = {"all": [[0, 0], [600, 0], [600, 400]]}
    _set(data, key, value)
    with pytest.raises(ConfigError) as info:
        parse(data, tmp_path)
    err = info.value
    assert err.path == path, str(err)
    assert expected in str(err)
    assert str(err).startswith(f"test.toml: {path}: expected ")
    assert "found" in str(err)


@pytest.mark.parametrize(
    ("key", "path", "hint"),
    [
        ("cameras.lobby.fsp", "cameras.lobby.fsp", "did you mean 'fps'"),
        ("cameras.lobby.thresholds.peple", "cameras.lobby.thresholds.peple", "did you mean 'people'"),
        ("server.metric_port", "server.metric_port", "did you mean 'metrics_port'"),
        ("defaults.adapt.intervall", "defaults.adapt.intervall", "did you mean 'interval'"),
        ("camera", "camera", "did you mean 'cameras'"),
    ],
)
def test_unknown_keys_are_errors(tmp_path: Path, key: str, path: str, hint: str) -> None:
    data = base()
    _set(data, key, 1)
    with pytest.raises(ConfigError) as info:
        parse(data, tmp_path)
    assert info.value.path == path
    assert hint in str(info.value) and "unknown key" in str(info.value)


def test_structural_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cameras: expected at least one"):
        parse({"cameras": {}}, tmp_path)
    with pytest.raises(ConfigError, match=r"cameras\.Lobby: expected a camera name"):
        parse({"cameras": {"Lobby": {"url": "synthetic://"}}}, tmp_path)
    with pytest.raises(ConfigError, match=r"cameras\.x\.url: expected this key to be set"):
        parse({"cameras": {"x": {}}}, tmp_path)
    data = base()
    data["cameras"]["yard"]["adapt"] = {"daily": "03:00", "interval": "1h"}
    with pytest.raises(ConfigError, match=r"cameras\.yard\.adapt\.daily: expected either"):
        parse(data, tmp_path)


def test_env_expansion_and_secrets_stay_out_of_errors(tmp_path: Path) -> None:
    data = base()
    data["cameras"]["lobby"]["url"] = "rtsp://viewer:${CAM_PASS}@cam.local:554/s1"
    data["paths"] = {"var": "${DATA}/var"}
    cfg = parse(data, tmp_path, {"CAM_PASS": "s3cret", "DATA": "/srv/cw"})
    lobby = cfg.cameras["lobby"]
    assert lobby.url == "rtsp://viewer:s3cret@cam.local:554/s1"
    assert lobby.redacted_url() == "rtsp://viewer:***@cam.local:554/s1"
    assert cfg.paths.var == Path("/srv/cw/var") and cfg.paths.run == Path("/srv/cw/var/run")

    with pytest.raises(ConfigError) as info:
        parse(data, tmp_path, {"DATA": "/srv"})
    assert info.value.path == "cameras.lobby.url"
    assert "CAM_PASS" in str(info.value)

    # A bad expanded value is reported with the unexpanded text, never the secret.
    data["cameras"]["lobby"]["url"] = "${CAM_URL}"
    with pytest.raises(ConfigError) as info:
        parse(data, tmp_path, {"CAM_URL": "ftp://viewer:s3cret@x/y", "DATA": "/srv"})
    assert "s3cret" not in str(info.value) and "${CAM_URL}" in str(info.value)

    data["cameras"]["lobby"]["url"] = "rtsp://cam.local/a$$b"
    assert parse(data, tmp_path, {"DATA": "/srv"}).cameras["lobby"].url == "rtsp://cam.local/a$b"


def test_durations_and_sizes() -> None:
    assert parse_duration("90s") == 90 and parse_duration("5m") == 300 and parse_duration("24h") == 86400
    assert parse_duration("500ms") == 0.5 and parse_duration("1.5h") == 5400 and parse_duration("7d") == 7 * 86400
    assert parse_size("2GiB") == 2 * 1024**3 and parse_size("500MB") == 500 * 10**6 and parse_size(1234) == 1234
    for bad in ("90", "5 minutes", "", "-1s", "1y"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    for bad in ("2 GiBs", "x", True):
        with pytest.raises(ValueError):
            parse_size(bad)  # type: ignore[arg-type]


def test_paths_and_endpoints_are_anchored_to_the_config_file(tmp_path: Path) -> None:
    data = base()
    data["cameras"]["clip"] = {"url": "videos/clip.mp4"}
    data["cameras"]["abs"] = {"url": "file:///data/a.mkv"}
    data["transport"] = {"frames": "ipc://sock/frames", "frames_bind": "ipc://sock/frames"}
    cfg = parse(data, tmp_path)
    assert cfg.cameras["clip"].file_path == tmp_path / "videos/clip.mp4"
    assert cfg.cameras["clip"].source_kind == "file"
    assert cfg.cameras["abs"].file_path == Path("/data/a.mkv")
    assert cfg.transport.frames == f"ipc://{tmp_path}/sock/frames"
    assert cfg.transport.results == f"ipc://{tmp_path}/var/run/results.ipc"
    assert cfg.model.registry == tmp_path / "models"
    assert cfg.paths.buffer_dir("lobby") == tmp_path / "var/buffer/lobby"


def test_tcp_transport_uses_jpeg_and_separate_bind(tmp_path: Path) -> None:
    data = base()
    data["transport"] = {
        "frames": "tcp://infer-host:5555",
        "frames_bind": "tcp://0.0.0.0:5555",
        "results": "tcp://infer-host:5556",
    }
    t = parse(data, tmp_path).transport
    assert t.frame_encoding == "jpeg" and t.frames_bind == "tcp://0.0.0.0:5555"
    assert t.results_bind == t.results
    assert t.curve.enabled and t.curve_on  # CURVE is the default for tcp:// (tests/test_curve.py)


def test_cameras_split_over_infer_workers_stably(tmp_path: Path) -> None:
    from crowdwatch.config.shards import rendezvous

    data = base()
    data["cameras"] = {f"cam{i}": {"url": "synthetic://"} for i in range(40)}
    data["cameras"]["cam0"]["shard"] = 2
    data["server"] = {"infer_workers": 3}
    cfg = parse(data, tmp_path)
    shards = {name: cfg.shard_of(name) for name in cfg.cameras}
    assert shards["cam0"] == 2 and sorted(set(shards.values())) == [0, 1, 2]
    assert sorted(sum((cfg.shard_cameras(s) for s in range(3)), [])) == sorted(cfg.cameras)
    assert parse(data, tmp_path).shard_of("cam7") == shards["cam7"]  # the same on every load and machine
    # a fourth worker takes cameras only for itself: no camera moves between the first three
    moved = {n for n in cfg.cameras if n != "cam0" and rendezvous(n, 4) != shards[n]}
    assert moved and all(rendezvous(n, 4) == 3 for n in moved) and len(moved) < 20
    # ipc endpoints: worker 0 keeps the one-worker names, the others get -N
    assert cfg.endpoint("frames", 0) == f"ipc://{tmp_path}/var/run/frames.ipc"
    assert cfg.endpoint("frames_bind", 2) == f"ipc://{tmp_path}/var/run/frames-2.ipc"
    assert cfg.results_endpoints() == [f"ipc://{tmp_path}/var/run/results{s}.ipc" for s in ("", "-1", "-2")]
    assert cfg.server.listeners()[:3] == [("metrics_port", "127.0.0.1", 9108), ("metrics_port of infer worker 1", "127.0.0.1", 9109),
                                          ("metrics_port of infer worker 2", "127.0.0.1", 9110)]


def test_tcp_endpoints_of_several_workers_name_the_shard(tmp_path: Path) -> None:
    data = base()
    data["server"] = {"infer_workers": 2}
    data["transport"] = {"frames": "tcp://infer:5555", "results": "tcp://infer:5556+{shard}"}
    with pytest.raises(ConfigError, match=r"transport\.frames: expected a tcp endpoint with \{shard\} in it"):
        parse(data, tmp_path)
    # Kubernetes: one pod per worker, each binding the same port on its own address
    data["transport"] = {"frames": "tcp://crowdwatch-infer-{shard}.crowdwatch-infer:5555", "frames_bind": "tcp://0.0.0.0:5555",
                         "results": "tcp://crowdwatch-infer-{shard}.crowdwatch-infer:5556", "results_bind": "tcp://0.0.0.0:5556"}
    cfg = parse(data, tmp_path)
    assert cfg.endpoint("frames", 1) == "tcp://crowdwatch-infer-1.crowdwatch-infer:5555"
    assert cfg.endpoint("frames_bind", 1) == "tcp://0.0.0.0:5555"
    # one host: BASE+{shard} ports, checked against each other for every worker
    data["transport"] = {"frames": "tcp://127.0.0.1:5555+{shard}", "results": "tcp://127.0.0.1:5565+{shard}"}
    assert parse(data, tmp_path).endpoint("results_bind", 1) == "tcp://127.0.0.1:5566"
    data["transport"]["results"] = "tcp://127.0.0.1:5556+{shard}"
    with pytest.raises(ConfigError, match=r"transport\.results_bind: .*frames_bind of infer worker 1 is 127\.0\.0\.1:5556"):
        parse(data, tmp_path)
    data["server"] = {"infer_workers": 2, "web_port": 9109}
    data["transport"] = {}
    with pytest.raises(ConfigError, match=r"server\.web_port: .*metrics_port of infer worker 1 is 127\.0\.0\.1:9109"):
        parse(data, tmp_path)


def test_stage_inputs_are_each_stages_part_of_the_config(tmp_path: Path) -> None:
    from crowdwatch.config.shards import stage_inputs

    data = base()
    data["server"] = {"infer_workers": 2}
    data["cameras"]["lobby"]["shard"], data["cameras"]["yard"]["shard"] = 0, 1
    old = parse(data, tmp_path)
    changed = lambda new: {s for s in ("infer", "infer:1", "web", "ingest:lobby", "ingest:yard") if stage_inputs(old, s) != stage_inputs(new, s)}
    data["cameras"]["yard"]["fps"] = 1
    assert changed(parse(data, tmp_path)) == {"infer:1", "web", "ingest:yard"}
    data["cameras"]["yard"]["shard"] = 0  # moves: its ingest and both workers
    assert changed(parse(data, tmp_path)) == {"infer", "infer:1", "web", "ingest:yard"}
    data["cameras"]["yard"] = copy.deepcopy(base()["cameras"]["yard"]) | {"shard": 1}
    data["model"] = {"max_batch": 4}
    assert changed(parse(data, tmp_path)) == {"infer", "infer:1"}
    data["model"], data["server"]["stall_restart"], data["log"] = {}, "10s", {"level": "DEBUG"}
    assert changed(parse(data, tmp_path)) == set()  # the supervisor's own settings


def test_load_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no file at"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[cameras.x\nurl = 1\n")
    with pytest.raises(ConfigError, match="valid TOML"):
        load_config(bad)
    good = tmp_path / "good.toml"
    good.write_text('[cameras.x]\nurl = "synthetic://"\nfps = "1"\n')
    with pytest.raises(ConfigError, match=r"good\.toml: cameras\.x\.fps: expected a number, found '1'"):
        load_config(good)


def test_config_is_immutable(tmp_path: Path) -> None:
    cfg = parse(base(), tmp_path)
    with pytest.raises(AttributeError):
        cfg.cameras["lobby"].fps = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.cameras["new"] = cfg.cameras["lobby"]  # type: ignore[index]


def test_adaptation_gate_options_per_camera(tmp_path: Path) -> None:
    data = base()
    from adapt.commands.adapt import build_config, build_parser
    from adapt.selfsup.adaptation import AdaptConfig
    from adapt.selfsup.gate import GateConfig

    gate = {"per_person_uncertainty": True, "min_count_ratio": 0.4, "max_count_ratio": 3}
    data["cameras"]["lobby"]["adapt"] = {"labels": "labels/lobby", "keep_count": False, "gate": gate}
    cfg = parse(data, tmp_path)
    lobby, yard = cfg.cameras["lobby"].adapt, cfg.cameras["yard"].adapt
    assert lobby.labels == tmp_path / "labels" / "lobby" and lobby.per_person_uncertainty and not lobby.keep_count
    # what the camera's config says is what `crowdwatch adapt --camera lobby` runs with
    run = build_config(build_parser().parse_args(["--camera", "lobby"]), cfg)
    assert (run.labels, run.gate.min_count_ratio, run.gate.max_count_ratio, run.gate.per_person_uncertainty, run.keep_count) == (
        tmp_path / "labels" / "lobby", 0.4, 3.0, True, False)
    # a camera without overrides runs with the defaults, which the pipeline's dataclasses take from the config model
    run = build_config(build_parser().parse_args(["--camera", "yard"]), cfg)
    assert yard.labels is None and run.labels is None and yard.keep_count == run.keep_count == AdaptConfig.keep_count
    d = GateConfig()
    assert (yard.min_count_ratio, yard.max_count_ratio, yard.per_person_uncertainty) == (d.min_count_ratio, d.max_count_ratio, d.per_person_uncertainty)
    assert run.gate == d
    for key, bad in (("per_person_uncertainty", "no"), ("min_count_ratio", 1.2), ("max_count_ratio", 0.9)):
        data["cameras"]["lobby"]["adapt"]["gate"] = {key: bad}
        with pytest.raises(ConfigError, match=f"cameras.lobby.adapt.gate.{key}"):
            parse(data, tmp_path)


# --------------------------------------------------------------------------- crowdwatch.config additions


@pytest.mark.parametrize("url", ["rtsp//host/stream", "rtsp:/host/stream", "http:host/x", "file:clip.mp4", "rtsps//cam/s1"])
def test_url_with_a_scheme_but_no_colon_slash_slash_is_an_error(tmp_path: Path, url: str) -> None:
    data = base()
    data["cameras"]["lobby"]["url"] = url
    with pytest.raises(ConfigError) as info:
        parse(data, tmp_path)
    assert info.value.path == "cameras.lobby.url" and "'://'" in str(info.value)


def test_plain_paths_stay_file_sources(tmp_path: Path) -> None:
    data = base()
    for name, url in (("clip", "videos/clip.mp4"), ("dot", "./rtsp/clip.mp4"), ("bare", "clip.mp4")):
        data["cameras"][name] = {"url": url}
    cfg = parse(data, tmp_path)
    assert cfg.cameras["dot"].file_path == tmp_path / "rtsp/clip.mp4"
    assert all(cfg.cameras[n].source_kind == "file" for n in ("clip", "dot", "bare"))


@pytest.mark.parametrize(("written", "seconds"), [("24h", 86400.0), (86400, 86400.0), (86400.0, 86400.0), ("90m", 5400.0), (3600, 3600.0)])
def test_durations_accept_strings_and_seconds(tmp_path: Path, written: Any, seconds: float) -> None:
    data = base()
    data["cameras"]["lobby"]["adapt"] = {"interval": written, "max_age": written}
    data["cameras"]["lobby"]["thresholds"]["stall"] = written
    data["cameras"]["lobby"]["buffer"] = {"min_interval_s": written}
    data["server"] = {"liveness_timeout": written}
    cfg = parse(data, tmp_path)
    lobby = cfg.cameras["lobby"]
    assert lobby.adapt.interval_s == lobby.adapt.max_age_s == lobby.thresholds.stall_s == seconds
    assert lobby.buffer.min_interval_s == seconds and cfg.server.liveness_timeout_s == seconds


def test_sizes_accept_bytes_and_strings(tmp_path: Path) -> None:
    data = base()
    data["defaults"]["buffer"] = {"max_bytes": "512MiB", "min_free_bytes": 2 * 1024**2}
    cam = parse(data, tmp_path).cameras["lobby"]
    assert cam.buffer.max_bytes == 512 * 1024**2 and cam.buffer.min_free_bytes == 2 * 1024**2


def test_defaults_deep_merge_into_every_camera(tmp_path: Path) -> None:
    data = base()
    data["defaults"]["buffer"] = {"max_frames": 500, "retention_days": 3}
    data["defaults"]["adapt"]["gate"] = {"min_count_ratio": 0.5}
    data["cameras"]["yard"]["buffer"] = {"max_frames": 100}
    data["cameras"]["yard"]["adapt"]["gate"] = {"max_count_ratio": 2}
    data["defaults"]["zones"] = {"all": [[0, 0], [100, 0], [100, 100]]}
    data["cameras"]["lobby"]["zones"] = {"door": [[0, 0], [10, 0], [10, 10]]}
    cfg = parse(data, tmp_path)
    lobby, yard = cfg.cameras["lobby"], cfg.cameras["yard"]
    assert (lobby.buffer.max_frames, lobby.buffer.retention_days) == (500, 3)
    assert (yard.buffer.max_frames, yard.buffer.retention_days) == (100, 3)
    assert yard.adapt.min_count_ratio == 0.5 and yard.adapt.max_count_ratio == 2 and yard.adapt.daily == (3, 30)
    assert lobby.adapt.min_count_ratio == 0.5 and lobby.adapt.max_count_ratio == 1.5
    assert set(lobby.zones) == {"all", "door"} and set(yard.zones) == {"all"}
    assert lobby.name == "lobby" and yard.name == "yard"
    # [defaults] is validated on its own: a bad default names defaults.KEY
    data["defaults"]["buffer"]["max_frames"] = 0
    with pytest.raises(ConfigError) as info:
        parse(data, tmp_path)
    assert info.value.path == "defaults.buffer.max_frames"


def test_config_schema_is_json_with_described_camera_fields(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from streamer.cli import main

    assert main(["config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert set(schema["properties"]) == {"server", "paths", "transport", "model", "log", "defaults", "cameras"}
    camera = schema["$defs"]["CameraConfig"]
    assert camera["additionalProperties"] is False and camera["required"] == ["url"]
    for key in ("url", "fps", "width", "zones", "calibration", "thresholds", "adapt", "buffer"):
        assert camera["properties"][key]["description"], key
    adapt = schema["$defs"]["AdaptConfig"]["properties"]
    assert {"interval", "daily", "keep_count", "labels", "gate"} <= set(adapt)
    assert all(p.get("description") for p in schema["$defs"]["BufferSettings"]["properties"].values())


def test_config_check_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from streamer.cli import main

    assert main(["config", "check", "--config", str(REPO / "config.toml")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4 and out[1].strip().startswith("plaza: synthetic") and "concourse" in out[2]
    assert out[3] == "  transport: ipc:// (file permissions)"
    bad = tmp_path / "bad.toml"
    bad.write_text('[cameras.lobby]\nurl = "rtsp//cam/stream"\n')
    assert main(["config", "check", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cameras.lobby.url" in err[0]
    assert main(["config", "check", "--config", str(tmp_path / "missing.toml")]) == 2


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from streamer.cli import main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("crowdwatch ")


def test_config_package_imports_neither_stage() -> None:
    import ast

    for path in (REPO / "crowdwatch").rglob("*.py"):
        if "commands" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] in ("streamer", "adapt") for n in names), path


def test_scheme_typo_error_keeps_secrets_out(tmp_path: Path) -> None:
    data = base()
    data["cameras"]["lobby"]["url"] = "${CAM_URL}"
    with pytest.raises(ConfigError) as info:
        parse(data, tmp_path, {"CAM_URL": "rtsp//viewer:s3cret@cam/s1"})
    assert "s3cret" not in str(info.value) and "${CAM_URL}" in str(info.value)


# --------------------------------------------------------------------------- misconfiguration caught at load (issue 19)


@pytest.mark.parametrize(
    ("server", "transport", "path", "other"),
    [
        ({"web_host": "0.0.0.0", "web_port": 9108}, {}, "server.web_port", "server.metrics_port"),        # a wildcard takes every address
        ({"metrics_host": "localhost", "web_port": 9108}, {}, "server.web_port", "server.metrics_port"),  # localhost is 127.0.0.1
        ({}, {"frames_bind": "tcp://*:8080"}, "transport.frames_bind", "server.web_port"),
        ({"metrics_host": "10.0.0.5"}, {"results_bind": "tcp://10.0.0.5:9108"}, "transport.results_bind", "server.metrics_port"),
        ({}, {"frames_bind": "tcp://0.0.0.0:5555", "results_bind": "tcp://*:5555"}, "transport.results_bind", "transport.frames_bind"),
    ],
)
def test_two_servers_on_one_address_are_an_error(tmp_path: Path, server: dict, transport: dict, path: str, other: str) -> None:
    data = base()
    data["server"] = server
    data["transport"] = {"frames": "tcp://infer:5555", "results": "tcp://infer:5556", **transport}
    with pytest.raises(ConfigError) as info:
        parse(data, tmp_path)
    assert info.value.path == path and f"({other} is " in str(info.value) and "found" in str(info.value), str(info.value)


def test_one_port_on_two_addresses_is_fine(tmp_path: Path) -> None:
    data = base()
    data["server"] = {"metrics_host": "10.0.0.5", "web_host": "10.0.0.6", "web_port": 9108}
    data["transport"] = {"frames": "tcp://infer:5555", "frames_bind": "tcp://127.0.0.1:8080", "results": "tcp://infer:5556"}
    cfg = parse(data, tmp_path)
    assert cfg.server.web_port == cfg.server.metrics_port == 9108


def _site(tmp_path: Path, **model: Any) -> dict[str, Any]:
    """A config whose registry serves every camera from base, with one camera per source kind."""
    from adapt.store.registry import BASE, Registry

    if not (tmp_path / "models").exists():
        (tmp_path / "m.pt").write_bytes(b"checkpoint")
        Registry(tmp_path / "models").publish(BASE, {"model.pt": tmp_path / "m.pt"}, {}, "b1")
        (tmp_path / "clip.mp4").write_bytes(b"")
    return {"model": {"providers": ["CPUExecutionProvider"], **model},
            "cameras": {"lobby": {"url": "rtsp://cam.local/s1"}, "yard": {"url": "synthetic://"}, "clip": {"url": "clip.mp4"}}}


def test_a_complete_site_loads_without_warnings(tmp_path: Path) -> None:
    assert parse(_site(tmp_path), tmp_path).warnings == ()


def test_a_missing_camera_file_is_a_warning_not_an_error(tmp_path: Path) -> None:
    # ingest keeps such a camera down and retries (tests/test_supervisor.py), so the file may come later
    data = _site(tmp_path)
    data["cameras"]["gone"] = {"url": "videos/gone.mp4"}
    (w,) = parse(data, tmp_path).warnings
    assert not w.serving and w.path == "cameras.gone.url"
    assert str(w) == (f"test.toml: cameras.gone.url: expected an existing video file (until there is one, the camera stays down "
                      f"and its ingest retries), found no file at {tmp_path / 'videos/gone.mp4'}")


def test_a_missing_registry_or_model_is_a_serving_warning(tmp_path: Path) -> None:
    data = _site(tmp_path, registry="nowhere")
    (w,) = parse(data, tmp_path).warnings
    assert w.serving and w.path == "model.registry" and f"found no folder at {tmp_path / 'nowhere'}" in str(w)
    data = _site(tmp_path)
    (tmp_path / "models" / "base" / "current").unlink()
    (w,) = parse(data, tmp_path).warnings
    assert w.serving and w.path == "model.registry"
    assert "expected a current model for every camera" in str(w) and "found none for lobby, yard, clip in" in str(w)
    # a camera with a model of its own needs no base
    (tmp_path / "models" / "base" / "current").write_text("b1\n")
    data["cameras"] = {"lobby": {"url": "rtsp://cam.local/s1"}}
    assert parse(data, tmp_path).warnings == ()


def test_a_camera_pointer_naming_no_version_is_a_warning(tmp_path: Path) -> None:
    # at run time its last good version or the base model serves it (tests/test_hot_swap.py), so infer still starts
    data = _site(tmp_path)
    (tmp_path / "models" / "lobby").mkdir()
    (tmp_path / "models" / "lobby" / "current").write_text("v9-missing\n")
    (w,) = parse(data, tmp_path).warnings
    assert not w.serving and w.path == "model.registry" and "lobby/current names none" in str(w)


def test_cuda_only_on_a_machine_without_a_gpu_is_a_serving_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import crowdwatch.config.model as model

    monkeypatch.setattr(model, "gpu_present", lambda: False)
    (w,) = parse(_site(tmp_path, providers=["CUDAExecutionProvider"]), tmp_path).warnings
    assert w.serving and w.path == "model.providers"
    assert "expected at least one provider this machine can run (" in str(w) and "found ['CUDAExecutionProvider']" in str(w)
    assert "CUDAExecutionProvider," not in str(w).split("found")[0]
    # CPU after CUDA falls back at run time: nothing to say
    assert parse(_site(tmp_path, providers=["CUDAExecutionProvider", "CPUExecutionProvider"]), tmp_path).warnings == ()
    (w,) = parse(_site(tmp_path, backend="torch", torch_device="cuda:0"), tmp_path).warnings
    assert w.serving and w.path == "model.torch_device" and "found 'cuda:0'" in str(w)
    assert parse(_site(tmp_path, backend="torch", torch_device="auto"), tmp_path).warnings == ()


def test_config_check_prints_warnings_and_succeeds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from streamer.cli import main

    cfg = tmp_path / "config.toml"
    cfg.write_text('[model]\nregistry = "nowhere"\n[cameras.gone]\nurl = "gone.mp4"\n')
    assert main(["config", "check", "--config", str(cfg)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == f"{cfg}: 1 cameras"
    lines = err.splitlines()
    assert len(lines) == 2 and all(ln.startswith(f"crowdwatch config: warning: {cfg}: ") for ln in lines)
    assert "model.registry" in lines[0] and lines[0].endswith("(crowdwatch run and infer refuse to start)")
    assert "cameras.gone.url" in lines[1] and "refuse" not in lines[1]


def test_infer_refuses_a_serving_warning_at_load(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import crowdwatch.config.model as model
    from streamer.infer import main

    monkeypatch.setattr(model, "gpu_present", lambda: False)
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[log]\nfiles = false\n[model]\nregistry = "{REPO / "models"}"\nproviders = ["CUDAExecutionProvider"]\n'
                   '[cameras.a]\nurl = "synthetic://"\n')
    assert main(["--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"crowdwatch infer: {cfg}: model.providers: expected at least one provider"), err
