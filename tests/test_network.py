import subprocess
import sys

import numpy as np
import pytest
import torch

from adapt.model.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from adapt.model.encoders import IMAGENET_MEAN, IMAGENET_STD, EfficientNetLite0
from adapt.model.network import CrowdCounter, ModelConfig, check_input


def perturbed_model(config: ModelConfig | None = None, pretrained: bool = False) -> CrowdCounter:
    """A model whose decoder gives non-trivial, mask-dependent output."""
    torch.manual_seed(0)
    m = CrowdCounter(config or ModelConfig(), pretrained=pretrained).eval()
    with torch.no_grad():
        for p in m.decoder_out.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def test_lite0_imagenet_weights_classify_a_cat():
    skimage = pytest.importorskip("skimage")
    import cv2

    model = EfficientNetLite0(with_classifier=True)
    model.load_imagenet()
    model.eval()
    img = cv2.resize(skimage.data.chelsea(), (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    x = (img - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    with torch.no_grad():
        top5 = model.classify(torch.from_numpy(x).permute(2, 0, 1)[None]).topk(5).indices[0].tolist()
    cat_classes = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert cat_classes & set(top5), top5


def test_output_shapes_follow_the_contract():
    m = perturbed_model()
    x = torch.randint(0, 256, (2, 96, 160, 3), dtype=torch.uint8)
    with torch.no_grad():
        density, uncertainty = m(x)
    assert density.shape == uncertainty.shape == (2, 1, 12, 20)
    assert (density >= 0).all() and (uncertainty >= 0).all()


def test_batched_ensemble_equals_naive_per_mask_forward():
    m = perturbed_model()
    x = torch.randint(0, 256, (3, 64, 96, 3), dtype=torch.uint8)
    with torch.no_grad():
        fast = m.ensemble(x)
        slow = m.naive_ensemble(x)
    assert fast.shape == (4, 3, 1, 8, 12)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-7)
    # the masks really differ, so the check above is not vacuous
    assert (fast[0] - fast[1]).abs().max() > 1e-6


def test_training_forward_puts_each_group_through_its_own_mask():
    m = perturbed_model()
    x = torch.randint(0, 256, (1, 64, 64, 3), dtype=torch.uint8).repeat(4, 1, 1, 1)
    with torch.no_grad():
        per_sample = m.forward_train(x)
        per_mask = m.ensemble(x[:1])
    torch.testing.assert_close(per_sample[:, None], per_mask, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="multiple of the number of masks"):
        m.forward_train(x[:3])


def test_flip_head_works_at_any_size():
    m = perturbed_model()
    for h, w in [(64, 64), (96, 224)]:
        assert m.flip_logits(torch.zeros((2, h, w, 3), dtype=torch.uint8)).shape == (2, 2)


def test_banded_flip_head_sees_where_features_are():
    # One global average is blind to a vertical flip of the feature map, so
    # it cannot compare the top of a frame with its bottom; bands can.
    torch.manual_seed(0)
    feats = torch.rand(1, 320, 8, 6)
    flat = CrowdCounter(ModelConfig(flip_rows=1), pretrained=False).flip_head.eval()
    banded = CrowdCounter(ModelConfig(flip_rows=4), pretrained=False).flip_head.eval()
    with torch.no_grad():
        torch.testing.assert_close(flat(feats), flat(feats.flip(2)))
        assert not torch.allclose(banded(feats), banded(feats.flip(2)))


def test_checkpoints_from_before_banded_flip_heads_still_load(tmp_path):
    old = CrowdCounter(ModelConfig(flip_rows=1), pretrained=False)
    path = tmp_path / "old.pt"
    save_checkpoint(path, old)
    data = torch.load(path, weights_only=True)
    del data["model_config"]["flip_rows"]  # as saved before banded heads
    torch.save(data, path)
    model, _ = load_model(path)
    assert model.config.flip_rows == 1
    model.set_flip_rows(4)
    assert model.flip_logits(torch.zeros((1, 64, 64, 3), dtype=torch.uint8)).shape == (1, 2)
    with pytest.raises(ValueError, match="flip_rows"):
        ModelConfig(flip_rows=0)


def test_masks_are_seeded_and_saved(tmp_path):
    a = CrowdCounter(ModelConfig(mask_seed=1), pretrained=False)
    b = CrowdCounter(ModelConfig(mask_seed=1), pretrained=False)
    c = CrowdCounter(ModelConfig(mask_seed=2), pretrained=False)
    assert torch.equal(a.masksembles.masks, b.masksembles.masks)
    assert not torch.equal(a.masksembles.masks, c.masksembles.masks)
    assert "masksembles.masks" in a.state_dict()


def test_reload_in_a_fresh_process_gives_identical_outputs(tmp_path):
    m = perturbed_model()
    # masks that no seed would reproduce: only the checkpoint can restore them
    with torch.no_grad():
        m.masksembles.masks.copy_(m.masksembles.masks.flip(0))
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, m, {"version": "t"})
    x = torch.randint(0, 256, (1, 64, 96, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        expected = torch.stack(m(x))
    code = (
        "import sys, torch; from adapt.model.checkpoint import load_model; "
        "m, _ = load_model(sys.argv[1]); x = torch.load(sys.argv[2], weights_only=True); "
        "torch.save(torch.stack(m(x)).detach(), sys.argv[3])"
    )
    subprocess.run([sys.executable, "-c", code, str(ckpt), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")], check=True)
    got = torch.load(tmp_path / "y.pt", weights_only=True)
    assert torch.equal(got, expected)


def test_bad_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"hello": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a crowdwatch checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    m = perturbed_model()
    save_checkpoint(tmp_path / "m.pt", m)
    data = torch.load(tmp_path / "m.pt", weights_only=True)
    data["model_config"]["decoder_channels"] = 32
    torch.save(data, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="does not fit"):
        load_model(tmp_path / "mismatch.pt")


def test_input_contract_is_checked():
    with pytest.raises(ValueError, match="uint8"):
        check_input(torch.zeros((1, 64, 64, 3)))
    with pytest.raises(ValueError, match="multiples of 32"):
        check_input(torch.zeros((1, 60, 64, 3), dtype=torch.uint8))
    check_input(torch.zeros((1, 64, 96, 3), dtype=torch.uint8))


def test_paper_variant_vgg16_sfcn_at_small_size(tmp_path):
    cfg = ModelConfig(arch="vgg16_sfcn", masks=2)
    m = CrowdCounter(cfg, pretrained=False).eval()
    x = torch.randint(0, 256, (2, 64, 96, 3), dtype=torch.uint8)
    with torch.no_grad():
        d, u = m(x)
        fast, slow = m.ensemble(x), m.naive_ensemble(x)
        logits = m.flip_logits(x)
    assert d.shape == u.shape == (2, 1, 8, 12)
    assert logits.shape == (2, 2)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-7)
    # backbone weights from a local torchvision-layout file
    state = {f"features.{k}": v for k, v in m.encoder.features.state_dict().items()}
    torch.save(state, tmp_path / "vgg16.pth")
    m2 = CrowdCounter(cfg, pretrained=False, backbone_weights=tmp_path / "vgg16.pth")
    assert torch.equal(m2.encoder.features[0].weight, m.encoder.features[0].weight)
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a VGG-16"):
        CrowdCounter(cfg, pretrained=False, backbone_weights=tmp_path / "bad.pth")
