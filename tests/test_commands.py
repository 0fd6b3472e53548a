"""`--config` on every crowdwatch command, and what `crowdwatch adapt --config C --camera X` builds from it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from crowdwatch.config import load_config
from streamer.cli import COMMANDS
from streamer.cli import main as cli

CONFIG = """
[paths]
var = "data/var"
labels = "data/labels"

[model]
registry = "data/models"

[defaults.buffer]
retention_days = 14

[cameras.lobby]
url = "synthetic://?people=10"

[cameras.lobby.adapt]
keep_count = false
labels = "lobby-labels"
time_budget = "40m"

[cameras.lobby.adapt.gate]
min_count_ratio = 0.5

[cameras.lobby.buffer]
max_frames = 2500
min_free_bytes = 0

[cameras.yard]
url = "synthetic://?people=10"
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "site" / "config.toml"
    path.parent.mkdir()
    path.write_text(CONFIG)
    return path


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_help_lists_config(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = cli([name, "--help"])
    except SystemExit as exc:  # argparse's --help
        code = exc.code
    assert code in (0, None)
    assert "--config" in capsys.readouterr().out


def test_adapt_builds_its_run_from_the_cameras_settings(config_file: Path) -> None:
    from adapt.commands.adapt import build_config, build_parser
    from adapt.selfsup.adaptation import AdaptConfig
    from adapt.selfsup.gate import GateConfig

    site = config_file.parent
    config = load_config(config_file)
    run = build_config(build_parser().parse_args(["--config", str(config_file), "--camera", "lobby"]), config)
    assert run.keep_count is False and AdaptConfig.keep_count is True
    assert run.gate.min_count_ratio == 0.5 and run.gate.max_count_ratio == GateConfig.max_count_ratio
    assert run.labels == site / "lobby-labels"
    assert run.buffer.max_frames == 2500 and run.buffer.retention_days == 14  # [cameras.lobby.buffer] over [defaults.buffer]
    assert (run.registry_root, run.buffer_root) == (site / "data" / "models", site / "data" / "var" / "buffer")
    assert run.scene_root == site / "data" / "var" / "scene"
    assert run.time_budget_s == 2400 and AdaptConfig.time_budget_s == 1500
    # flags override the config; "none" lifts the time budget
    for flag, seconds in (("10m", 600), ("none", None)):
        assert build_config(build_parser().parse_args(["--camera", "lobby", "--time-budget", flag]), config).time_budget_s == seconds
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--camera", "lobby", "--time-budget", "soon"])
    args = build_parser().parse_args(["--camera", "lobby", "--keep-count", "--min-count-ratio", "0.6", "--models", "m", "--buffer", "b"])
    run = build_config(args, config)
    assert run.keep_count is True and run.gate.min_count_ratio == 0.6
    assert (run.registry_root, run.buffer_root, run.buffer.max_frames) == (Path("m"), Path("b"), 2500)
    # a camera with no own settings gets [defaults]
    run = build_config(build_parser().parse_args(["--camera", "yard"]), config)
    assert run.keep_count is True and run.gate == GateConfig() and run.buffer.max_frames == 2000 and run.buffer.retention_days == 14


def test_a_camera_not_in_the_config_adapts_only_once_from_given_frames(config_file: Path, tmp_path: Path) -> None:
    from adapt.commands.adapt import build_config, build_parser
    from adapt.selfsup.adaptation import AdaptError

    config = load_config(config_file)
    with pytest.raises(AdaptError, match="not in .*config.toml.*--frames"):
        build_config(build_parser().parse_args(["--camera", "hall"]), config)
    run = build_config(build_parser().parse_args(["--camera", "hall", "--frames", str(tmp_path)]), config)
    assert run.frames == tmp_path and run.buffer.retention_days == 14 and run.keep_count is True


def test_without_a_config_file_the_builtin_defaults_apply(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from adapt.commands.adapt import build_config, build_parser, main
    from adapt.selfsup.adaptation import AdaptConfig
    from crowdwatch.config import load_command_config

    monkeypatch.chdir(tmp_path)  # no config.toml here
    assert load_command_config(None) is None
    run = build_config(build_parser().parse_args(["--camera", "hall"]), None)
    assert run == AdaptConfig(camera="hall")
    # a config that was named must exist
    assert main(["--config", str(tmp_path / "missing.toml"), "--camera", "hall"]) == 2


def test_missing_explicit_config_is_an_error_for_every_learning_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "missing.toml")
    for argv in (["models", "list"], ["eval", "--dataset", str(tmp_path)], ["export"], ["train", "--data", str(tmp_path)],
                 ["calibrate", "--camera", "x"], ["label", "--camera", "x"], ["synth", "--out", str(tmp_path / "s")]):
        name, rest = argv[0], argv[1:]
        with pytest.raises(SystemExit) as exit_:
            cli([name, "--config", missing, *rest])
        assert exit_.value.code == 2, name
        assert "missing.toml" in capsys.readouterr().err


def test_models_lists_the_configured_registry(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from adapt.store.registry import Registry

    (config_file.parent / "data" / "models" / "lobby").mkdir(parents=True)
    assert Registry(config_file.parent / "data" / "models").cameras() == ["lobby"]
    assert cli(["models", "--config", str(config_file), "list"]) == 0
    assert "lobby:" in capsys.readouterr().out


def test_labels_go_where_the_camera_reads_them(config_file: Path) -> None:
    from adapt.store.locations import labels_dir

    config = load_config(config_file)
    site = config_file.parent
    assert labels_dir(config, "lobby") == site / "lobby-labels"          # its adapt.labels
    assert labels_dir(config, "yard") == site / "data" / "labels" / "yard"  # [paths] labels
    assert labels_dir(None, "yard") == Path("labels") / "yard"


def test_importing_a_video_keeps_a_configured_buffer_larger_than_the_default(config_file: Path, tmp_path: Path) -> None:
    """collect_frames opened the buffer with the default settings: importing --frames video.mp4 evicted down to 2,000."""
    from adapt.commands.adapt import build_config, build_parser
    from adapt.selfsup.adaptation import collect_frames
    from adapt.store.buffer import frame_name
    from crowdwatch.config import BufferSettings
    from streamer.sources.testclip import write_clip

    config = load_config(config_file)
    assert config.cameras["lobby"].buffer.max_frames == 2500 > BufferSettings().max_frames
    buffer = config.paths.var / "buffer" / "lobby"
    buffer.mkdir(parents=True)
    now = time.time_ns()
    kept = [buffer / frame_name(now - (3000 - i) * 1_000_000_000) for i in range(2100)]  # 2,100 recent frames already buffered
    for path in kept:
        path.write_bytes(b"\xff\xd8 frame")
    clip = write_clip(tmp_path / "cam.mp4", width=160, height=128, fps=5, seconds=4, gop=5)
    run = build_config(build_parser().parse_args(["--camera", "lobby", "--frames", str(clip.path), "--max-frames", "20"]), config)
    collect_frames(run)
    on_disk = sorted(buffer.glob("*.jpg"))
    assert all(path.exists() for path in kept), "configured frames were evicted"
    assert len(on_disk) > 2100 and len(on_disk) <= 2500  # the video's frames joined them, within the camera's own limit


def test_the_scene_model_setting_comes_from_the_camera_and_a_flag_overrides_it(tmp_path):
    from adapt.selfsup.settings import adaptation_config
    from crowdwatch.config import parse_config

    data = {"cameras": {"lobby": {"url": "synthetic://?people=5", "adapt": {"scene": False}}}}
    config = parse_config(data, base_dir=tmp_path)
    assert adaptation_config(config, "lobby").scene is False
    assert adaptation_config(config, "lobby", scene=True).scene is True
    assert adaptation_config(None, "lobby").scene is True
