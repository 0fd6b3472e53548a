import numpy as np
import pytest

from streamer.sources import Source, SourceConfig, SourceError
from streamer.synthetic_camera import SyntheticOptions, parse_options, register


def test_options_parse_and_ramp():
    o = parse_options("synthetic://?people=10&style=fog&ramp=0:100:50&seed=7&size=320x256", "cam")
    assert (o.people, o.style, o.ramp, o.seed, o.size) == (10, "fog", (0, 100, 50.0), 7, (320, 256))
    assert o.people_at(0) == 0 and o.people_at(25) == 50 and o.people_at(1000) == 100
    assert o.max_people == 100
    assert SyntheticOptions(people=30).max_people == 30
    # the default seed is per camera, so two cameras do not show the same scene
    assert parse_options("synthetic://", "a").seed != parse_options("synthetic://", "b").seed


@pytest.mark.parametrize("url, match", [
    ("synthetic://?people=many", "expected people in 0..2000, found people=many"),
    ("synthetic://?style=noir", "expected a style from day, .*, found style=noir"),
    ("synthetic://?people=-1", "expected people in 0..2000, found people=-1"),
    ("synthetic://?color=red", "expected options from people, .*, found unknown option 'color'"),
    ("synthetic://?ramp=1:2", "expected ramp=START:END:SECONDS .*, found ramp=1:2"),
    ("synthetic://?seed=x", "expected an integer seed, found seed=x"),
])
def test_bad_options_are_named(url, match):
    with pytest.raises(SourceError, match=match):
        parse_options(url)


def test_the_config_knows_every_style_of_the_renderer():
    from adapt.synth import STYLES
    from crowdwatch.config.synthetic import STYLE_NAMES

    assert sorted(STYLE_NAMES) == sorted(STYLES)


def test_frames_carry_the_true_count():
    register()
    src = Source(SourceConfig(camera="cam", url="synthetic://?people=20&seed=1", fps=50, width=320, height=256))
    frames = []
    for f in src.frames():
        frames.append(f)
        if len(frames) == 3:
            break
    src.close()
    assert all(f.image.shape == (256, 320, 3) for f in frames)
    assert all(5 <= f.meta["truth"] <= 25 for f in frames)
    assert [f.seq for f in frames] == sorted(f.seq for f in frames)


def test_repo_config_calibrates_synthetic_cameras_with_the_renderers_camera():
    from crowdwatch.config import load_config
    from streamer.synthetic_camera import calibration
    from tests.conftest import REPO

    config = load_config(REPO / "config.toml")
    synthetic = [c for c in config.cameras.values() if c.source_kind == "synthetic" and c.calibration is not None]
    assert synthetic
    for cam in synthetic:
        image, ground = calibration(cam.url, cam.name, cam.width, cam.height)
        np.testing.assert_allclose(np.array(cam.calibration.image), image, atol=0.1)
        np.testing.assert_allclose(np.array(cam.calibration.ground), ground, atol=0.01)


def test_print_calibration(capsys):
    from streamer.ingest import main
    from tests.conftest import REPO

    assert main(["--camera", "plaza", "--config", str(REPO / "config.toml"), "--print-calibration"]) == 0
    assert capsys.readouterr().out.startswith("[cameras.plaza.calibration]\nimage = [[")
