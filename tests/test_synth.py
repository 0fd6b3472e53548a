"""Synthetic crowd renderer: determinism, labels, occlusion, styles, camera maths, writers, CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import scipy.io

from adapt.commands.synth import main as synth_main
from adapt.synth import STYLES, Camera, build_scene, make_person, render, render_sample, sample_camera, sample_crowd, sample_scene, walk
from adapt.synth.crowd import view_flags
from adapt.synth.kinds import DENSE_MIN_HEAD_PX, max_people, sample_kind_scene, scene_size
from adapt.synth.people import POSE_SEATED, SEAT_FRAC, head_radius_m
from adapt.synth.render import dense_crowd
from adapt.synth.writers import image_seed, read_shanghaitech_mat, write_dataset, write_shanghaitech_mat

W, H = 192, 144  # small frames keep the suite fast


def _flat_scene(cam: Camera, seed: int = 0):
    """A bare ground plane: no buildings or objects that could hide anyone."""
    return build_scene(np.random.default_rng(seed), cam, "day", with_distractors=False, with_buildings=False)


# -- determinism and labels -------------------------------------------------------------


def test_same_seed_same_bytes_and_labels():
    a = render_sample(7, W, H, "day", (20, 40))
    b = render_sample(7, W, H, "day", (20, 40))
    assert a.image.tobytes() == b.image.tobytes()
    np.testing.assert_array_equal(a.points, b.points)
    np.testing.assert_array_equal(a.head_sizes, b.head_sizes)
    c = render_sample(8, W, H, "day", (20, 40))
    assert c.image.tobytes() != a.image.tobytes()


def test_labels_are_inside_the_image_and_well_formed():
    total = 0
    for seed in range(4):
        r = render_sample(seed, W, H, "day", (30, 60))
        assert r.image.shape == (H, W, 3) and r.image.dtype == np.uint8
        assert r.points.dtype == np.float32 and r.points.shape == (r.count, 2)
        assert r.head_sizes.dtype == np.float32 and r.head_sizes.shape == (r.count,)
        assert np.all(r.points[:, 0] >= 0) and np.all(r.points[:, 0] <= W - 1)
        assert np.all(r.points[:, 1] >= 0) and np.all(r.points[:, 1] <= H - 1)
        assert np.all(r.head_sizes > 0) and np.all(r.head_sizes < H)
        total += r.count
    assert total > 40  # crowds were actually drawn and labelled


@pytest.mark.parametrize("style", sorted(STYLES))
def test_every_style_renders(style):
    r = render_sample(3, W, H, style, (10, 20))
    assert r.image.shape == (H, W, 3)
    assert r.image.std() > 3  # not a blank frame
    assert r.style == style
    if style == "night_ir":
        # grey IR look and people brighter than their surroundings
        assert np.abs(r.image[..., 0].astype(int) - r.image[..., 2]).max() <= 2
        if r.count:
            ys, xs = r.points[:, 1].astype(int), r.points[:, 0].astype(int)
            assert r.image[ys, xs, 0].mean() > np.median(r.image[..., 0])


def test_zero_people():
    r = render_sample(11, W, H, "dusk", (0, 0))
    assert r.count == 0 and r.points.shape == (0, 2) and r.head_sizes.shape == (0,)
    scene = sample_scene(np.random.default_rng(1), W, H, "day")
    assert sample_crowd(np.random.default_rng(2), scene, 0) == []
    assert render(scene, [], np.random.default_rng(3)).count == 0


def test_crowd_size_counts_heads_in_view():
    scene = sample_scene(np.random.default_rng(5), 320, 240, "day")
    people = sample_crowd(np.random.default_rng(6), scene, 60, "mixed")
    x = np.array([p.x for p in people])
    y = np.array([p.y for p in people])
    h = np.array([p.height_m for p in people])
    head_in, body_in = view_flags(scene, x, y, h)
    assert head_in.sum() == 60 and body_in.all()
    assert scene.walkable(x, y).all()


# -- occlusion ----------------------------------------------------------------------------


def test_person_directly_behind_a_nearer_one_is_not_labelled():
    # camera at head height looking almost level: both heads on one line of sight
    cam = Camera(320, 240, height_m=1.7, tilt_deg=2.0, focal_px=400.0)
    scene = _flat_scene(cam)
    rng = np.random.default_rng(0)
    near = make_person(rng, 0.0, 6.0, height_m=1.75, speed=0.0)
    far = make_person(rng, 0.0, 12.0, height_m=1.75, speed=0.0)
    r = render(scene, [near, far], np.random.default_rng(1))
    assert list(r.person_index) == [0]  # only the near head
    # the same two people side by side are both visible
    aside = make_person(rng, 1.5, 12.0, height_m=1.75, speed=0.0)
    r2 = render(scene, [near, aside], np.random.default_rng(1))
    assert sorted(r2.person_index.tolist()) == [0, 1]


def test_child_hidden_behind_adult_seen_from_above():
    cam = Camera(320, 240, height_m=6.0, tilt_deg=30.0, focal_px=350.0)
    scene = _flat_scene(cam, 1)
    rng = np.random.default_rng(3)
    adult = make_person(rng, 0.0, 8.0, height_m=1.85, speed=0.0, heading=np.pi / 2)
    # put the child's head on the line of sight through the adult's chest
    chest = np.array([0.0, 8.0, 1.3])
    d = chest - cam.center
    child_h = 1.05
    t = (child_h - 0.08 - cam.center[2]) / d[2]
    cx, cy = (cam.center + t * d)[:2]
    child = make_person(rng, cx, cy, height_m=child_h, speed=0.0, heading=np.pi / 2)
    assert cy > 8.0  # the child really is behind the adult
    r = render(scene, [adult, child], np.random.default_rng(4))
    assert r.person_index.tolist() == [0]


def test_heads_outside_the_frame_are_not_labelled():
    cam = Camera(320, 240, height_m=6.0, tilt_deg=30.0, focal_px=350.0)
    scene = _flat_scene(cam)
    rng = np.random.default_rng(5)
    inside = make_person(rng, 0.0, 10.0, speed=0.0)
    outside = make_person(rng, 40.0, 10.0, speed=0.0)
    r = render(scene, [inside, outside], np.random.default_rng(6))
    assert r.person_index.tolist() == [0]


# -- camera -------------------------------------------------------------------------------


def test_homography_maps_projected_ground_points_back_to_metres():
    rng = np.random.default_rng(0)
    for _ in range(10):
        cam = sample_camera(rng, 640, 480)
        g = np.column_stack([rng.uniform(-5, 5, 20), rng.uniform(3, 30, 20), np.zeros(20)])
        uv, depth = cam.project(g)
        assert np.all(depth > 0)
        Hm = cam.image_to_ground()
        p = np.column_stack([uv, np.ones(20)]) @ Hm.T
        np.testing.assert_allclose(p[:, :2] / p[:, 2:], g[:, :2], atol=1e-6)
        np.testing.assert_allclose(cam.pixel_to_ground(uv), g[:, :2], atol=1e-6)
        # a point above the ground projects higher in the image than its foot
        top, _ = cam.project(g + [0, 0, 1.7])
        assert np.all(top[:, 1] < uv[:, 1])


# -- motion -------------------------------------------------------------------------------


def test_walk_moves_people_and_keeps_them_in_view():
    scene = sample_scene(np.random.default_rng(9), 256, 192, "day")
    rng = np.random.default_rng(10)
    people = sample_crowd(rng, scene, 30, "flow")
    moved = people
    for _ in range(20):
        moved = walk(scene, moved, 0.2, rng)
    assert len(moved) == len(people)
    x = np.array([p.x for p in moved])
    y = np.array([p.y for p in moved])
    _, body_in = view_flags(scene, x, y, np.array([p.height_m for p in moved]))
    assert body_in.all()
    shift = np.hypot(x - [p.x for p in people], y - [p.y for p in people])
    walkers = np.array([p.speed > 0 for p in people])
    assert walkers.any() and np.median(shift[walkers]) > 0.5
    assert np.allclose(shift[~walkers], 0.0)
    assert render(scene, moved, rng).count > 0


# -- writers and CLI ------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 4])
def test_mat_round_trip(tmp_path, n):
    pts = np.random.default_rng(n).uniform(0, 100, (n, 2))
    sizes = np.arange(n, dtype=float) + 3
    f = tmp_path / "GT_IMG_1.mat"
    write_shanghaitech_mat(f, pts, sizes)
    info = scipy.io.loadmat(f)["image_info"][0, 0][0, 0]
    assert info["location"].shape == (n, 2) and info["location"].dtype.kind == "f"
    np.testing.assert_allclose(info["location"], pts)
    assert int(info["number"][0, 0]) == n
    got_pts, got_sizes = read_shanghaitech_mat(f)
    np.testing.assert_allclose(got_sizes, sizes)
    np.testing.assert_allclose(got_pts, pts)


def test_dataset_round_trip_and_worker_independence(tmp_path):
    args = dict(n=4, seed=21, width=128, height=96, styles=["day", "fog"], count_range=(0, 25), progress=False)
    meta = write_dataset(tmp_path / "a", workers=1, **args)
    write_dataset(tmp_path / "b", workers=2, **args)
    for i in range(1, 5):
        a = (tmp_path / "a" / "images" / f"IMG_{i}.jpg").read_bytes()
        assert a == (tmp_path / "b" / "images" / f"IMG_{i}.jpg").read_bytes()
        lab = json.loads((tmp_path / "a" / "labels" / f"IMG_{i}.json").read_text())
        assert lab["image"] == f"IMG_{i}.jpg" and (lab["width"], lab["height"]) == (128, 96)
        assert lab["style"] == meta["images"][i - 1]["style"]
        entry = meta["images"][i - 1]
        ref = render_sample(image_seed(21, i), 128, 96, lab["style"], (0, 25), entry["scene"], entry["empty"])
        np.testing.assert_allclose(np.array(lab["points"]).reshape(-1, 2), ref.points, atol=1e-3)
        np.testing.assert_allclose(lab["head_sizes"], ref.head_sizes, atol=1e-3)
        pts, sizes = read_shanghaitech_mat(tmp_path / "a" / "ground-truth" / f"GT_IMG_{i}.mat")
        np.testing.assert_allclose(pts, ref.points, atol=1e-4)
        assert len(sizes) == ref.count
    saved = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert saved["seed"] == 21 and saved["n"] == 4 and saved["styles"] == ["day", "fog"]
    assert saved["count_range"] == [0, 25] and saved["renderer_version"]
    with pytest.raises(FileExistsError):
        write_dataset(tmp_path / "a", workers=1, **args)
    write_dataset(tmp_path / "a", workers=1, overwrite=True, **{**args, "n": 1})
    assert len(list((tmp_path / "a" / "images").iterdir())) == 1


def test_cli_writes_a_small_dataset(tmp_path, capsys):
    out = tmp_path / "ds"
    sheet = tmp_path / "sheet.png"
    rc = synth_main(["--out", str(out), "--n", "2", "--seed", "4", "--size", "96x64", "--styles", "day,night_ir",
                     "--count", "0:10", "--format", "shanghaitech,json", "--quiet",
                     "--contact-sheet", str(sheet), "--sheet-images", "2"])
    assert rc == 0
    assert sorted(p.name for p in (out / "images").iterdir()) == ["IMG_1.jpg", "IMG_2.jpg"]
    assert (out / "ground-truth" / "GT_IMG_2.mat").exists() and (out / "labels" / "IMG_2.json").exists()
    assert sheet.stat().st_size > 0
    assert json.loads((out / "meta.json").read_text())["size"] == "96x64"


@pytest.mark.parametrize("argv", [
    ["--out", "X", "--size", "12"],
    ["--out", "X", "--styles", "sunny"],
    ["--out", "X", "--count", "9:3"],
    ["--out", "X", "--format", "coco"],
    ["--out", "X", "--workers", "0"],
    [],
])
def test_cli_rejects_bad_arguments(argv, tmp_path, capsys):
    argv = [str(tmp_path / a) if a == "X" else a for a in argv]
    assert synth_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("crowdwatch synth: error:") and "\n" not in err


# -- dense scenes, empty scenes and refusals ---------------------------------------------------------


def _dense(kind: str, n: int, seed: int, size=(640, 480), style="day", labels=True):
    """A packed or stand scene for n labels (render_sample's path), or with exactly n heads placed in view."""
    rng = np.random.default_rng(seed)
    scene = sample_kind_scene(rng, size[0], size[1], style, kind, scene_size(kind, n) if labels else n)
    layout = {"packed": "packed", "tribune": "seated"}[kind]
    people = dense_crowd(rng, scene, n, layout) if labels else sample_crowd(rng, scene, n, layout)
    return scene, people, render(scene, people, rng)


def _head_centres(cam: Camera, people, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Projected head centre and diameter of an upright or seated person, from the camera alone."""
    p = [people[i] for i in index]
    h = np.array([q.height_m for q in p])
    rh = head_radius_m(h)
    sit = np.array([q.pose == POSE_SEATED for q in p])
    top = np.array([q.z for q in p]) + h * np.where(sit, 1 - (0.52 - SEAT_FRAC), 1.0) - rh
    uv, depth = cam.project(np.column_stack([[q.x for q in p], [q.y for q in p], top]))
    return uv, 2 * rh * cam.focal_px / depth


@pytest.mark.parametrize("kind,n,seed", [("packed", 900, 1), ("tribune", 700, 2)])
def test_dense_render_has_the_requested_count_and_exact_labels(kind, n, seed):
    scene, people, r = _dense(kind, n, seed, labels=False)
    head_in, _ = view_flags(scene, np.array([p.x for p in people]), np.array([p.y for p in people]),
                            np.array([p.height_m for p in people]), np.array([p.z for p in people]),
                            np.array([p.pose == POSE_SEATED for p in people]))
    assert head_in.sum() == n  # sample_crowd: n heads placed in view, plus people cut off at the frame edges
    scene, people, r = _dense(kind, n, seed)
    assert 0.85 * n <= r.count <= 1.02 * n  # dense_crowd: topped up or thinned to about n labelled heads
    assert np.all((r.points >= 0) & (r.points <= [scene.width - 1, scene.height - 1]))
    assert r.head_sizes.min() >= DENSE_MIN_HEAD_PX * 0.97
    uv, size = _head_centres(scene.camera, people, r.person_index)
    # the label is the drawn head: at its projected centre, as wide as the head (walking adds a small bob)
    assert np.median(np.hypot(*(r.points - uv).T)) < 0.15 * np.median(size) + 0.5
    np.testing.assert_allclose(r.head_sizes, size, rtol=0.06)
    if kind == "tribune":
        assert all(p.z > 0 for p in people) and np.mean([p.pose == POSE_SEATED for p in people]) > 0.6


def test_dense_kinds_are_deterministic_and_reach_thousands():
    for kind in ("packed", "tribune"):
        a = render_sample(5, 320, 240, "overcast", (200, 300), kind)
        b = render_sample(5, 320, 240, "overcast", (200, 300), kind)
        assert a.image.tobytes() == b.image.tobytes() and np.array_equal(a.points, b.points)
    assert max_people("packed", 1024, 768) > 4000 and max_people("tribune", 1024, 768) > 2000


def test_tiny_heads_are_labelled():
    scene, people, r = _dense("packed", 3000, 3)
    assert r.count > 2400
    tiny = r.head_sizes < 3.0
    assert tiny.sum() > 50 and r.head_sizes[tiny].min() >= 0.97 * DENSE_MIN_HEAD_PX
    for seed in range(3):  # street scenes: down to a pixel, never below
        s = render_sample(seed, 320, 240, "day", (100, 200))
        assert s.count > 0 and s.head_sizes.min() >= 0.97


def test_empty_scenes_have_zero_labels(tmp_path):
    for kind in ("street", "packed", "tribune"):
        r = render_sample(4, 320, 240, "day", (150, 200), kind, empty=True)
        assert r.count == 0 and r.points.shape == (0, 2) and r.image.std() > 3
    meta = write_dataset(tmp_path / "d", n=8, seed=3, width=96, height=64, styles=["day"], count_range=(5, 10),
                         progress=False, empty=0.5)
    empty = [m for m in meta["images"] if m["empty"]]
    assert meta["empty_share"] == 0.5 and meta["empty_images"] == len(empty) and 0 < len(empty) < 8
    for m in meta["images"]:
        i = m["image"][4:-4]
        lab = json.loads((tmp_path / "d" / "labels" / f"IMG_{i}.json").read_text())
        pts, _ = read_shanghaitech_mat(tmp_path / "d" / "ground-truth" / f"GT_IMG_{i}.mat")
        assert (len(lab["points"]) == 0 and len(pts) == 0) if m["empty"] else len(pts) == len(lab["points"]) > 0
    assert json.loads((tmp_path / "d" / "meta.json").read_text())["scenes"] == ["street"]


def test_impossible_requests_are_refused(tmp_path, monkeypatch):
    cam = Camera(320, 240, height_m=4.0, tilt_deg=40.0, focal_px=300.0)
    scene = _flat_scene(cam)
    with pytest.raises(ValueError, match=r"n = 100000 people do not fit: this 320x240 view holds at most \d+"):
        sample_crowd(np.random.default_rng(0), scene, 100_000)
    far = _flat_scene(Camera(64, 48, height_m=300.0, tilt_deg=30.0, focal_px=40.0))
    with pytest.raises(ValueError, match=r"no head in this 64x48 view is 1 px wide \(the largest is 0\.\d+ px\)"):
        sample_crowd(np.random.default_rng(0), far, 5)
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=r"count up to 50000 is more people than a 320x240 packed view holds \(at most \d+"):
        write_dataset(out, n=3, seed=0, width=320, height=240, styles=["day"], count_range=(0, 50_000), progress=False,
                      kinds=["packed"])
    with pytest.raises(ValueError, match="n must be between 0 and 1,000,000"):
        write_dataset(out, n=2_000_000, seed=0, width=320, height=240, styles=["day"], count_range=(0, 10), progress=False)
    monkeypatch.setattr("adapt.synth.writers.shutil.disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 5000, 5000))
    with pytest.raises(ValueError, match=r"the dataset needs about .* GB and .* has 0\.0 GB free"):
        write_dataset(out, n=10, seed=0, width=320, height=240, styles=["day"], count_range=(0, 10), progress=False)
    assert not out.exists()  # nothing was written


@pytest.mark.parametrize("argv,message", [
    (["--count", "0:50000", "--scenes", "packed", "--size", "320x240"], "count up to 50000 is more people than a 320x240 packed view"),
    (["--scenes", "stadium"], "scene kind(s) must be among street, packed, tribune"),
    (["--empty", "1.5"], "expected a share between 0 and 1"),
])
def test_cli_refuses_impossible_dense_requests(argv, message, tmp_path, capsys):
    assert synth_main(["--out", str(tmp_path / "x"), "--quiet", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("crowdwatch synth: error:") and message in err and "\n" not in err
    assert not (tmp_path / "x").exists()


def test_the_range_recipe_parses_and_its_sets_can_be_rendered():
    from adapt.synth.writers import _check
    from adapt.training.train import load_recipe

    cfg = load_recipe("range")
    assert cfg.crop % 32 == 0 and cfg.batch_size % cfg.model["masks"] == 0
    assert {k for spec in cfg.synth for k in spec["scenes"]} == {"street", "packed", "tribune"}
    for spec in cfg.synth:  # the renderer's own checks, counts against what each kind holds at the size included
        _check(spec["n"], spec["width"], spec["height"], spec["styles"], tuple(spec["count"]), ["shanghaitech"],
               spec["workers"], spec["scenes"], spec["empty"])
        assert spec["empty"] > 0
