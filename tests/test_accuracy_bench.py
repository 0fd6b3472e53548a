"""bench/accuracy.py and its peer counters (bench/peers.py) on tiny images made here."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import accuracy  # noqa: E402
from peers import HogParams, constant_prediction, hog_count, nms, people_detector, score  # noqa: E402


def test_blank_frames_hold_no_people():
    det = people_detector()
    for img in (np.zeros((240, 320, 3), np.uint8), np.full((480, 640, 3), 128, np.uint8)):
        assert hog_count(img, HogParams(), det) == 0
        assert hog_count(img, HogParams(nms_iou=0.3, grey=True, max_side=200), det) == 0
    assert hog_count(np.zeros((50, 30, 3), np.uint8), HogParams(), det) == 0  # smaller than the 64x128 window


def test_hog_rejects_non_bgr_input():
    with pytest.raises(ValueError):
        hog_count(np.zeros((200, 200), np.uint8))


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 10, 10], [0, 0, 10, 10]])
    scores = np.array([0.5, 0.9, 0.3, 0.1])
    assert nms(boxes, scores, 0.3).tolist() == [1, 2]  # IoU(0, 1) = 81/119 > 0.3
    assert sorted(nms(boxes, scores, 0.99).tolist()) == [0, 1, 2]  # only the identical pair merges
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []


def test_metrics_of_known_vectors():
    s = score([1, 2, 3], [2, 2, 5])  # errors 1, 0, 2
    assert s["mae"] == pytest.approx(1.0)
    assert s["rmse"] == pytest.approx(math.sqrt(5 / 3))
    assert (s["mean_pred"], s["mean_true"], s["n"]) == (pytest.approx(3.0), pytest.approx(2.0), 3)
    assert math.isnan(score([], [])["mae"])


def test_constants_are_the_mean_and_median_of_the_truth():
    t = np.array([1.0, 2.0, 10.0])
    assert constant_prediction(t, "mean").tolist() == [13 / 3] * 3
    assert constant_prediction(t, "median").tolist() == [2.0] * 3
    assert score(t, constant_prediction(t, "median"))["mae"] == pytest.approx(3.0)
    with pytest.raises(ValueError):
        constant_prediction(t, "mode")


def test_cli_counts_an_unreadable_frame_as_a_skip(tmp_path):
    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    cv2.imwrite(str(root / "images" / "a.png"), np.zeros((160, 120, 3), np.uint8))
    (root / "images" / "b.jpg").write_bytes(b"not a jpeg")
    for stem, pts in (("a", [[10, 10], [20, 20]]), ("b", [[5, 5]])):
        (root / "labels" / f"{stem}.json").write_text(json.dumps({"points": pts}))
    out = tmp_path / "out"
    assert accuracy.main(["--dataset", f"{root}:json", "--methods", "hog,mean,median", "--out", str(out)]) == 0
    rep = json.loads((out / "accuracy.json").read_text())["datasets"][0]
    hog = rep["methods"]["hog"]
    assert (hog["n"], hog["unreadable"], hog["mae"], hog["mean_pred"]) == (1, 1, 2.0, 0.0)
    assert rep["methods"]["mean"]["n"] == 1 and rep["methods"]["mean"]["oracle"] is True
    assert rep["methods"]["mean"]["mae"] == 0.0


def test_cli_rejects_a_bad_dataset_spec():
    with pytest.raises(SystemExit):
        accuracy.main(["--dataset", "somewhere:nonsense", "--methods", "hog"])


@pytest.mark.shared_data
def test_hog_on_the_first_tud_frames_gives_a_finite_mae(shared_data, tmp_path):
    tud = shared_data / "tud_stadtmitte"
    if not tud.is_dir():
        pytest.skip(f"{tud} not present")
    assert accuracy.main(["--dataset", f"{tud}:json", "--methods", "hog", "--limit", "10", "--out", str(tmp_path)]) == 0
    hog = json.loads((tmp_path / "accuracy.json").read_text())["datasets"][0]["methods"]["hog"]
    assert hog["n"] == 10 and math.isfinite(hog["mae"]) and math.isfinite(hog["rmse"])
