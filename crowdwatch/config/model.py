"""[model]: the model registry and the inference backend."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from .base import ConfigPath, Integer, Section, Text
from .errors import ConfigWarning, Expect, Found
from .units import Milliseconds

BACKENDS = ("onnxruntime", "torch")
# The registry's layout (adapt/store/registry.py; the config imports nothing from adapt):
# <registry>/<camera or base>/current names a <version> folder holding model.pt.
BASE, POINTER, CHECKPOINT = "base", "current", "model.pt"
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
Provider = Annotated[Text, Expect("an ONNX Runtime provider name such as \"CPUExecutionProvider\""), Field(pattern=r"^[A-Za-z]+ExecutionProvider$")]


class ModelConfig(Section):
    registry: ConfigPath = Field(Path("models"), validate_default=True, description="model registry: <registry>/<camera or base>/<version>/model.onnx")
    backend: Literal["onnxruntime", "torch"] = Field("onnxruntime", description="inference backend")
    providers: Annotated[tuple[Provider, ...], Expect('a non-empty list of ONNX Runtime providers, e.g. ["CPUExecutionProvider"]')] = Field(
        ("CUDAExecutionProvider", "CPUExecutionProvider"), min_length=1,
        description="ONNX Runtime execution providers, in order of preference",
    )  # fmt: skip
    torch_device: Annotated[Text, Expect('"auto", "cpu", "cuda" or "cuda:N"')] = Field(
        "auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description='torch backend only: "auto", "cpu", "cuda" or "cuda:N"'
    )
    max_batch: Integer = Field(8, ge=1, le=256, description="dynamic batching: at most this many frames per run")
    max_wait_ms: Milliseconds = Field(20.0, ge=0, le=10000, description="dynamic batching: wait at most this long (ms, or a duration string) to fill a batch")

    def machine_problems(self, cameras: Iterable[str], source: str = "") -> list[ConfigWarning]:
        """What this machine lacks to serve these cameras: the registry, a current model, the GPU the providers need."""
        return [*self._registry_problems(list(cameras), source), *self._device_problems(source)]

    def _registry_problems(self, cameras: list[str], source: str) -> list[ConfigWarning]:
        root = self.registry
        if not root.is_dir():
            return [ConfigWarning("model.registry", "a model registry folder (<registry>/<camera or base>/<version>/model.pt)",
                                  Found(f"no folder at {root}"), source, serving=True)]  # fmt: skip
        base = _current_version(root, BASE)
        unserved = [c for c in cameras if not (root / c / POINTER).exists() and base is None]
        if unserved:
            return [ConfigWarning("model.registry", f"a current model for every camera: {BASE}/{POINTER} (or <camera>/{POINTER}) "
                                  f"naming a version folder with {CHECKPOINT}", Found(f"none for {', '.join(unserved)} in {root}"),
                                  source, serving=True)]  # fmt: skip
        # A camera's own pointer that names no usable version is served by its last good version or base.
        return [ConfigWarning("model.registry", f"{c}/{POINTER} naming a version folder with {CHECKPOINT} (until then infer serves the "
                              "camera with its last good version, or the base model if there is one)", Found(f"{root / c / POINTER} names none"), source)
                for c in cameras if (root / c / POINTER).exists() and _current_version(root, c) is None]  # fmt: skip

    def _device_problems(self, source: str) -> list[ConfigWarning]:
        if self.backend == "torch":
            if self.torch_device.startswith("cuda") and not gpu_present():
                return [ConfigWarning("model.torch_device", '"auto" or "cpu" on a machine without an NVIDIA GPU',
                                      self.torch_device, source, serving=True)]  # fmt: skip
            return []
        if "CPUExecutionProvider" in self.providers:
            return []  # every ONNX Runtime has it: no need to import one to ask
        usable = onnxruntime_providers()
        if usable is None or any(p in usable for p in self.providers):
            return []
        return [ConfigWarning("model.providers", f"at least one provider this machine can run ({', '.join(usable)})",
                              list(self.providers), source, serving=True)]  # fmt: skip


def _current_version(root: Path, name: str) -> str | None:
    """The version ``<root>/<name>/current`` names, if it holds a checkpoint."""
    try:
        version = (root / name / POINTER).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    ok = version and "/" not in version and not version.startswith(".") and (root / name / version / CHECKPOINT).is_file()
    return version if ok else None


def gpu_present() -> bool:
    """Whether an NVIDIA driver sees a GPU here (what CUDA needs), without importing torch or ONNX Runtime."""
    gpus = Path("/proc/driver/nvidia/gpus")
    return (gpus.is_dir() and any(gpus.iterdir())) or Path("/dev/nvidia0").exists()


def onnxruntime_providers() -> list[str] | None:
    """The providers ONNX Runtime can run here (GPU ones only with a GPU), or None without ONNX Runtime."""
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    import onnxruntime

    gpu = gpu_present()
    return [p for p in onnxruntime.get_available_providers() if gpu or p not in GPU_PROVIDERS]
