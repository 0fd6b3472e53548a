"""The whole document: [server], [paths], [transport], [model], [log], [defaults], [cameras.<name>]."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any

from pydantic import AfterValidator, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from .base import Section
from .camera import CameraConfig, CameraSettings
from .errors import ConfigWarning, Found, fail
from .log import LogConfig
from .model import ModelConfig
from .names import CameraName
from .paths import PathsConfig
from .server import ServerConfig
from .shards import ENDPOINT_KEYS, rendezvous
from .transport import IPC_TOO_LONG, SHARD, TransportConfig, for_shard, ipc_too_long


def _cameras(cams: Mapping[str, CameraConfig]) -> Mapping[str, CameraConfig]:
    if not cams:
        raise fail("at least one [cameras.<name>] table", Found("none"))
    for name, cam in cams.items():
        cam._name = name
    return MappingProxyType(dict(cams))


class Config(Section):
    """A crowdwatch configuration file. Unknown keys are errors; see config.toml for an annotated example."""

    server: ServerConfig = Field(default_factory=ServerConfig, description="metrics and web listeners")
    paths: PathsConfig = Field(default_factory=PathsConfig, description="where buffers, logs and sockets live")
    transport: TransportConfig = Field(default_factory=TransportConfig, description="ZeroMQ endpoints between the stages")
    model: ModelConfig = Field(default_factory=ModelConfig, description="model registry and inference backend")
    log: LogConfig = Field(default_factory=LogConfig, description="log format, level and files of every process")
    defaults: CameraSettings = Field(
        default_factory=CameraSettings, description="any camera key but url; every [cameras.<name>] table is deep-merged over these"
    )
    cameras: Annotated[Mapping[CameraName, CameraConfig], AfterValidator(_cameras)] = Field(
        description="one table per camera, named [a-z0-9_-]{1,64}"
    )
    _source: str = PrivateAttr("<config>")
    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)
    _warnings: tuple[ConfigWarning, ...] = PrivateAttr(())

    @model_validator(mode="before")
    @classmethod
    def _sections_default_to_empty_tables(cls, data: Any) -> Any:
        # Validate absent sections too, so that their defaults (paths, endpoints) are resolved.
        if isinstance(data, dict):
            return {"server": {}, "paths": {}, "transport": {}, "model": {}, "log": {}, "defaults": {}, **data}
        return data

    @field_validator("transport", mode="before")
    @classmethod
    def _endpoints_under_run(cls, data: Any, info: ValidationInfo) -> Any:
        paths = info.data.get("paths")
        if isinstance(data, dict) and isinstance(paths, PathsConfig):
            data = {key: f"ipc://{paths.run / f'{key}.ipc'}" for key in ("frames", "results") if key not in data} | data
        return data

    @model_validator(mode="after")
    def _one_server_per_address(self) -> Config:
        seen: list[tuple[str, str, int]] = []
        workers = self.server.infer_workers
        for section, listeners in (("server", self.server.listeners()), ("transport", self.transport.listeners(workers))):
            for key, host, port in listeners:
                for other, other_host, other_port in seen:
                    if port == other_port and _same_host(host, other_host):
                        attr = key.split(" ")[0]  # "frames_bind of infer worker 1"
                        raise fail(f"a port no other server of this config listens on ({other} is {other_host}:{other_port})",
                                   getattr(getattr(self, section), attr), key=(section, attr))  # fmt: skip
                seen.append((f"{section}.{key}", host, port))
        return self

    @model_validator(mode="after")
    def _shards(self) -> Config:
        workers, t = self.server.infer_workers, self.transport
        for name, cam in self.cameras.items():
            if cam.shard is not None and cam.shard >= workers:
                raise fail(f"a shard in 0..{workers - 1} ([server] infer_workers = {workers})", cam.shard, key=("cameras", name, "shard"))
        for key in ("frames", "results"):
            endpoint = getattr(t, key)
            if workers > 1 and endpoint.startswith("tcp://") and SHARD not in endpoint:
                raise fail("a tcp endpoint with {shard} in it, one address per infer worker (e.g. "
                           "tcp://crowdwatch-infer-{shard}.crowdwatch-infer:5555 or tcp://HOST:5555+{shard})", endpoint, key=("transport", key))
        for key in ENDPOINT_KEYS:
            if any(ipc_too_long(for_shard(getattr(t, key), shard)) for shard in range(workers)):
                raise fail(IPC_TOO_LONG, getattr(t, key), key=("transport", key))
        return self

    def shard_of(self, camera: str) -> int:
        """The inference worker that serves ``camera``: its ``shard``, else the rendezvous hash of its name."""
        cam = self.cameras[camera]
        return cam.shard if cam.shard is not None else rendezvous(camera, self.server.infer_workers)

    def shard_cameras(self, shard: int) -> list[str]:
        """The cameras inference worker ``shard`` serves."""
        return [name for name in self.cameras if self.shard_of(name) == shard]

    def endpoint(self, key: str, shard: int) -> str:
        """Worker ``shard``'s [transport] ``frames``, ``results``, ``frames_bind`` or ``results_bind``."""
        return for_shard(getattr(self.transport, key), shard)

    def results_endpoints(self) -> list[str]:
        """Every worker's results endpoint: the web stage subscribes to all of them."""
        return [self.endpoint("results", shard) for shard in range(self.server.infer_workers)]

    @model_validator(mode="after")
    def _remember_origin(self, info: ValidationInfo) -> Config:
        ctx = info.context or {}
        self._source = str(ctx.get("source", "<config>"))
        self._base_dir = Path(ctx.get("base_dir") or Path.cwd())
        found = self.model.machine_problems(self.cameras, self._source)
        for cam in self.cameras.values():
            found += cam.machine_problems(self._source)
        found += self.transport.machine_problems(ctx.get("environ", os.environ), self._source)
        self._warnings = tuple(found)
        return self

    @property
    def warnings(self) -> tuple[ConfigWarning, ...]:
        """Problems of this machine found at load (``ConfigWarning``): ``config check`` prints them,
        and each stage refuses to start on one that ``stops`` it (``run`` and ``infer`` on a ``serving`` one)."""
        return self._warnings

    @property
    def source(self) -> str:
        """The file (or label) this configuration was read from."""
        return self._source

    @property
    def base_dir(self) -> Path:
        """The folder relative paths were resolved against."""
        return self._base_dir


_WILDCARDS = ("", "*", "0.0.0.0", "::")


def _same_host(a: str, b: str) -> bool:
    """Whether two binds on one port would clash: the same address, or either binds every address."""
    a, b = (h.strip("[]").lower().replace("localhost", "127.0.0.1") for h in (a, b))
    return a == b or a in _WILDCARDS or b in _WILDCARDS


_BOUND_KEYWORDS = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum", "lt": "exclusiveMaximum"}


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the config file (what editors validate TOML against)."""

    def clean(node: Any) -> Any:
        if isinstance(node, dict):
            # Bounds on an optional duration come out as pydantic's own names; JSON Schema spells them differently.
            return {_BOUND_KEYWORDS.get(k, k): clean(v) for k, v in node.items()}
        if isinstance(node, list):
            return [clean(v) for v in node]
        return node

    schema = clean(Config.model_json_schema(mode="validation"))
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
