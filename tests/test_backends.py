import numpy as np
import pytest

from adapt.model.checkpoint import save_checkpoint
from streamer.backends import BackendError, OnnxBackend, TorchBackend, load_backend, resolve_providers
from tests.test_network import perturbed_model


@pytest.fixture(scope="module")
def version_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("models") / "base" / "v1"
    d.mkdir(parents=True)
    model = perturbed_model()
    save_checkpoint(d / "model.pt", model, {"version": "v1"})
    return d


def test_onnx_and_torch_backends_agree(version_dir):
    onnx = load_backend("onnxruntime", version_dir, ["cpu"])  # exports model.onnx on first use
    torch_b = load_backend("torch", version_dir, device="cpu")
    assert onnx.version == torch_b.version == "v1" and onnx.masks == 4
    x = np.random.default_rng(0).integers(0, 256, (2, 64, 96, 3), dtype=np.uint8)
    a, b = onnx.infer(x), torch_b.infer(x)
    np.testing.assert_allclose(a.density, b.density, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(a.mask_counts, b.mask_counts, rtol=1e-4, atol=1e-5)
    assert a.counts.shape == a.count_std.shape == (2,)
    assert (a.count_std > 0).all()


def test_provider_order_and_fallback():
    avail = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers(["tensorrt", "cuda", "cpu"], avail) == avail
    assert resolve_providers(["cpu"], avail) == ["CPUExecutionProvider"]
    with pytest.raises(BackendError, match="unknown"):
        resolve_providers(["tpu"], avail)
    with pytest.raises(BackendError, match="none of the providers"):
        resolve_providers(["tensorrt"], avail)


def test_bad_models_and_batches(tmp_path, version_dir):
    with pytest.raises(BackendError, match="not found"):
        OnnxBackend(tmp_path / "missing.onnx", ["cpu"])
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(BackendError, match="cannot load"):
        OnnxBackend(tmp_path / "junk.onnx", ["cpu"])
    b = TorchBackend(version_dir / "model.pt", "cpu")
    with pytest.raises(BackendError, match="multiples of 32"):
        b.infer(np.zeros((1, 60, 64, 3), np.uint8))
    with pytest.raises(BackendError, match="uint8"):
        b.infer(np.zeros((1, 64, 64, 3), np.float32))
