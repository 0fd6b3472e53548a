import numpy as np
import pytest
import torch

from adapt.model.export import METADATA_KEYS, export_onnx, read_metadata
from tests.test_network import perturbed_model

# float32 graphs in ORT and torch differ only by op ordering
ATOL = 1e-6
RTOL = 1e-4


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = perturbed_model()
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "model.onnx", {"version": "v1", "parent": "v0", "camera": "lobby", "recipe": {"lr": 1}})
    return model, path


def test_onnx_runtime_matches_torch_at_dynamic_shapes(exported):
    ort = pytest.importorskip("onnxruntime")
    model, path = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["density", "uncertainty", "mask_counts"]
    rng = np.random.default_rng(0)
    for shape in [(1, 64, 96, 3), (3, 128, 64, 3)]:
        x = rng.integers(0, 256, shape, dtype=np.uint8)
        density, uncertainty, mask_counts = session.run(None, {"image": x})
        with torch.no_grad():
            td, tu = model(torch.from_numpy(x))
            tm = model.ensemble(torch.from_numpy(x)).sum(dim=(2, 3, 4)).T
        np.testing.assert_allclose(density, td.numpy(), rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(uncertainty, tu.numpy(), rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(mask_counts, tm.numpy(), rtol=RTOL, atol=1e-5)
        assert mask_counts.shape == (shape[0], 4)
        np.testing.assert_allclose(mask_counts.mean(1), density.sum(axis=(1, 2, 3)), rtol=1e-4, atol=1e-5)
        assert density.shape == (shape[0], 1, shape[1] // 8, shape[2] // 8)


def test_metadata_is_written(exported):
    model, path = exported
    meta = read_metadata(path)
    assert set(METADATA_KEYS) <= set(meta)
    assert meta["version"] == "v1" and meta["parent"] == "v0" and meta["camera"] == "lobby"
    assert meta["masks"] == "4" and meta["stride"] == "8"


def test_export_leaves_the_model_in_eval_mode(exported):
    model, _ = exported
    assert not model.training and not model.encoder._bn0.training
