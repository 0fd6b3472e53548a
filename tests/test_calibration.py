"""Count calibration from labelled frames: the maths, the model's count_scale, and crowdwatch calibrate end to end."""

import json

import cv2
import numpy as np
import pytest
import torch

from adapt.commands.calibrate import main
from adapt.model.checkpoint import load_checkpoint, save_checkpoint
from adapt.model.network import ModelConfig
from adapt.selfsup.calibration import CalibrationConfig, calibrate_camera, fit_scale, judge, leave_one_out_mae
from adapt.store.registry import BASE, Registry
from adapt.training.engine import predict_counts
from tests.test_network import perturbed_model

CELLS = (96 // 8) * (128 // 8)
PER_CELL = 0.05  # people per cell the test model predicts everywhere


def counting_model():
    """A model that counts PER_CELL people in every cell, whatever the frame (0.05 * 192 = 9.6 a frame)."""
    m = perturbed_model()
    with torch.no_grad():
        m.decoder_out[-1].weight.zero_()
        m.decoder_out[-1].bias.fill_(PER_CELL * m.config.density_scale)
    return m


def write_labels(root, counts, rng):
    """A crowdwatch-label folder: 96x128 frames with the given number of head points each."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i, n in enumerate(counts):
        cv2.imwrite(str(root / "images" / f"f{i}.jpg"), rng.integers(0, 255, (96, 128, 3), dtype=np.uint8))
        pts = rng.uniform([0, 0], [128, 96], size=(n, 2)).tolist()
        (root / "labels" / f"f{i}.json").write_text(json.dumps({"points": pts}))
    return root


@pytest.fixture()
def registry(tmp_path):
    reg = Registry(tmp_path / "models")
    save_checkpoint(tmp_path / "base.pt", counting_model(), {"version": "v0"})
    reg.publish(BASE, {"model.pt": tmp_path / "base.pt"}, {}, "v0")
    return reg


def test_fit_scale_and_leave_one_out_by_hand():
    p, t = np.array([10.0, 10.0, 10.0, 10.0]), np.array([0.0, 40.0, 2.0, 30.0])
    assert fit_scale(p, t) == pytest.approx(72 / 40)
    # frame 0 is scaled by what frames 1-3 say (72/30), and so on
    expected = np.mean([abs(10 * 72 / 30 - 0), abs(10 * 32 / 30 - 40), abs(10 * 70 / 30 - 2), abs(10 * 42 / 30 - 30)])
    assert leave_one_out_mae(p, t) == pytest.approx(expected)
    assert np.isnan(fit_scale(np.zeros(3), np.ones(3)))


def test_judge_accepts_a_consistent_overcount_and_refuses_the_rest():
    p = np.array([20.0, 40.0, 60.0, 80.0, 100.0])
    ok = judge(p, p / 2)
    assert ok.accepted and ok.scale == pytest.approx(0.5) and ok.mae_leave_one_out == pytest.approx(0.0)
    assert ok.mae_before == pytest.approx(30.0)
    # frames that disagree: no factor predicts a left-out frame better than none
    noisy = judge(np.full(4, 10.0), np.array([0.0, 40.0, 2.0, 30.0]))
    assert not noisy.accepted and "leave-one-out" in noisy.reasons[0]
    assert "at least 4" in judge(p[:3], p[:3] / 2).reasons[0]
    assert "outside" in judge(p, p * 10).reasons[0]
    assert "nothing to scale" in judge(p, np.zeros(5)).reasons[0]
    assert "nothing to scale" in judge(np.zeros(5), p).reasons[0]
    # the parent's own calibration counts towards the model's bounds
    assert "total scale" in judge(p, p * 2, parent_scale=15.0).reasons[0]
    assert not judge(p, p / 2, cfg=CalibrationConfig(min_scale=0.6)).accepted
    assert "already calibrated" in judge(p, p * 1.01).reasons[0]


def test_count_scale_scales_what_is_served_not_what_is_trained():
    m = perturbed_model()
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (4, 64, 64, 3), dtype=np.uint8))
    with torch.inference_mode():
        before, train_before = m.ensemble(x), m.forward_train(x)
        m.set_count_scale(0.5)
        after, train_after = m.ensemble(x), m.forward_train(x)
        source = m.ensemble(x, calibrated=False)
        naive = m.naive_ensemble(x)
    assert torch.allclose(after, before * 0.5) and torch.equal(source, before)
    assert torch.equal(train_after, train_before)
    assert torch.allclose(naive, after, atol=1e-7)
    with pytest.raises(ValueError, match="count_scale"):
        ModelConfig(count_scale=0.0)


def test_count_scale_survives_a_checkpoint_and_goes_into_the_onnx_graph(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from adapt.model.export import export_onnx, read_metadata

    m = counting_model()
    m.set_count_scale(0.25)
    save_checkpoint(tmp_path / "m.pt", m, {"version": "x"})
    loaded = load_checkpoint(tmp_path / "m.pt").build()
    assert loaded.config.count_scale == 0.25
    onnx = export_onnx(loaded, tmp_path / "m.onnx", {"version": "x"})
    assert read_metadata(onnx)["count_scale"] == "0.25"
    x = np.zeros((1, 96, 128, 3), np.uint8)
    density = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"]).run(["density"], {"image": x})[0]
    assert density.sum() == pytest.approx(0.25 * PER_CELL * CELLS, rel=1e-4)


def test_calibrate_publishes_a_consistent_factor_and_serves_it(registry, tmp_path):
    rng = np.random.default_rng(0)
    labels = write_labels(tmp_path / "labels", [5, 5, 5, 5, 5], rng)  # the model says 9.6 on every frame
    report = calibrate_camera("gate_3", labels, registry.root, max_side=128, device="cpu")
    c = report["calibration"]
    assert report["validation"]["verdict"] == "accept" and report["published"]
    assert c["frames"] == 5 and c["scale"] == pytest.approx(5 / (PER_CELL * CELLS), rel=1e-4)
    assert c["mae_leave_one_out"] < 1e-3 < c["mae_before"]
    current = registry.current("gate_3")
    assert current.version == report["published"] and current.card()["parent"] == "v0"
    served = load_checkpoint(current.checkpoint).build()
    with torch.inference_mode():
        count, _, _ = predict_counts(served, torch.zeros((1, 96, 128, 3), dtype=torch.uint8))
    assert float(count[0]) == pytest.approx(5.0, rel=1e-4)
    # a second calibration starts from the calibrated model: nothing left to fix, no new version
    again = calibrate_camera("gate_3", labels, registry.root, max_side=128, device="cpu")
    assert again["parent_count_scale"] == pytest.approx(served.config.count_scale)
    assert again["validation"]["verdict"] == "reject" and "already calibrated" in again["validation"]["reasons"][0]
    assert again["published"] is None and registry.current("gate_3").version == report["published"]


def test_calibrate_refuses_frames_that_disagree_and_publishes_nothing(registry, tmp_path, capsys):
    labels = write_labels(tmp_path / "labels", [0, 40, 2, 30], np.random.default_rng(1))
    code = main(["--camera", "gate_3", "--labels", str(labels), "--models", str(registry.root), "--max-side", "128", "--device", "cpu",
                 "--json", str(tmp_path / "out.json")])
    assert code == 3
    assert registry.current("gate_3") is None
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["published"] is None and "leave-one-out" in report["validation"]["reasons"][0]
    assert [f["true"] for f in report["per_frame"]] == [0, 40, 2, 30]
    assert "nothing published" in capsys.readouterr().out


def test_calibrate_bad_input_is_a_clear_error(registry, tmp_path, capsys):
    assert main(["--camera", "../etc", "--models", str(registry.root)]) == 1
    assert "nothing was published" in capsys.readouterr().err
    assert main(["--camera", "gate_3", "--labels", str(tmp_path / "missing"), "--models", str(registry.root)]) == 1
    assert "nothing was published" in capsys.readouterr().err
    # frames not labelled yet are not read as empty, and an unreadable frame is skipped, counted
    labels = write_labels(tmp_path / "labels", [5, 5, 5, 5, 5], np.random.default_rng(2))
    (labels / "images" / "unlabelled.jpg").write_bytes((labels / "images" / "f0.jpg").read_bytes())
    (labels / "images" / "f4.jpg").write_bytes(b"not a jpeg")
    report = calibrate_camera("gate_3", labels, registry.root, max_side=128, device="cpu", publish=False)
    assert report["calibration"]["frames"] == 4 and report["unreadable_frames"] == 1
    assert report["validation"]["verdict"] == "accept" and report["published"] is None
