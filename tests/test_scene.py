"""The scene model of a fixed camera, on frames the renderer makes with a known empty scene and camera."""

import dataclasses

import numpy as np
import pytest

from adapt.scene.background import estimate_background, frame_spans
from adapt.scene.composite import composite, walk_map
from adapt.scene.geometry import PersonSizes, fit_camera, row_person_px, size_line
from adapt.scene.model import SceneModel, build_scene_model, camera_shift
from adapt.scene.motion import static_on_grid
from adapt.synth import render, sample_crowd, walk
from adapt.synth.camera import Camera
from adapt.synth.scene import build_scene


@pytest.fixture(scope="module")
def clip():
    """80 frames of 14 people walking through a fixed street scene, the scene, and the true head points per frame."""
    rng = np.random.default_rng(3)
    cam = Camera(320, 240, height_m=3.0, tilt_deg=12.0, focal_px=300.0)
    scene = build_scene(rng, cam, "overcast", with_distractors=False)
    # everyone walks: a person who stands through the whole clip is part of any background estimate
    people = [dataclasses.replace(p, speed=1.3) for p in sample_crowd(rng, scene, 14, "uniform")]
    frames, heads = [], []
    for _ in range(80):
        people = walk(scene, people, 0.5, rng)
        r = render(scene, people, rng)
        frames.append(r.image)
        heads.append(r.points)
    return np.stack(frames), scene, heads


def test_the_empty_scene_is_recovered_from_frames_with_people(clip):
    frames, scene, _ = clip
    bg = estimate_background(frames)
    empty = render(scene, [], np.random.default_rng(0)).image.astype(np.int16)
    err = np.abs(bg.image.astype(np.int16) - empty).max(-1)
    # the plain median keeps walkers as ghosts; the estimate matches the empty render almost everywhere
    plain = np.abs(np.median(frames, 0).astype(np.int16) - empty).max(-1)
    assert (err > 30).mean() < 0.01
    assert (err > 30).mean() <= (plain > 30).mean()


def test_each_frame_counts_for_the_time_it_stands_for(clip):
    """A buffer's frames are unevenly spaced (an imported clip keeps a burst of consecutive frames, then
    every second or third): a person standing through a 2 s burst of 50 frames, then 30 clear frames over
    30 s, is not the empty scene, though the burst holds most of the frames."""
    frames, scene, _ = clip
    empty = render(scene, [], np.random.default_rng(0)).image
    rng = np.random.default_rng(1)
    shots = np.repeat(empty[None], 80, 0).astype(np.int16) + rng.normal(0, 2, (80, *empty.shape)).round().astype(np.int16)
    shots[:50, 100:160, 140:170] = (40, 30, 30)  # the person standing through the burst
    shots = shots.clip(0, 255).astype(np.uint8)
    times = np.concatenate([np.arange(50) * 0.04, 2.0 + np.arange(30) * 1.0])
    ghost = np.abs(estimate_background(shots).image.astype(np.int16) - empty).max(-1)[100:160, 140:170]
    timed = np.abs(estimate_background(shots, times).image.astype(np.int16) - empty).max(-1)[100:160, 140:170]
    assert (ghost > 30).mean() > 0.9  # counted frame by frame, the burst outvotes the clear frames
    assert (timed > 30).mean() < 0.01
    with pytest.raises(ValueError, match="increasing capture times"):
        estimate_background(shots, times[::-1])


def test_frame_spans_are_half_the_gaps_either_side():
    assert frame_spans(np.array([0.0, 1.0, 3.0, 4.0])).tolist() == [1.0, 1.5, 1.5, 1.0]
    assert frame_spans(np.array([5.0])).tolist() == [0.0]


def test_the_scene_model_finds_where_people_walk_and_how_big_they_are(clip):
    frames, scene, _ = clip
    model = build_scene_model(frames)
    assert model.usable, model.problems
    assert 0.02 < model.motion.moving_share < 0.9
    assert model.motion.static.mean() > 0.1  # the sky and walls never move
    # fitted person heights within 30% of the true camera's on the rows people used
    rows = np.linspace(90, 239, 5)
    fit, true = row_person_px(model.camera, rows), row_person_px(scene.camera, rows)
    ok = np.isfinite(fit) & np.isfinite(true)
    assert ok.sum() >= 3 and np.all(np.abs(np.log(fit[ok] / true[ok])) < np.log(1.3))


def test_a_scene_model_round_trips_through_its_folder(clip, tmp_path):
    model = build_scene_model(clip[0])
    model.save(tmp_path)
    back = SceneModel.load(tmp_path)
    assert back.summary() == model.summary()
    assert np.array_equal(back.backgrounds[0].image, model.backgrounds[0].image)
    assert np.array_equal(back.motion.static, model.motion.static)


def test_bad_clips_are_named_and_not_usable(clip):
    frames, _, _ = clip
    assert any("too short" in p for p in build_scene_model(frames[:10]).problems)
    still = np.repeat(frames[:1], 40, 0)
    assert any("too static" in p for p in build_scene_model(still).problems)
    # a panning camera: each frame shifted a few more pixels
    panned = np.stack([np.roll(f, 3 * i, axis=1) for i, f in enumerate(frames[:40])])
    assert any("moves" in p for p in build_scene_model(panned).problems)
    # always crowded: noise over most of every frame
    rng = np.random.default_rng(0)
    crowded = frames[:40].copy()
    crowded[:, 40:] = rng.integers(0, 255, crowded[:, 40:].shape, dtype=np.uint8)
    assert not build_scene_model(crowded).usable


def test_the_reference_is_the_same_for_every_frame(clip):
    """cv2.phaseCorrelate windows its inputs in place: a reused reference fades frame by frame, and a
    fixed camera reads as moving. A frame's shift must not depend on the frames measured before it."""
    frames, _, _ = clip
    bg = estimate_background(frames).image
    assert camera_shift(frames[:6], bg)[5] == camera_shift(frames[5:6], bg)[0]


def test_a_day_night_change_gets_one_empty_scene_per_lighting(clip):
    frames, _, _ = clip
    night = (frames[:40] * 0.3).astype(np.uint8)
    model = build_scene_model(np.concatenate([frames[:40], night]))
    assert len(model.backgrounds) == 2
    assert abs(model.backgrounds[0].image.mean() - model.backgrounds[1].image.mean()) > 40


def test_size_line_ignores_fragments():
    rng = np.random.default_rng(0)
    feet = rng.uniform(120, 240, 80)
    h = 0.8 * (feet - 100)
    h[:25] = rng.uniform(5, 15, 25)  # legs, pigeons, bits of people
    slope, horizon, share = size_line(PersonSizes(rng.uniform(0, 320, 80), feet, h, 0.3 * h * h))
    assert abs(slope - 0.8) < 0.05 and abs(horizon - 100) < 5 and share > 0.6
    assert size_line(PersonSizes(np.zeros(3), np.zeros(3), np.zeros(3), np.zeros(3))) is None
    assert fit_camera(PersonSizes(np.zeros(3), np.zeros(3), np.zeros(3), np.zeros(3)), 320, 240) is None


def test_composites_put_labelled_people_of_the_camera_size_on_the_empty_scene(clip):
    frames, scene, _ = clip
    empty = render(scene, [], np.random.default_rng(0)).image
    wm = walk_map(np.array([[160.0, 200.0]] * 10), (240, 320), 8, 80.0)
    r = composite(np.random.default_rng(1), empty, scene.camera, wm, 6)
    assert 1 <= r.count <= 6
    assert r.image.shape == empty.shape and np.abs(r.image.astype(int) - empty).max() > 50
    none = composite(np.random.default_rng(1), empty, scene.camera, wm, 0)
    assert none.count == 0


def test_static_cells_map_onto_a_padded_density_grid():
    static = np.zeros((30, 40), bool)
    static[:10] = True
    valid = np.zeros((32, 40), bool)
    valid[:30] = True
    out = static_on_grid(static, valid)
    assert out[:10].all() and not out[10:].any()


def test_the_foreground_counts_the_people_walking_through_a_frame(clip):
    frames, _, heads_per_frame = clip
    model = build_scene_model(frames)
    assert 0.1 < model.fill < 0.8  # measured on this camera's whole people (not the default)
    assert model.fill != pytest.approx(0.3)
    counted, true, near = [], [], 0
    for image, truth in zip(frames[::4], heads_per_frame[::4]):
        people = model.people_in_blobs(image)
        assert len(people.heads) == len(people.head_px) == len(people.blob)
        assert people.weights.sum() == pytest.approx(people.counts.sum())
        counted.append(people.counts.sum())
        true.append(len(truth))
        for h in people.heads:
            near += len(truth) and np.hypot(*(truth - h).T).min() < 12
    counted, true = np.array(counted), np.array(true)
    # the count, not each head, is what the labels must get right; 14 people in a small
    # frame hide one another, so the area counts some 25% low here
    assert 0.7 * true.mean() < counted.mean() < 1.2 * true.mean()
    assert np.abs(counted - true).mean() < 0.3 * true.mean()
    assert near > 0.5 * sum(len(model.people_in_blobs(f).heads) for f in frames[::4])
    assert len(model.people_in_blobs(frames[0][:100]).counts) == 0  # another size: nothing claimed


def test_a_configured_calibration_is_checked_against_the_people_seen(clip):
    frames, scene, _ = clip
    image = np.array([[60.0, 200.0], [260.0, 200.0], [100.0, 150.0], [220.0, 150.0]])
    ground = scene.camera.pixel_to_ground(image)
    agreeing = build_scene_model(frames, calibration=(image, ground))
    assert agreeing.usable and agreeing.size_source == "observed people"
    assert not any("calibration" in n for n in agreeing.notes)
    # a calibration three times too large: named, and people stay sized as they were seen
    wrong = build_scene_model(frames, calibration=(image, ground * 3))
    assert wrong.usable and any("disagrees" in n for n in wrong.notes)


def test_a_calibration_sizes_people_when_no_single_person_was_seen():
    from adapt.scene.geometry import camera_from_calibration, row_person_px

    cam = Camera(320, 240, height_m=4.0, tilt_deg=20.0, focal_px=280.0)
    image = np.array([[60.0, 220.0], [260.0, 220.0], [100.0, 150.0], [220.0, 150.0], [160.0, 180.0]])
    fitted, err = camera_from_calibration(image, cam.pixel_to_ground(image), 320, 240)
    assert err < 0.05
    rows = np.array([150.0, 200.0, 239.0])
    assert np.all(np.abs(np.log(row_person_px(fitted, rows) / row_person_px(cam, rows))) < np.log(1.25))
