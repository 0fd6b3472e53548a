"""[model]: the model registry and the inference backend."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from .base import ConfigPath, Integer, Section, Text
from .errors import Expect
from .units import Milliseconds

BACKENDS = ("onnxruntime", "torch")
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


