"""[paths]: where buffers, logs, runtime files and labelled frames live."""

from __future__ import annotations

from pathlib import Path, PurePath
from typing import Any

from pydantic import Field, model_validator

from .base import ConfigPath, Section
from .names import validate_camera_name


class PathsConfig(Section):
    var: ConfigPath = Field(Path("var"), validate_default=True, description="adapter buffers (<var>/buffer/<camera>), logs, adaptation runs")
    run: ConfigPath = Field(None, description="runtime files and ipc:// sockets; default <var>/run")  # type: ignore[assignment]
    labels: ConfigPath = Field(
        Path("labels"), validate_default=True,
        description="crowdwatch label writes <labels>/<camera>, crowdwatch calibrate reads there (a camera's adapt.labels wins)",
    )  # fmt: skip

    @model_validator(mode="before")
    @classmethod
    def _run_under_var(cls, data: Any) -> Any:
        if isinstance(data, dict) and "run" not in data:
            var = data.get("var", "var")
            if isinstance(var, str) and var:
                return {**data, "run": str(PurePath(var) / "run")}
        return data

    def buffer_dir(self, camera: str) -> Path:
        return self.var / "buffer" / validate_camera_name(camera)
