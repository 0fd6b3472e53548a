"""Hot swap: the inference stage follows a camera's `current` pointer without losing its working model."""


import numpy as np
import pytest

from adapt.model.checkpoint import save_checkpoint
from adapt.store.registry import BASE, Registry
from crowdwatch.wire import FrameMessage
from streamer.infer import ModelPool, group_batches
from tests.test_network import perturbed_model


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    ckpt = root / "m.pt"
    save_checkpoint(ckpt, perturbed_model(), {"version": "x"})
    reg = Registry(root)
    reg.publish(BASE, {"model.pt": ckpt}, {}, "b1")
    reg.publish("lobby", {"model.pt": ckpt}, {"parent": "b1"}, "v1", make_current=False)
    reg.publish("lobby", {"model.pt": ckpt}, {"parent": "v1"}, "v2", make_current=False)
    return reg


def test_pool_follows_current_and_shares_backends(registry):
    pool = ModelPool(registry.root, ["lobby", "hall"], "torch", ["cpu"], "cpu", poll_s=0)
    base_key, base_backend = pool.backend("lobby")
    assert base_key.endswith("base/b1") and pool.backend("hall")[1] is base_backend  # one backend per version
    registry.set_current("lobby", "v1")
    assert pool.refresh(now=1.0) == ["lobby"]
    assert pool.backend("lobby")[0].endswith("lobby/v1") and pool.swaps == 1
    assert pool.backend("hall")[0] == base_key
    x = np.zeros((1, 64, 64, 3), np.uint8)
    assert pool.backend("lobby")[1].infer(x).density.shape == (1, 1, 8, 8)
    assert pool.refresh(now=2.0) == []  # nothing changed, nothing reloaded


def test_a_broken_new_version_keeps_the_working_model(registry):
    pool = ModelPool(registry.root, ["lobby"], "torch", ["cpu"], "cpu", poll_s=0)
    registry.set_current("lobby", "v1")
    pool.refresh(now=1.0)
    before = pool.backend("lobby")
    (registry.root / "lobby" / "v2" / "model.pt").write_bytes(b"corrupt")
    registry.set_current("lobby", "v2")
    assert pool.refresh(now=2.0) == []
    assert pool.backend("lobby") == before


def test_batches_group_by_model_and_size():
    def f(cam, h):
        return FrameMessage(cam, 0, 0, np.zeros((h, 64, 3), np.uint8))

    frames = [f("a", 64), f("b", 64), f("c", 96), f("a", 64), f("a", 64)]
    models = {"a": "m1", "b": "m1", "c": "m1"}
    batches = group_batches(frames, models.get, max_batch=2)
    assert sorted(len(b) for b in batches) == [1, 2, 2]
    assert all(len({fr.image.shape for fr in b}) == 1 for b in batches)


def test_a_corrupt_current_leaves_other_cameras_counting_and_that_camera_on_its_last_good_model(tmp_path_factory):
    """After an infer restart (a new pool), a camera whose `current` is corrupt keeps its last good version."""
    from streamer.exporter import Metrics
    from tests.test_infer import sample

    root = tmp_path_factory.mktemp("models")
    var = tmp_path_factory.mktemp("var")
    ckpt = root / "m.pt"
    save_checkpoint(ckpt, perturbed_model(), {"version": "x"})
    reg = Registry(root)
    reg.publish(BASE, {"model.pt": ckpt}, {}, "b1")
    reg.publish("lobby", {"model.pt": ckpt}, {"parent": "b1"}, "v1")
    first = ModelPool(root, ["lobby", "hall"], "torch", ["cpu"], "cpu", poll_s=0, var=var)
    assert first.backend("lobby")[0].endswith("lobby/v1") and not first.fallback["lobby"]
    (root / "lobby" / "current").write_text("v9-missing\n")  # corrupt pointer
    metrics = Metrics()
    pool = ModelPool(root, ["lobby", "hall"], "torch", ["cpu"], "cpu", poll_s=0, var=var, on_failure=metrics.model_load_failure)
    assert pool.backend("lobby")[0].endswith("lobby/v1") and pool.fallback["lobby"]   # its last good model
    assert pool.backend("hall")[0].endswith("base/b1") and not pool.fallback["hall"]  # the others as before
    x = np.zeros((1, 64, 64, 3), np.uint8)
    assert pool.backend("hall")[1].infer(x).density.shape == (1, 1, 8, 8)
    assert pool.backend("lobby")[1].infer(x).density.shape == (1, 1, 8, 8)
    assert sample(metrics, "crowd_model_load_failures_total", camera="lobby") == 1
    # without a serving record (or with an unloadable one) the base model serves it
    (var / "serving" / "lobby.json").unlink()
    pool = ModelPool(root, ["lobby", "hall"], "torch", ["cpu"], "cpu", poll_s=0, var=var)
    assert pool.backend("lobby")[0].endswith("base/b1") and pool.fallback["lobby"]


def test_a_failing_version_backs_off_and_counts_each_failure(registry, caplog):
    from streamer.exporter import Metrics
    from tests.test_infer import sample

    metrics = Metrics()
    registry.set_current("lobby", "v1")
    pool = ModelPool(registry.root, ["lobby"], "torch", ["cpu"], "cpu", poll_s=0, on_failure=metrics.model_load_failure)
    before = pool.backend("lobby")
    (registry.root / "lobby" / "v2" / "model.pt").write_bytes(b"corrupt")
    registry.set_current("lobby", "v2")
    with caplog.at_level("ERROR", logger="crowdwatch.infer"):
        for t in range(1, 200):  # 200 s of polls every second
            assert pool.refresh(now=float(t)) == []
    tries = [r for r in caplog.records if "failed to load" in r.getMessage()]
    # tries at 1, 3, 7, 15, 31, 63, 127 s: one log line and one count per backoff step
    assert len(tries) == 7 and "next try in 2 s" in tries[0].getMessage() and "next try in 128 s" in tries[-1].getMessage()
    assert sample(metrics, "crowd_model_load_failures_total", camera="lobby") == 7
    assert pool.backend("lobby") == before
    registry.set_current("lobby", "v1")  # the pointer moves on: back to normal at once
    assert pool.refresh(now=200.0) == []
    assert pool._retry == {}


def test_cameras_served_by_base_follow_its_rollback(tmp_path):
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, perturbed_model(), {"version": "x"})
    reg = Registry(tmp_path / "models")
    reg.publish(BASE, {"model.pt": ckpt}, {"parent": None}, "b1")
    reg.publish(BASE, {"model.pt": ckpt}, {"parent": None}, "b2")
    pool = ModelPool(reg.root, ["hall"], "torch", ["cpu"], "cpu", poll_s=0)
    assert pool.backend("hall")[0].endswith("base/b2")
    assert reg.rollback(BASE).version == "b1"
    assert pool.refresh(now=1.0) == ["hall"] and pool.backend("hall")[0].endswith("base/b1")
