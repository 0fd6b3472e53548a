from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from adapt.data.crowd_dataset import (
    AugmentConfig,
    CrowdDataset,
    FrameFolder,
    collate,
    color_jitter,
    plan_crop,
    sample_rng,
)
from adapt.data.datasets import Annotation, DatasetError, read_dataset


def _image(path: Path, hw: tuple[int, int], seed: int = 0) -> Path:
    img = np.random.default_rng(seed).integers(30, 220, (*hw, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), img)
    return path


def _ann(path: Path, points: np.ndarray, head_sizes: np.ndarray | None = None) -> Annotation:
    return Annotation(path, np.asarray(points, np.float32).reshape(-1, 2), head_sizes)


@pytest.fixture
def items(tmp_path) -> list[Annotation]:
    """Four images of different sizes (one smaller than the crop) with points incl. edges and strays."""
    rng = np.random.default_rng(0)
    out = []
    for i, hw in enumerate([(200, 300), (90, 120), (300, 180), (64, 64)]):
        h, w = hw
        pts = rng.uniform((0, 0), (w, h), size=(30 + 10 * i, 2))
        pts = np.concatenate([pts, [[0, 0], [w - 0.01, h - 0.01], [w + 5, 10]]])  # corner, corner, outside
        out.append(_ann(_image(tmp_path / f"img_{i}.png", hw, seed=i), pts))
    return out


CFG = AugmentConfig(crop=(128, 128))


def test_training_samples_shapes_and_count_equals_density_sum(items):
    ds = CrowdDataset(items, CFG, seed=3)
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            s = ds[i]
            assert s["image"].dtype == torch.uint8 and s["image"].shape == (128, 128, 3)
            assert s["density"].dtype == torch.float32 and s["density"].shape == (1, 16, 16)
            assert s["count"].dtype == torch.float32 and s["count"].shape == ()
            assert float(s["density"].sum()) == pytest.approx(float(s["count"]), abs=1e-4)
            assert s["skipped"] == []
    assert float(ds[0]["count"]) > 0


def test_crop_count_matches_points_in_the_drawn_box(items):
    """Independent check: the count is the number of labelled points inside the source box of the plan."""
    ds = CrowdDataset(items, CFG, seed=11)
    for i, ann in enumerate(items):
        s = ds[i]
        h, w = cv2.imread(str(ann.image_path)).shape[:2]
        plan = plan_crop((h, w), CFG, sample_rng(11, 0, i))
        y0, x0, bh, bw = plan.box
        p = ann.points
        inside = (p[:, 0] >= x0) & (p[:, 0] < x0 + bw) & (p[:, 1] >= y0) & (p[:, 1] < y0 + bh)
        assert float(s["count"]) == inside.sum()


def test_augmented_density_stays_aligned_with_pixels(tmp_path):
    """One bright blob per image: after rescale, crop and flip, the density peak sits on the blob."""
    cfg = AugmentConfig(crop=(96, 96), scale_range=(0.6, 1.4), color_jitter=0.0, gray_prob=0.0)
    for k in range(6):
        img = np.zeros((120, 160, 3), np.uint8)
        x, y = 40 + 15 * k, 30 + 9 * k
        cv2.circle(img, (x, y), 4, (255, 255, 255), -1)
        path = tmp_path / f"blob_{k}.png"
        cv2.imwrite(str(path), img)
        ds = CrowdDataset([_ann(path, [[x + 0.5, y + 0.5]], np.array([8.0]))], cfg, seed=k)
        flips = set()
        for epoch in range(8):
            ds.set_epoch(epoch)
            s = ds[0]
            if float(s["count"]) == 0:
                continue
            d = s["density"][0].numpy()
            cy, cx = np.unravel_index(d.argmax(), d.shape)
            im = s["image"].numpy()[..., 0].astype(float)
            by, bx = np.argwhere(im > 128).mean(axis=0)
            assert abs(by - (cy * 8 + 4)) <= 6 and abs(bx - (cx * 8 + 4)) <= 6
            flips.add(plan_crop((120, 160), cfg, sample_rng(k, epoch, 0)).flip)
        assert flips  # at least one sample held the blob


def test_small_image_is_zero_padded_and_jitter_leaves_padding_black(tmp_path):
    path = _image(tmp_path / "small.png", (40, 50))
    cfg = AugmentConfig(crop=(64, 64), scale_range=(1.0, 1.0), hflip=False, color_jitter=0.5, gray_prob=0.5)
    ds = CrowdDataset([_ann(path, [[10, 10], [49.9, 39.9], [55, 20]])], cfg)
    for epoch in range(4):
        ds.set_epoch(epoch)
        s = ds[0]
        img = s["image"].numpy()
        assert (img[40:] == 0).all() and (img[:, 50:] == 0).all()
        assert img[:40, :50].any()
        assert float(s["count"]) == 2  # the stray point at x=55 is outside the 50-px image
        assert float(s["density"].sum()) == pytest.approx(2.0, abs=1e-5)


def test_eval_pads_to_multiple_of_32_and_counts_all_labels(items):
    ds = CrowdDataset(items, None)
    s = ds[1]  # 90 x 120
    assert s["image"].shape == (96, 128, 3) and s["density"].shape == (1, 12, 16)
    assert s["valid_hw"].tolist() == [90, 120] and int(s["index"]) == 1
    img = s["image"].numpy()
    assert (img[90:] == 0).all() and (img[:, 120:] == 0).all()
    np.testing.assert_array_equal(img[:90, :120], cv2.imread(str(items[1].image_path))[..., ::-1])
    assert float(s["count"]) == items[1].count  # all labels, including the stray one
    assert float(s["density"].sum()) == pytest.approx(items[1].count - 1, abs=1e-4)  # stray is outside

    small = CrowdDataset(items, None, max_side=100)[0]  # 200 x 300 -> 67 x 100 -> padded 96 x 128
    assert small["valid_hw"].tolist() == [67, 100] and small["image"].shape == (96, 128, 3)
    assert float(small["density"].sum()) == pytest.approx(items[0].count - 1, abs=1e-4)


def test_determinism_by_seed_epoch_index(items):
    a, b = CrowdDataset(items, CFG, seed=5), CrowdDataset(items, CFG, seed=5)
    for i in range(len(items)):
        sa, sb = a[i], b[i]
        assert torch.equal(sa["image"], sb["image"]) and torch.equal(sa["density"], sb["density"])
    b.set_epoch(1)
    assert not torch.equal(a[0]["image"], b[0]["image"])
    c = CrowdDataset(items, CFG, seed=6)
    assert not torch.equal(a[0]["image"], c[0]["image"])
    # call order does not matter
    first = [a[i]["image"] for i in range(len(items))]
    for i in reversed(range(len(items))):
        assert torch.equal(a[i]["image"], first[i])


def test_worker_count_does_not_change_batches(items):
    def batches(workers: int) -> list[dict]:
        ds = CrowdDataset(items, CFG, seed=9)
        ds.set_epoch(2)
        dl = DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=collate)
        return list(dl)

    for x, y in zip(batches(0), batches(2)):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["density"], y["density"])
        assert torch.equal(x["count"], y["count"])


def test_set_epoch_reaches_persistent_workers(items):
    ref = CrowdDataset(items, CFG, seed=4)
    ds = CrowdDataset(items, CFG, seed=4)
    dl = DataLoader(ds, batch_size=4, num_workers=1, persistent_workers=True, collate_fn=collate)
    for epoch in range(2):
        ds.set_epoch(epoch)
        ref.set_epoch(epoch)
        (batch,) = list(dl)
        assert torch.equal(batch["image"], collate([ref[i] for i in range(4)])["image"])


def test_corrupt_image_mid_epoch_is_skipped_counted_and_logged_once(items, tmp_path, caplog):
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    mixed = [items[0], _ann(bad, [[1, 1]]), items[2]]
    ds = CrowdDataset(mixed, CFG, seed=1)
    with caplog.at_level(logging.WARNING, logger="adapt.data.crowd_dataset"):
        for epoch in range(2):
            ds.set_epoch(epoch)
            samples = [ds[i] for i in range(3)]
            ref = ds[2]
            assert torch.equal(samples[1]["image"], ref["image"])  # index 1 replaced by index 2
            assert samples[1]["skipped"] == ["cannot decode image"] and samples[0]["skipped"] == []
    assert ds.skipped == {"cannot decode image": 2}  # one replacement per epoch
    assert sum("corrupt.png" in r.getMessage() for r in caplog.records) == 1

    dl = DataLoader(CrowdDataset(mixed, CFG, seed=1), batch_size=3, num_workers=0, collate_fn=collate)
    batch = next(iter(dl))
    assert batch["image"].shape == (3, 128, 128, 3) and batch["skipped"] == ["cannot decode image"]
    assert batch["replaced"].tolist() == [False, True, False]


def test_eval_that_drops_replaced_samples_sees_each_readable_image_once(items, tmp_path):
    bad = [tmp_path / f"bad_{k}.jpg" for k in range(2)]
    for p in bad:
        p.write_bytes(b"garbage")
    mixed = [items[0], _ann(bad[0], [[1, 1]]), _ann(bad[1], []), items[1], items[2]]
    dl = DataLoader(CrowdDataset(mixed, None), batch_size=1, num_workers=1, collate_fn=collate)
    seen, unreadable = [], 0
    for batch in dl:
        unreadable += int(batch["replaced"].sum())
        seen += batch["index"][~batch["replaced"]].tolist()
    assert seen == [0, 3, 4] and unreadable == 2


def test_all_unreadable_raises(tmp_path):
    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"nope")
    with pytest.raises(DatasetError, match="unreadable"):
        CrowdDataset([_ann(bad, [])], CFG)[0]
    with pytest.raises(DatasetError):
        CrowdDataset([], CFG)


def test_frame_folder_train_eval_and_skips(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for n in (1, 2, 10):
        _image(frames / f"f_{n}.jpg", (100, 140), seed=n)
    (frames / "f_3.jpg").write_bytes(b"broken")
    train = FrameFolder.from_folder(frames, CFG, seed=2)
    assert [p.name for p in train.paths] == ["f_1.jpg", "f_2.jpg", "f_3.jpg", "f_10.jpg"]
    s = train[0]
    assert s["image"].shape == (128, 128, 3) and "density" not in s
    assert torch.equal(train[2]["image"], train[3]["image"]) and train.skipped["cannot decode image"] == 1
    ev = FrameFolder(train.paths, None, max_side=70)
    e = ev[1]
    assert e["image"].shape == (64, 96, 3) and e["valid_hw"].tolist() == [50, 70]
    b = collate([ev[0], ev[1]])
    assert b["image"].shape == (2, 64, 96, 3) and b["index"].tolist() == [0, 1] and "density" not in b
    with pytest.raises(DatasetError):
        FrameFolder.from_folder(tmp_path / "nothing-here", None)


def test_collate_shapes_and_mismatch(items):
    ds = CrowdDataset(items, CFG)
    b = collate([ds[0], ds[1], ds[2]])
    assert b["image"].shape == (3, 128, 128, 3) and b["image"].dtype == torch.uint8
    assert b["density"].shape == (3, 1, 16, 16) and b["count"].shape == (3,)
    ev = CrowdDataset(items, None)
    with pytest.raises(ValueError, match="batch_size=1"):
        collate([ev[0], ev[1]])


def test_color_jitter_identity_and_gray():
    img = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(color_jitter(img, np.ones(3), gray=False), img)
    g = color_jitter(img, np.ones(3), gray=True)
    assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()
    bright = color_jitter(img, np.array([1.3, 1.0, 1.0]), gray=False)
    assert bright.astype(int).sum() > img.astype(int).sum()


@pytest.mark.parametrize(
    "kwargs", [{"crop": (100, 128)}, {"scale_range": (0, 1)}, {"scale_range": (2, 1)}, {"color_jitter": 1.0}, {"gray_prob": 2}]
)
def test_augment_config_validation(kwargs):
    with pytest.raises(ValueError):
        AugmentConfig(**kwargs)


@pytest.mark.shared_data
def test_real_shanghaitech_b_eval_and_train_samples(shared_data):
    root = shared_data / "shanghaitech_b" / "train_data"
    if not root.is_dir():
        pytest.skip(f"{root} absent")
    items = read_dataset(root, "shanghaitech", limit=12).items
    ev = CrowdDataset(items, None)
    tr = CrowdDataset(items, AugmentConfig(), seed=0)
    for i in range(len(items)):
        e = ev[i]
        assert e["image"].shape == (768, 1024, 3)
        assert float(e["density"].sum()) == pytest.approx(items[i].count, rel=1e-5)
        t = tr[i]
        assert float(t["density"].sum()) == pytest.approx(float(t["count"]), abs=1e-3)
