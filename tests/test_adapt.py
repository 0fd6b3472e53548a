"""End-to-end adaptation on tiny frames: the orchestration, the gate and publishing."""

import json
from dataclasses import replace

import cv2
import numpy as np
import pytest
import scipy.io
import torch

from adapt.commands.adapt import main
from adapt.model.checkpoint import load_checkpoint, save_checkpoint
from adapt.selfsup.adaptation import AdaptConfig, AdaptError, adapt_camera
from adapt.selfsup.flip_stage import FlipStageConfig, flip_batch
from adapt.selfsup.gate import GateConfig
from adapt.selfsup.pseudo_label import PseudoLabelConfig, select_confident
from adapt.store.registry import BASE, Registry
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
    write_shanghaitech(root / "synth", 16, rng)  # one L_s batch (AdaptConfig.synth_batch)
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
        buffer_root=root / "buffer", scene_root=root / "scene", max_side=128, device="cpu", synth_crop=64,
        flip=FlipStageConfig(steps=3), pseudo=PseudoLabelConfig(rounds=2, steps_per_round=2, max_side=128),
    )
    return replace(cfg, **kw)


def test_flip_batch_labels_upside_down_copies():
    x = torch.arange(2 * 4 * 3 * 3, dtype=torch.uint8).reshape(2, 4, 3, 3)
    images, labels = flip_batch(x)
    assert labels.tolist() == [0, 1, 0, 1]  # interleaved: every mask's share of the batch holds upright frames
    assert torch.equal(images[0], x[0]) and torch.equal(images[1], x[0].flip(0)) and torch.equal(images[3], x[1].flip(0))


def test_fraction_rule_keeps_the_lowest_std_and_never_padding():
    std = [np.array([[0.1, 0.2], [0.3, 9.0]]), np.array([[0.05, 0.4], [0.5, 0.6]])]
    valid = [np.array([[True, True], [True, False]]), np.ones((2, 2), bool)]
    mean = [np.ones((2, 2)), np.ones((2, 2))]
    keep = select_confident(mean, std, mean, valid, PseudoLabelConfig(rule="fraction", keep_fraction=0.5))
    assert not keep[0][1, 1]
    assert keep[0].sum() + keep[1].sum() == 4  # 7 valid cells, lowest half (quantile inclusive)
    assert keep[1][0, 0] and not keep[1][1, 1]


def test_balanced_rule_keeps_occupied_cells_even_when_empty_ones_have_zero_std():
    # What a ReLU head gives: empty cells have std exactly 0, occupied ones do not.
    # Ranking by std would keep only the empty cells; the balanced rule keeps
    # half of each kind, by std / mean and by how far below zero they sit.
    mean = [np.array([[0.0, 0.0, 0.0, 0.0], [0.2, 0.2, 0.01, 0.0]])]
    std = [np.array([[0.0, 0.0, 0.0, 0.0], [0.02, 0.1, 0.004, 0.0]])]
    margin = [np.array([[-0.5, -0.01, -0.3, -0.02], [0.3, 0.4, 0.02, -9.0]])]
    valid = [np.array([[True, True, True, True], [True, True, True, False]])]
    cfg = PseudoLabelConfig(rule="balanced", keep_fraction=0.5)
    keep = select_confident(mean, std, margin, valid, cfg)[0]
    assert keep[1, 0] and keep[1, 2] and not keep[1, 1]  # std/mean 0.1 and 0.4 kept, 0.5 not
    assert keep[0, 0] and keep[0, 2] and not keep[0, 1] and not keep[0, 3]  # surest empty half
    assert not keep[1, 3]  # padding, however sure
    only_std = select_confident(mean, std, margin, valid, PseudoLabelConfig(rule="fraction", keep_fraction=0.5))[0]
    assert not (only_std & (mean[0] > 0)).any()


def test_count_loss_pulls_a_crop_count_back_from_either_side():
    from adapt.training.engine import count_loss

    label = torch.tensor([20.0, 20.0])
    assert count_loss(torch.full((2, 1, 4, 5), 1.0), label).item() == 0.0
    for start in (0.5, 1.5):  # undercount and overcount
        density = torch.full((2, 1, 4, 5), start, requires_grad=True)
        count_loss(density, label).backward()
        assert (density.grad.sign() == (1 if start > 1 else -1)).all()


def test_pseudo_labelled_crops_carry_the_count_of_all_their_cells(tmp_path):
    from adapt.selfsup.pseudo_label import PseudoLabelled, PseudoLabels

    img = tmp_path / "f.jpg"
    cv2.imwrite(str(img), np.zeros((64, 96, 3), np.uint8))
    mean = np.random.default_rng(0).random((8, 12)).astype(np.float32)
    keep = np.zeros((8, 12), bool)
    keep[:2] = True
    labels = PseudoLabels([img], [mean], [mean], [mean], [np.ones_like(keep)], [keep])
    item = PseudoLabelled(labels, crop=32, max_side=None)[0]
    assert item["image"].shape == (32, 32, 3)
    assert item["count"].item() == pytest.approx(item["density"].sum().item(), rel=1e-6)


def test_pseudo_labelled_whole_frames_are_the_labelled_frames(tmp_path):
    from adapt.selfsup.pseudo_label import PseudoLabelled, PseudoLabels

    img = tmp_path / "f.jpg"
    cv2.imwrite(str(img), np.full((64, 96, 3), 90, np.uint8))
    mean = np.random.default_rng(0).random((8, 12)).astype(np.float32)
    keep = mean > 0.5
    labels = PseudoLabels([img], [mean], [mean], [mean], [np.ones_like(keep)], [keep])
    item = PseudoLabelled(labels, crop=None, max_side=None)[0]
    assert item["image"].shape == (64, 96, 3)
    # the whole map, perhaps mirrored with its image
    assert item["count"].item() == pytest.approx(float(mean.sum()), rel=1e-5)
    assert item["mask"].sum().item() == keep.sum()


def test_pseudo_label_config_refuses_bad_values():
    with pytest.raises(ValueError, match="rule"):
        PseudoLabelConfig(rule="median")
    with pytest.raises(ValueError, match="ema_decay"):
        PseudoLabelConfig(ema_decay=1.0)
    with pytest.raises(ValueError, match="ema_decay"):
        FlipStageConfig(ema_decay=-0.1)


def test_warm_up_bounds_the_first_adam_step():
    # Adam's first update is lr * sign(gradient) for every weight; the warm-up scales it down
    from adapt.training.engine import make_optimizer

    for warmup, bound in ((0, 1e-3), (9, 1e-4)):
        model = perturbed_model()
        before = [p.detach().clone() for p in model.parameters()]
        opt, schedule = make_optimizer(model, lr=1e-3, encoder_lr_mult=1.0, weight_decay=0.0, warmup_steps=warmup)
        model.train()
        model.forward_train(torch.rand(4, 64, 64, 3)).pow(2).sum().backward()
        opt.step()
        schedule.step()
        moved = max(float((p.detach() - b).abs().max()) for p, b in zip(model.parameters(), before))
        assert bound * 0.5 < moved <= bound * 1.001, (warmup, moved)
    for _ in range(20):
        opt.step()
        schedule.step()
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-3]  # warm-up over, full rate


def test_parameter_ema_ends_on_the_average_and_is_off_at_zero():
    from adapt.training.engine import ParameterEMA

    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = ParameterEMA(model, 0.5)
    for value in (1.0, 3.0):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update(model)
    ema.apply(model)
    assert torch.allclose(model.weight, torch.full((1, 2), 2.0))  # first update copies 1, then 0.5 * 1 + 0.5 * 3
    off = ParameterEMA(model, 0.0)
    off.update(model)
    with torch.no_grad():
        model.weight.fill_(7.0)
    off.apply(model)
    assert torch.equal(model.weight, torch.full((1, 2), 7.0))
    with pytest.raises(ValueError, match="decay"):
        ParameterEMA(model, 1.0)


def test_flip_stage_keeps_batchnorm_statistics_and_fits_a_banded_head(setup):
    from torch.utils.data import DataLoader

    from adapt.data.crowd_dataset import AugmentConfig, FrameFolder, collate
    from adapt.model.network import ModelConfig
    from adapt.selfsup.adaptation import synthetic_batches
    from adapt.selfsup.flip_stage import run_flip_stage
    from adapt.training.engine import loop_forever

    model = perturbed_model(ModelConfig(flip_rows=1))
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    frames = FrameFolder(sorted((setup / "frames").glob("*.jpg")), AugmentConfig(crop=(64, 64)), seed=0)
    real = loop_forever(DataLoader(frames, batch_size=4, collate_fn=collate))
    synth = synthetic_batches(setup / "synth", 4, 64, 0)
    run_flip_stage(model, synth, real, FlipStageConfig(steps=2), torch.device("cpu"))
    assert torch.equal(bn.running_mean, before)  # the default freezes them
    assert model.config.flip_rows == 4 and model.flip_head[-1].in_features == 4 * 128
    run_flip_stage(model, synth, real, FlipStageConfig(steps=2, freeze_bn=False), torch.device("cpu"))
    assert not torch.equal(bn.running_mean, before)
    # the L_s-only control trains on renders alone: it must not need a real frame
    stats = run_flip_stage(model, synth, iter(()), FlipStageConfig(steps=2, lam=0.0, ema_decay=0.5), torch.device("cpu"))
    assert stats["mean_loss_a"] == 0.0 and stats["mean_loss_s"] > 0


def test_research_switches_run_through_the_product_loops(setup):
    """research/stages.py adds its loss terms to the product's stage loops instead of copying them."""
    import copy

    from torch.utils.data import DataLoader

    from adapt.data.crowd_dataset import AugmentConfig, FrameFolder, collate
    from adapt.selfsup.adaptation import synthetic_batches
    from adapt.training.engine import loop_forever
    from research.stages import ResearchFlipConfig, run_flip_stage

    model = perturbed_model()
    parent = copy.deepcopy(model)
    frames = FrameFolder(sorted((setup / "frames").glob("*.jpg")), AugmentConfig(crop=(64, 64)), seed=0)
    real = loop_forever(DataLoader(frames, batch_size=4, collate_fn=collate))
    synth = synthetic_batches(setup / "synth", 4, 64, 0)
    cfg = ResearchFlipConfig(steps=2, lam=0.0, anchor_weight=1.0, synth_count_weight=0.5, warmup_steps=1)
    stats = run_flip_stage(model, synth, real, cfg, torch.device("cpu"), parent)
    assert stats["mean_loss_anchor"] >= 0 and stats["mean_loss_count"] > 0 and stats["mean_loss_a"] == 0.0
    with pytest.raises(ValueError, match="parent"):
        run_flip_stage(model, synth, real, cfg, torch.device("cpu"))

    from adapt.selfsup.pseudo_label import PseudoLabelled, PseudoLabels
    from research.stages import ResearchPseudoConfig, finetune_round

    paths = sorted((setup / "frames").glob("*.jpg"))[:4]
    mean = [np.full((12, 16), 0.01, np.float32) for _ in paths]
    keep = [np.ones((12, 16), bool) for _ in paths]
    labels = PseudoLabels(paths, mean, mean, mean, keep, keep)
    real = loop_forever(DataLoader(PseudoLabelled(labels, max_side=128), batch_size=4))
    pcfg = ResearchPseudoConfig(steps_per_round=2, count_weight=0.5, max_side=128)
    losses = finetune_round(model, synth, real, pcfg, torch.device("cpu"))
    assert set(losses) == {"steps", "loss_s", "loss_pseudo", "loss_count"} and all(np.isfinite(v) for v in losses.values())


def test_a_flip_stage_out_of_time_stops_and_says_how_far_it_got(setup):
    from torch.utils.data import DataLoader

    from adapt.data.crowd_dataset import AugmentConfig, FrameFolder, collate
    from adapt.selfsup.adaptation import synthetic_batches
    from adapt.selfsup.flip_stage import run_flip_stage
    from adapt.training.engine import loop_forever

    frames = FrameFolder(sorted((setup / "frames").glob("*.jpg")), AugmentConfig(crop=(64, 64)), seed=0)
    real = loop_forever(DataLoader(frames, batch_size=4, collate_fn=collate))
    checks = iter([False, False, True])
    stats = run_flip_stage(perturbed_model(), synthetic_batches(setup / "synth", 4, 64, 0), real, FlipStageConfig(steps=5),
                           torch.device("cpu"), time_up=lambda: next(checks))
    assert stats["steps"] == 2 and stats["stopped"] == "time budget: 2 of 5 steps" and stats["final_loss_s"] > 0


def test_a_run_out_of_time_still_ends_with_a_verdict_and_never_publishes_an_untrained_model(setup):
    report = adapt_camera(tiny_config(setup, camera="late", time_budget_s=1e-3))
    assert report["time_budget"]["seconds"] == 1e-3 and "flip stage (time budget: 0 of 3 steps)" in report["time_budget"]["cut"]
    assert report["flip_stage"]["steps"] == 0 and report["flip_stage"]["stopped"] == "time budget: 0 of 3 steps"
    assert report["pseudo_label_rounds"][0]["stopped"].startswith("time budget")
    assert report["validation"]["verdict"] == "reject" and report["published"] is None
    assert "the time budget ran out before the first training step" in report["validation"]["reasons"]


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


def test_every_pseudo_label_option_runs_end_to_end(setup):
    pseudo = PseudoLabelConfig(rounds=1, steps_per_round=3, max_side=128, rule="balanced", freeze_bn=True,
                               ema_decay=0.5, synth_weight=0.5, real_weight=0.5)
    cfg = tiny_config(setup, stages=("flip", "pseudo"), publish=False, flip=FlipStageConfig(steps=2, head_rows=4, freeze_bn=True), pseudo=pseudo)
    report = adapt_camera(cfg)
    (r,) = report["pseudo_label_rounds"]
    assert r["loss_pseudo"] >= 0 and 0 < r["kept_fraction"] <= 1
    assert report["candidate_stats"]["flip_accuracy"] is not None


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
    from adapt.store.runs import read_runs

    assert main(["--camera", "lobby", "--frames", str(tmp_path / "few"), "--models", str(setup / "models"), "--record", str(tmp_path / "var")]) == 4
    assert [r["result"] for r in read_runs(tmp_path / "var", "lobby")] == ["skipped"]


def test_fewer_renders_than_one_batch_is_a_clear_error_not_a_hang(setup, tmp_path):
    from adapt.training.engine import loop_forever

    reg = Registry(setup / "models")
    before = reg.current("lobby")
    with pytest.raises(AdaptError, match="16 labelled renders, fewer than one L_s batch \\(32\\)"):
        adapt_camera(tiny_config(setup, synth_batch=32))
    assert reg.current("lobby") == before
    # any loader that cannot fill one batch stops the loop instead of spinning in it
    loader = torch.utils.data.DataLoader(list(range(3)), batch_size=4, drop_last=True)
    with pytest.raises(ValueError, match="a whole pass over 3 samples gave no batch of 4"):
        next(loop_forever(loader))


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


def test_frames_labelled_with_crowdwatch_label_decide_the_gate(setup, tmp_path):
    from adapt.selfsup.labelling import LabelSet

    labels = LabelSet(tmp_path / "labels")
    labels.add(sorted((setup / "frames").glob("*.jpg"))[:3])
    for stem in labels.frames:
        labels.save(stem, [[10, 10], [50, 40], [100, 80]])
    report = adapt_camera(tiny_config(setup, camera="hall", labels=tmp_path / "labels", publish=False))
    v = report["validation"]
    assert v["decided_by"] == "labelled-mae"
    parent, cand = v["parent"]["labelled"], v["candidate"]["labelled"]
    assert parent["frames"] == cand["frames"] == 3
    assert np.isfinite(parent["mae"]) and np.isfinite(cand["mae"])
    assert (v["verdict"] == "accept") == (cand["mae"] <= parent["mae"])


def test_adaptation_keeps_the_parents_count_calibration(setup, tmp_path):
    # a calibrated parent (crowdwatch calibrate): the stages train in source units,
    # so the candidate must keep the factor, and the gate compares served counts
    parent = perturbed_model()
    plain = adapt_camera(tiny_config(setup, camera="calibrated", publish=False, base=setup / "base.pt", save_candidate=tmp_path / "plain.pt"))
    parent.set_count_scale(0.5)
    save_checkpoint(tmp_path / "calibrated.pt", parent, {"version": "v1"})
    report = adapt_camera(tiny_config(setup, camera="calibrated", publish=False, base=tmp_path / "calibrated.pt", save_candidate=tmp_path / "cand.pt"))
    # the factor that holds the parent's count multiplies the parent's calibration
    assert report["keep_count"]["factor"] == pytest.approx(plain["keep_count"]["factor"], rel=1e-4)
    assert load_checkpoint(tmp_path / "cand.pt").model_config.count_scale == pytest.approx(0.5 * report["keep_count"]["factor"], rel=1e-6)
    assert report["parent_stats"]["mean_count"] == pytest.approx(0.5 * plain["parent_stats"]["mean_count"], rel=1e-5)
    # same seed, same source-unit training: the rounds saw the same pseudo labels
    assert report["pseudo_label_rounds"][0]["mean_count"] == pytest.approx(plain["pseudo_label_rounds"][0]["mean_count"], rel=1e-4)


def test_source_renders_of_an_older_renderer_are_rendered_again(tmp_path):
    from adapt.selfsup.adaptation import ensure_synthetic
    from adapt.synth.render import RENDERER_VERSION

    ours = tmp_path / "synth-source"
    ensure_synthetic(ours, 2, 0)
    meta = json.loads((ours / "meta.json").read_text())
    assert meta["renderer_version"] == RENDERER_VERSION and len(list((ours / "images").iterdir())) == 2
    stamp = (ours / "images" / "IMG_1.jpg").stat().st_mtime_ns
    ensure_synthetic(ours, 2, 0)  # current: kept as it is
    assert (ours / "images" / "IMG_1.jpg").stat().st_mtime_ns == stamp
    (ours / "meta.json").write_text(json.dumps({**meta, "renderer_version": "crowdwatch-synth-0"}))
    ensure_synthetic(ours, 2, 0)
    assert json.loads((ours / "meta.json").read_text())["renderer_version"] == RENDERER_VERSION
    # a labelled set from elsewhere is never rendered over
    theirs = tmp_path / "gcc"
    write_shanghaitech(theirs, 1, np.random.default_rng(0))
    ensure_synthetic(theirs, 2, 0)
    assert (theirs / "meta.json").read_text() == "{}"


def test_keep_count_holds_the_parents_mean_count_on_the_training_frames(setup):
    import copy

    from torch.utils.data import DataLoader

    from adapt.data.crowd_dataset import FrameFolder, collate
    from adapt.selfsup.adaptation import keep_parent_count
    from adapt.selfsup.gate import frame_stats

    parent = perturbed_model()
    model = copy.deepcopy(parent)
    with torch.no_grad():  # a candidate that counts twice as many everywhere (the head ends in a ReLU)
        for p in model.decoder_out[-1].parameters():
            p.mul_(2.0)
    paths = sorted((setup / "frames").iterdir())[:6]
    cfg = tiny_config(setup)
    loader = DataLoader(FrameFolder(paths, None, max_side=cfg.max_side), batch_size=1, collate_fn=collate)
    before = frame_stats(parent, loader, torch.device("cpu"), with_flip=False).mean_count
    assert before > 0 and frame_stats(model, loader, torch.device("cpu"), with_flip=False).mean_count == pytest.approx(2 * before, rel=1e-4)
    held = keep_parent_count(parent, model, paths, cfg, torch.device("cpu"))
    assert held["factor"] == pytest.approx(0.5, rel=1e-4) and held["count_ratio"] == pytest.approx((2 * before + 1) / (before + 1), rel=1e-4)
    assert model.config.count_scale == pytest.approx(0.5, rel=1e-4)
    assert frame_stats(model, loader, torch.device("cpu"), with_flip=False).mean_count == pytest.approx(before, rel=1e-4)


def test_the_pipeline_reports_the_held_count_only_when_keep_count_is_on(setup):
    report = adapt_camera(tiny_config(setup, publish=False))
    held = report["keep_count"]
    assert held["factor"] is not None and held["candidate_mean_count"] > 0
    assert report["candidate_stats"]["mean_count"] > 0
    off = adapt_camera(tiny_config(setup, publish=False, keep_count=False))
    assert "keep_count" not in off


@pytest.fixture(scope="module")
def street(tmp_path_factory):
    """40 frames of a fixed synthetic camera with people walking through, as a folder of JPEGs."""
    import dataclasses

    from adapt.synth import render, sample_crowd, walk
    from adapt.synth.camera import Camera
    from adapt.synth.scene import build_scene

    rng = np.random.default_rng(3)
    scene = build_scene(rng, Camera(160, 128, height_m=3.0, tilt_deg=12.0, focal_px=150.0), "overcast", with_distractors=False)
    people = [dataclasses.replace(p, speed=1.3) for p in sample_crowd(rng, scene, 10, "uniform")]
    folder = tmp_path_factory.mktemp("street") / "frames"
    folder.mkdir()
    for i in range(40):
        people = walk(scene, people, 0.5, rng)
        cv2.imwrite(str(folder / f"{i:03d}.jpg"), cv2.cvtColor(render(scene, people, rng).image, cv2.COLOR_RGB2BGR))
    return folder, render(scene, [], rng).image


def test_a_fixed_camera_adapts_with_its_scene_model_and_the_card_records_it(setup, street, tmp_path):
    frames, _ = street
    cfg = tiny_config(setup, camera="street", frames=frames, scene_root=tmp_path / "scene", composites=20, max_side=160)
    report = adapt_camera(cfg)
    assert report["scene"]["usable"], report["scene"]
    assert (tmp_path / "scene" / "street" / "scene.png").is_file()
    assert len(list((tmp_path / "scene" / "street" / "composites" / "images").glob("*.jpg"))) == 16
    # the level comes from the scene: nothing held, and the gate judged the scene figures
    assert report["keep_count"]["factor"] is None and "scene model" in report["keep_count"]["not_held"]
    for key in ("empty_scene_count", "background_count", "moving_count", "composite_mae"):
        assert key in report["scene_candidate"] and key in report["scene_parent"]
    if report["published"]:
        card = json.loads((setup / "models" / "street" / report["published"] / "card.json").read_text())
        assert card["statistics"]["scene_candidate"] == report["scene_candidate"]


def test_the_gate_measures_and_refuses_a_model_that_counts_people_on_the_empty_scene(street):
    from torch.utils.data import DataLoader

    from adapt.data.crowd_dataset import FrameFolder, collate
    from adapt.selfsup.gate import frame_stats, gate, scene_stats
    from adapt.training.engine import density_loss

    frames, empty = street
    # a candidate taught that this empty street holds 5 people, spread over it
    model = perturbed_model()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    image = torch.from_numpy(empty)[None].repeat(4, 1, 1, 1)  # one per mask
    target = torch.full((4, 1, 16, 20), 5.0 / 320)
    for _ in range(30):
        opt.zero_grad()
        density_loss(model.forward_train(image), target, model.config.density_scale).backward()
        opt.step()
    model.eval()
    loader = DataLoader(FrameFolder(sorted(frames.glob("*.jpg"))[:4], None, max_side=160), batch_size=1, collate_fn=collate)
    static = np.ones((16, 20), bool)
    stats = scene_stats(model, static, [empty], loader, None, torch.device("cpu"))
    assert stats.empty_scene_count > 1.0
    fs = frame_stats(model, loader, torch.device("cpu"), with_flip=False)
    verdict = gate(fs, fs, scene=(stats, stats))
    assert not verdict.accepted and any("empty scene" in r for r in verdict.reasons)


def test_pseudo_labels_know_static_cells_and_moving_people(street):
    from adapt.scene.model import build_scene_model
    from adapt.selfsup.pseudo_label import scene_labels

    frames, _ = street
    images = np.stack([cv2.imread(str(p))[..., ::-1] for p in sorted(frames.glob("*.jpg"))])
    model = build_scene_model(images)
    valid = np.ones((16, 20), bool)
    people = 0
    for image in images[::5]:
        known = scene_labels(model, image, valid)
        cells, density, moving = known.cells, known.density, known.moving
        assert not (moving & cells).any()
        # each group of moving people carries its count, on known cells only
        assert known.counts.sum() == pytest.approx(model.people_in_blobs(image).counts.sum(), rel=1e-4)
        assert cells[known.regions > 0].all()
        assert cells[model.motion.static].all()  # every static cell is labelled, and empty
        assert density[model.motion.static & ~cells].sum() == 0
        found = model.people_in_blobs(image).counts.sum()
        people += found
        # the moving blobs' cells carry the people their areas hold
        assert abs(density[cells].sum() - found) < 0.1 * found + 0.1
    assert people > 0
