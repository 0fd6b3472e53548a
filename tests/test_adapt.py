"""End-to-end adaptation on tiny frames: the orchestration, the gate and publishing."""

import json
from dataclasses import replace

import cv2
import numpy as np
import pytest
import scipy.io
import torch

from adapt.adapt import AdaptConfig, AdaptError, adapt_camera, main
from adapt.checkpoint import save_checkpoint
from adapt.flip_stage import FlipStageConfig, flip_batch, run_flip_stage
from adapt.pseudo_label import PseudoLabelConfig, select_confident
from adapt.registry import BASE, Registry
from adapt.validation import GateConfig
from tests.test_network import perturbed_model


def write_shanghaitech(root, n, rng, hw=(96, 128)):
    (root / "images").mkdir(parents=True)
    (root / "ground-truth").mkdir()
    for i in range(1, n + 1):
        img = rng.integers(0, 255, (*hw, 3), dtype=np.uint8)
        pts = rng.uniform([0, 0], [hw[1], hw[0]], size=(int(rng.integers(0, 20)), 2))
        cv2.imwrite(str(root / "images" / f"IMG_{i}.jpg"), img)
        info = np.empty((1, 1), dtype=object)
        info[0, 0] = np.array([[(pts, np.array([[len(pts)]]))]], dtype=[("location", "O"), ("number", "O")])
        scipy.io.savemat(root / "ground-truth" / f"GT_IMG_{i}.mat", {"image_info": info})
    (root / "meta.json").write_text("{}")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapt")
    rng = np.random.default_rng(0)
    write_shanghaitech(root / "synth", 8, rng)
    frames = root / "frames"
    frames.mkdir()
    for i in range(12):
        # a vertical gradient gives upright and upside-down frames something to tell apart
        img = np.tile(np.linspace(0, 255, 96, dtype=np.uint8)[:, None, None], (1, 128, 3))
        img = np.clip(img.astype(int) + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(frames / f"{i:03d}.jpg"), img)
    reg = Registry(root / "models")
    save_checkpoint(root / "base.pt", perturbed_model(), {"version": "v0"})
    reg.publish(BASE, {"model.pt": root / "base.pt"}, {}, "v0")
    return root


def tiny_config(root, **kw):
    cfg = AdaptConfig(
        camera="lobby", frames=root / "frames", synthetic=root / "synth", registry_root=root / "models",
        buffer_root=root / "buffer", max_side=128, device="cpu", synth_crop=64,
        flip=FlipStageConfig(steps=3), pseudo=PseudoLabelConfig(rounds=2, steps_per_round=2, crop=64, max_side=128),
    )
    return replace(cfg, **kw)


def test_flip_batch_labels_upside_down_copies():
    x = torch.arange(2 * 4 * 3 * 3, dtype=torch.uint8).reshape(2, 4, 3, 3)
    images, labels = flip_batch(x)
    assert labels.tolist() == [0, 0, 1, 1]
    assert torch.equal(images[2], x[0].flip(0))


def test_adaptation_steps_keep_the_source_batchnorm_statistics():
    """Target-only batches must not drag BN statistics along: that alone moves counts."""
    model = perturbed_model()
    bn = [(k, v.clone()) for k, v in model.state_dict().items() if k.endswith(("running_mean", "running_var"))]
    weight = model.decoder_out[1].weight.detach().clone()
    rng = np.random.default_rng(0)

    def batches(n, with_density):
        while True:
            b = {"image": torch.from_numpy(rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8))}
            if with_density:
                b["density"] = torch.rand(n, 1, 8, 8) * 0.1
            yield b

    stats = run_flip_stage(model, batches(4, True), batches(4, False), FlipStageConfig(steps=2), torch.device("cpu"))
    assert stats["steps"] == 2
    assert bn and all(torch.equal(v, model.state_dict()[k]) for k, v in bn)
    assert not torch.equal(weight, model.decoder_out[1].weight)  # the weights did learn


def test_select_confident_keeps_the_lowest_fraction_and_never_padding():
    std = [np.array([[0.1, 0.2], [0.3, 9.0]]), np.array([[0.05, 0.4], [0.5, 0.6]])]
    valid = [np.array([[True, True], [True, False]]), np.ones((2, 2), bool)]
    keep = select_confident(std, valid, PseudoLabelConfig(keep_fraction=0.5))
    assert not keep[0][1, 1]
    assert keep[0].sum() + keep[1].sum() == 4  # 7 valid cells, lowest half (quantile inclusive)
    assert keep[1][0, 0] and not keep[1][1, 1]


def test_adaptation_runs_gates_and_publishes_only_if_accepted(setup):
    reg = Registry(setup / "models")
    # a gate that cannot be passed: nothing may be published
    report = adapt_camera(tiny_config(setup, gate=GateConfig(min_flip_accuracy=1.01)))
    assert report["validation"]["verdict"] == "reject" and report["published"] is None
    assert reg.current("lobby") is None and reg.versions("lobby") == []
    assert report["frames"] == {"train": 10, "held_out": 2}
    assert 1 <= len(report["pseudo_label_rounds"]) <= 2
    assert report["flip_stage"]["steps"] == 3
    # a permissive gate: the candidate is exported and becomes current
    report = adapt_camera(tiny_config(setup, gate=GateConfig(require_flip=False, min_count_ratio=0.0, max_count_ratio=1e9, min_uncertainty_drop=-1e9)))
    assert report["validation"]["verdict"] == "accept", report["validation"]["reasons"]
    current = reg.current("lobby")
    assert current is not None and current.version == report["published"]
    assert current.onnx.is_file()
    card = current.card()
    assert card["parent"] == "v0" and card["validation"]["verdict"] == "accept"


def test_a_refused_pseudo_label_stage_falls_back_on_the_accepted_flip_stage(setup):
    # flip stage at lr 0 leaves the parent as it is (count ratio exactly 1);
    # pseudo-label rounds at a wild lr move the count out of a 1% band
    tight = GateConfig(require_flip=False, min_count_ratio=0.99, max_count_ratio=1.01, min_uncertainty_drop=-1e9)
    report = adapt_camera(tiny_config(
        setup, camera="fallback", gate=tight, publish=False, flip=FlipStageConfig(steps=2, lr=0.0),
        pseudo=PseudoLabelConfig(rounds=1, steps_per_round=2, crop=64, max_side=128, lr=0.5),
    ))
    assert report["flip_stage"]["validation"]["verdict"] == "accept"
    assert report["refused_after_pseudo_labels"]["verdict"] == "reject"
    assert report["candidate_from"].startswith("flip stage")
    assert report["validation"]["verdict"] == "accept"
    assert report["candidate_stats"]["mean_count"] == pytest.approx(report["parent_stats"]["mean_count"])


def test_bad_inputs_publish_nothing(setup, tmp_path):
    with pytest.raises(AdaptError, match="only 3 frames"):
        few = tmp_path / "few"
        few.mkdir()
        for i in range(3):
            cv2.imwrite(str(few / f"{i}.jpg"), np.zeros((96, 128, 3), np.uint8))
        adapt_camera(tiny_config(setup, frames=few))
    with pytest.raises(AdaptError, match="does not exist"):
        adapt_camera(tiny_config(setup, frames=tmp_path / "nope"))
    out = tmp_path / "r.json"
    assert main(["--camera", "lobby", "--base", str(tmp_path / "missing.pt"), "--frames", str(setup / "frames"), "--json", str(out)]) == 1
    assert json.loads(out.read_text())["published"] is None
    assert main(["--camera", "../etc", "--frames", str(setup / "frames")]) == 1
    # a buffer still filling is a skip (exit 4), recorded for the metrics
    from adapt.runs import read_runs

    assert main(["--camera", "lobby", "--frames", str(tmp_path / "few"), "--models", str(setup / "models"), "--record", str(tmp_path / "var")]) == 4
    assert [r["result"] for r in read_runs(tmp_path / "var", "lobby")] == ["skipped"]


def test_divergence_publishes_nothing(setup):
    reg = Registry(setup / "models")
    before = reg.current("lobby")
    with pytest.raises(FloatingPointError):
        adapt_camera(tiny_config(setup, flip=FlipStageConfig(steps=3, lam=float("nan"))))
    assert reg.current("lobby") == before


def test_adapt_from_a_video_file_with_one_command(setup, tmp_path):
    from streamer.sources.testclip import write_clip

    clip = write_clip(tmp_path / "cam.mp4", width=160, height=128, fps=5, seconds=6, gop=5)
    out = tmp_path / "report.json"
    code = main([
        "--camera", "gate", "--frames", str(clip.path), "--models", str(setup / "models"), "--synthetic", str(setup / "synth"),
        "--buffer", str(tmp_path / "buffer"), "--json", str(out), "--flip-steps", "2", "--rounds", "1", "--steps-per-round", "1",
        "--max-side", "128", "--device", "cpu", "--no-publish",
    ])
    report = json.loads(out.read_text())
    assert code in (0, 3) and report["validation"]["verdict"] in ("accept", "reject")
    assert report["frames"]["train"] + report["frames"]["held_out"] >= 8
    assert len(list((tmp_path / "buffer" / "gate").glob("*.jpg"))) >= 8  # the video was sampled into the buffer
