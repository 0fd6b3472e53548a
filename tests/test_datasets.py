from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io

from adapt.data.datasets import (
    FORMATS,
    Annotation,
    DatasetError,
    read_dataset,
)
from adapt.data.density import density_map
from adapt.data.images import BadImage, load_image, natural_key

# --------------------------------------------------------------------------- fixture writers


def _jpg(path: Path, hw: tuple[int, int] = (32, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(len(path.name)).integers(0, 255, (*hw, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), img)
    return path


def _pts(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform((0, 0), (48, 32), size=(n, 2))


def _cell(value: object) -> np.ndarray:
    """A 1x1 MATLAB cell holding ``value``."""
    c = np.empty((1, 1), dtype=object)
    c[0, 0] = value
    return c


def _shanghaitech_mat(path: Path, xy: np.ndarray, head_size: np.ndarray | None = None, number: int | None = None):
    """The real nesting: image_info is a 1x1 cell holding a 1x1 struct (location, number[, head_size])."""
    struct = {"location": xy, "number": np.array([[len(xy) if number is None else number]], dtype=np.uint8)}
    if head_size is not None:
        struct["head_size"] = head_size
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), {"image_info": _cell(struct)})


# --------------------------------------------------------------------------- shanghaitech


def test_shanghaitech_round_trip_numeric_order_and_head_sizes(tmp_path):
    written = {}
    for n in (10, 2, 1):
        _jpg(tmp_path / "images" / f"IMG_{n}.jpg")
        xy = _pts(n + 3, seed=n)
        sizes = np.linspace(10, 20, n + 3) if n == 2 else None
        _shanghaitech_mat(tmp_path / "ground-truth" / f"GT_IMG_{n}.mat", xy, sizes)
        written[n] = (xy, sizes)
    index = read_dataset(tmp_path, "shanghaitech")
    assert index.skipped == []
    assert [a.image_path.name for a in index.items] == ["IMG_1.jpg", "IMG_2.jpg", "IMG_10.jpg"]
    for ann, n in zip(index.items, (1, 2, 10)):
        xy, sizes = written[n]
        assert ann.points.dtype == np.float32 and ann.points.shape == (n + 3, 2)
        np.testing.assert_allclose(ann.points, xy, rtol=1e-6)
        if sizes is None:
            assert ann.head_sizes is None
        else:
            assert ann.head_sizes.shape == (n + 3,) and ann.head_sizes.dtype == np.float32
            np.testing.assert_allclose(ann.head_sizes, sizes, rtol=1e-6)
    assert index.total_points == 4 + 5 + 13 and len(index) == 3
    assert "count=4" in repr(index.items[0])


def test_shanghaitech_empty_image_and_underscore_gt_folder(tmp_path):
    _jpg(tmp_path / "images" / "IMG_1.jpg")
    _shanghaitech_mat(tmp_path / "ground_truth" / "GT_IMG_1.mat", np.zeros((0, 2)))
    index = read_dataset(tmp_path, "shanghaitech")
    assert index.skipped == [] and index.items[0].points.shape == (0, 2)


def test_bad_files_go_to_skipped_with_reasons(tmp_path):
    gt = tmp_path / "ground-truth"
    for n in range(1, 10):
        _jpg(tmp_path / "images" / f"IMG_{n}.jpg")
    _shanghaitech_mat(gt / "GT_IMG_1.mat", _pts(5))  # good
    # IMG_2: no label file
    scipy.io.savemat(str(gt / "GT_IMG_3.mat"), {"annPoints": _pts(3)})  # wrong key
    _shanghaitech_mat(gt / "GT_IMG_4.mat", np.array([[1.0, np.nan], [2.0, 3.0]]))  # non-finite
    _shanghaitech_mat(gt / "GT_IMG_5.mat", np.ones((4, 3)))  # wrong shape
    _shanghaitech_mat(gt / "GT_IMG_6.mat", _pts(5), number=7)  # count disagrees
    (gt / "GT_IMG_7.mat").write_bytes(b"MATLAB 5.0 MAT-file, this is not really one")  # corrupt
    _shanghaitech_mat(gt / "GT_IMG_8.mat", _pts(5), head_size=np.ones(4))  # head sizes wrong length
    _shanghaitech_mat(gt / "GT_IMG_9.mat", _pts(2), head_size=np.array([5.0, -1.0]))  # negative size
    _shanghaitech_mat(gt / "GT_IMG_99.mat", _pts(2))  # label without an image
    index = read_dataset(tmp_path, "shanghaitech")
    assert [a.image_path.name for a in index.items] == ["IMG_1.jpg"]
    reasons = {p.name: r for p, r in index.skipped}
    assert len(index.skipped) == 9
    assert "no label file" in reasons["IMG_2.jpg"]
    assert "'image_info'" in reasons["GT_IMG_3.mat"] and "annPoints" in reasons["GT_IMG_3.mat"]
    assert "non-finite" in reasons["GT_IMG_4.mat"]
    assert "(4, 3)" in reasons["GT_IMG_5.mat"]
    assert "says 7" in reasons["GT_IMG_6.mat"] and "5 points" in reasons["GT_IMG_6.mat"]
    assert "cannot read .mat" in reasons["GT_IMG_7.mat"]
    assert "head sizes" in reasons["GT_IMG_8.mat"]
    assert "> 0" in reasons["GT_IMG_9.mat"]
    assert "without a matching image" in reasons["GT_IMG_99.mat"]


def test_limit_counts_usable_items(tmp_path):
    for n in range(1, 6):
        _jpg(tmp_path / "images" / f"IMG_{n}.jpg")
        if n != 2:
            _shanghaitech_mat(tmp_path / "ground-truth" / f"GT_IMG_{n}.mat", _pts(n))
    index = read_dataset(tmp_path, "shanghaitech", limit=3)
    assert [a.image_path.name for a in index.items] == ["IMG_1.jpg", "IMG_3.jpg", "IMG_4.jpg"]
    assert len(index.skipped) == 1


# --------------------------------------------------------------------------- ucf, gcc, json


def test_ucf_round_trip(tmp_path):
    for n in (3, 12, 1):
        _jpg(tmp_path / f"{n}.jpg")
        scipy.io.savemat(str(tmp_path / f"{n}_ann.mat"), {"annPoints": _pts(n, seed=n)})
    _jpg(tmp_path / "7.jpg")
    scipy.io.savemat(str(tmp_path / "7_ann.mat"), {"points": _pts(2)})
    index = read_dataset(tmp_path, "ucf")
    assert [a.image_path.name for a in index.items] == ["1.jpg", "3.jpg", "12.jpg"]
    np.testing.assert_allclose(index.items[2].points, _pts(12, seed=12), rtol=1e-6)
    assert len(index.skipped) == 1 and "annPoints" in index.skipped[0][1]


def _gcc_mat(path: Path, rowcol: np.ndarray, nesting: str) -> None:
    struct = {"location": rowcol, "number": len(rowcol)}
    value = {
        "struct": struct,  # image_info[0, 0]["location"]
        "cell": _cell(struct),  # image_info[0, 0][0, 0]["location"] (ShanghaiTech nesting)
        "cell2": _cell(_cell(struct)),  # one more cell wrapper
    }[nesting]
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), {"image_info": value})


@pytest.mark.parametrize("nesting", ["struct", "cell", "cell2"])
def test_gcc_swaps_row_col_and_accepts_nestings(tmp_path, nesting):
    xy = _pts(6)
    _jpg(tmp_path / "pngs" / "0001.png")
    _gcc_mat(tmp_path / "mats" / "0001.mat", xy[:, ::-1].copy(), nesting)
    index = read_dataset(tmp_path, "gcc")
    assert index.skipped == []
    np.testing.assert_allclose(index.items[0].points, xy, rtol=1e-6)


def test_gcc_scene_folders_and_top_level_location(tmp_path):
    xy = _pts(4)
    for scene in ("scene_10", "scene_2"):
        for name in ("b_10", "b_9"):
            _jpg(tmp_path / scene / "pngs" / f"{name}.png")
            _gcc_mat(tmp_path / scene / "mats" / f"{name}.mat", xy[:, ::-1].copy(), "struct")
    _jpg(tmp_path / "part_1" / "scene_1" / "pngs" / "c.png")
    mats = tmp_path / "part_1" / "scene_1" / "mats"
    mats.mkdir()
    scipy.io.savemat(str(mats / "c.mat"), {"location": xy[:, ::-1].copy()})  # no image_info wrapper
    index = read_dataset(tmp_path, "gcc")
    rel = [a.image_path.relative_to(tmp_path).as_posix() for a in index.items]
    assert rel == [
        "scene_2/pngs/b_9.png", "scene_2/pngs/b_10.png",
        "scene_10/pngs/b_9.png", "scene_10/pngs/b_10.png",
        "part_1/scene_1/pngs/c.png",
    ]
    for ann in index.items:
        np.testing.assert_allclose(ann.points, xy, rtol=1e-6)


def _json_item(root: Path, stem: str, doc: dict, suffix: str = ".jpg") -> None:
    _jpg(root / "images" / f"{stem}{suffix}")
    (root / "labels").mkdir(parents=True, exist_ok=True)
    (root / "labels" / f"{stem}.json").write_text(json.dumps(doc))


def test_json_round_trip_and_bad_labels(tmp_path):
    xy = _pts(5).tolist()
    _json_item(tmp_path, "frame_2", {"image": "frame_2.jpg", "width": 48, "height": 32, "points": xy,
                                     "head_sizes": [10, 11, None, 13, 14]})
    _json_item(tmp_path, "frame_10", {"points": xy[:2]}, suffix=".png")
    _json_item(tmp_path, "frame_1", {"points": []}, suffix=".jpeg")
    _json_item(tmp_path, "bad_a", {"points": [[1, 2, 3]]})
    _json_item(tmp_path, "bad_b", {"image": "other.jpg", "points": xy})
    _json_item(tmp_path, "bad_c", {"pts": xy})
    _json_item(tmp_path, "bad_d", {"points": xy, "head_sizes": [1, 2]})
    _json_item(tmp_path, "bad_e", {"points": xy, "width": -3})
    _json_item(tmp_path, "bad_f", {"points": [[1, "x"]]})
    _jpg(tmp_path / "images" / "bad_g.jpg")
    (tmp_path / "labels" / "bad_g.json").write_text("{not json")
    index = read_dataset(tmp_path, "json")
    assert [a.image_path.name for a in index.items] == ["frame_1.jpeg", "frame_2.jpg", "frame_10.png"]
    np.testing.assert_allclose(index.items[1].points, xy, rtol=1e-6)
    sizes = index.items[1].head_sizes
    assert np.isnan(sizes[2]) and sizes[4] == 14
    assert index.items[2].head_sizes is None and index.items[0].points.shape == (0, 2)
    reasons = {p.stem: r for p, r in index.skipped}
    assert set(reasons) == {"bad_a", "bad_b", "bad_c", "bad_d", "bad_e", "bad_f", "bad_g"}
    assert "(1, 3)" in reasons["bad_a"]
    assert "other.jpg" in reasons["bad_b"]
    assert "'points'" in reasons["bad_c"]
    assert "head sizes" in reasons["bad_d"]
    assert "'width'" in reasons["bad_e"]
    assert "numeric" in reasons["bad_f"]
    assert "JSON" in reasons["bad_g"]


# --------------------------------------------------------------------------- errors and helpers


@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_or_empty_root_raises_with_path_and_layout(tmp_path, fmt):
    missing = tmp_path / "nope"
    with pytest.raises(DatasetError, match="does not exist") as e:
        read_dataset(missing, fmt)
    assert str(missing) in str(e.value) and "layout" in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images") as e:
        read_dataset(tmp_path / "empty", fmt)
    assert str(tmp_path / "empty") in str(e.value)


def test_unknown_format(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset format"):
        read_dataset(tmp_path, "coco")


def test_natural_key():
    names = ["IMG_10.jpg", "IMG_2.jpg", "IMG_1.jpg", "img_3.jpg", "10.jpg", "9.jpg", "a.jpg"]
    assert sorted(names, key=lambda n: natural_key(Path(n))) == [
        "9.jpg", "10.jpg", "a.jpg", "IMG_1.jpg", "IMG_2.jpg", "img_3.jpg", "IMG_10.jpg"
    ]


def test_load_image_rgb_gray_and_failures(tmp_path):
    bgr = np.zeros((8, 16, 3), dtype=np.uint8)
    bgr[..., 0] = 255  # pure blue in OpenCV's BGR
    cv2.imwrite(str(tmp_path / "blue.png"), bgr)
    rgb = load_image(tmp_path / "blue.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (8, 16, 3)
    assert (rgb[..., 2] == 255).all() and (rgb[..., :2] == 0).all()
    cv2.imwrite(str(tmp_path / "gray.png"), np.full((5, 7), 77, dtype=np.uint8))
    g = load_image(tmp_path / "gray.png")
    assert g.shape == (5, 7, 3) and (g == 77).all()

    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    for name, reason in [("junk.jpg", "cannot decode"), ("empty.jpg", "empty"), ("missing.jpg", "cannot read")]:
        with pytest.raises(BadImage, match=reason) as e:
            load_image(tmp_path / name)
        assert name in str(e.value) and e.value.path == tmp_path / name and reason in e.value.reason


def test_annotation_is_frozen():
    a = Annotation(Path("x.jpg"), np.zeros((0, 2), np.float32), None)
    with pytest.raises(AttributeError):
        a.points = np.ones((1, 2))  # type: ignore[misc]
    assert a.count == 0


# --------------------------------------------------------------------------- real data


@pytest.mark.shared_data
def test_real_shanghaitech_b(shared_data):
    from PIL import Image

    root = shared_data / "shanghaitech_b" / "train_data"
    if not root.is_dir():
        pytest.skip(f"{root} absent")
    index = read_dataset(root, "shanghaitech")
    assert index.skipped == []
    assert len(index.items) == 400
    assert index.total_points == 49_151
    assert index.items[1].image_path.name == "IMG_2.jpg" and index.items[9].image_path.name == "IMG_10.jpg"
    for ann in index.items:
        with Image.open(ann.image_path) as im:  # header only: cheap
            w, h = im.size
        res = density_map(ann.points, (h, w))
        assert res.count == pytest.approx(ann.count - res.outside, rel=1e-5, abs=1e-3)
        assert res.outside == 0, ann
