"""Model backends for the inference stage: ONNX Runtime (default) or torch.

Both take uint8 NHWC RGB batches and return the DESIGN contract outputs plus
the per-mask counts. ONNX Runtime providers are tried in the configured order
(TensorRT > CUDA > CPU by default); what was actually picked is logged and
reported, because a silent fallback to CPU is the classic production surprise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)

PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
DEFAULT_PROVIDERS = ("tensorrt", "cuda", "cpu")


class BackendError(RuntimeError):
    pass


@dataclass
class Prediction:
    density: np.ndarray        # (N, 1, H/8, W/8) float32, people per cell
    uncertainty: np.ndarray    # (N, 1, H/8, W/8) float32, per-cell std across masks
    mask_counts: np.ndarray    # (N, M) float32, the count under each mask

    @property
    def counts(self) -> np.ndarray:
        return self.density.sum(axis=(1, 2, 3))

    @property
    def count_std(self) -> np.ndarray:
        return self.mask_counts.std(axis=1)


class Backend(Protocol):
    name: str
    version: str
    masks: int

    def infer(self, images: np.ndarray) -> Prediction: ...


def check_batch(images: np.ndarray) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise BackendError(f"expected uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    if images.shape[1] % 32 or images.shape[2] % 32:
        raise BackendError(f"height and width must be multiples of 32, got {images.shape[1]}x{images.shape[2]}")


def resolve_providers(wanted: tuple[str, ...] | list[str], available: list[str]) -> list[str]:
    """Map short ("cuda") or full ("CUDAExecutionProvider") names to ORT's, keep the available ones, in order."""
    out = []
    for name in wanted:
        full = name if name in PROVIDER_NAMES.values() else PROVIDER_NAMES.get(name.lower())
        if full is None:
            raise BackendError(f"unknown ONNX Runtime provider {name!r}; choose from {sorted(PROVIDER_NAMES)}")
        if full in available:
            out.append(full)
    if not out:
        raise BackendError(f"none of the providers {list(wanted)} is available (ONNX Runtime has {available})")
    return out


class OnnxBackend:
    name = "onnxruntime"

    def __init__(self, path: Path, providers: tuple[str, ...] | list[str] = DEFAULT_PROVIDERS, cache_dir: Path | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise BackendError(f"model file not found: {self.path}")
        chosen = resolve_providers(providers, ort.get_available_providers())
        options = []
        for p in chosen:
            if p == "TensorrtExecutionProvider":
                cache = str(cache_dir or self.path.parent / "trt-cache")
                options.append({"trt_fp16_enable": True, "trt_engine_cache_enable": True, "trt_engine_cache_path": cache})
            else:
                options.append({})
        try:
            self.session = ort.InferenceSession(str(self.path), providers=chosen, provider_options=options)
        except Exception as exc:  # ORT raises its own exception types for bad files
            raise BackendError(f"{self.path}: ONNX Runtime cannot load it ({exc})") from None
        self.providers = self.session.get_providers()
        meta = self.session.get_modelmeta().custom_metadata_map
        self.version = meta.get("version", "unknown")
        self.masks = int(meta.get("masks", "1"))
        outputs = [o.name for o in self.session.get_outputs()]
        if outputs[:2] != ["density", "uncertainty"]:
            raise BackendError(f"{self.path}: outputs {outputs} do not follow the model contract")
        self.has_mask_counts = "mask_counts" in outputs
        log.info("onnxruntime model %s (version %s) on %s", self.path, self.version, self.providers)

    def infer(self, images: np.ndarray) -> Prediction:
        check_batch(images)
        out = self.session.run(None, {"image": np.ascontiguousarray(images)})
        density, uncertainty = out[0], out[1]
        # a contract-only model without mask_counts: no count spread is known
        mask_counts = out[2] if self.has_mask_counts else density.sum(axis=(1, 2, 3))[:, None]
        return Prediction(density, uncertainty, mask_counts)


class TorchBackend:
    name = "torch"

    def __init__(self, checkpoint: Path, device: str = "auto"):
        import torch

        from adapt.model.checkpoint import load_checkpoint
        from adapt.training.engine import select_device

        self.torch = torch
        self.device = select_device(device)
        ckpt = load_checkpoint(checkpoint)
        self.model = ckpt.build(self.device)
        self.version = str(ckpt.meta.get("version", "unknown"))
        self.masks = self.model.config.masks
        self.providers = [str(self.device)]
        log.info("torch model %s (version %s) on %s", checkpoint, self.version, self.device)

    def infer(self, images: np.ndarray) -> Prediction:
        from adapt.model.network import ensemble_mean_std

        check_batch(images)
        torch = self.torch
        with torch.inference_mode():
            per_mask = self.model.ensemble(torch.from_numpy(images).to(self.device))
            density, uncertainty = ensemble_mean_std(per_mask)
            mask_counts = per_mask.sum(dim=(2, 3, 4)).T
        return Prediction(density.cpu().numpy(), uncertainty.cpu().numpy(), mask_counts.cpu().numpy())


def load_backend(kind: str, version_dir: Path, providers=DEFAULT_PROVIDERS, device: str = "auto") -> Backend:
    """A backend for one registry version directory (model.onnx / model.pt)."""
    version_dir = Path(version_dir)
    if kind == "onnxruntime":
        onnx = version_dir / "model.onnx"
        if not onnx.is_file():
            # shipped versions carry only the checkpoint; export once
            from adapt.store.registry import ModelVersion, ensure_onnx

            ensure_onnx(ModelVersion(version_dir.parent.name, version_dir.name, version_dir))
        return OnnxBackend(onnx, providers)
    if kind == "torch":
        return TorchBackend(version_dir / "model.pt", device)
    raise BackendError(f"unknown backend {kind!r}; choose onnxruntime or torch")
