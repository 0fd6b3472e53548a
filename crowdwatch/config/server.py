"""[server]: the metrics and web listeners, their access token and limits (crowdwatch/httpbase.py)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from .base import ENV_NAME_PATTERN, Integer, Section, Text
from .errors import Expect, fail
from .units import Duration

Host = Annotated[Text, Expect("a host name or address")]
# 0 ("any free port") is for one-off runs, from the command line (--port 0, --metrics-port 0):
# the other stages, Prometheus and the manifests find a server by the port written here.
Port = Annotated[Integer, Expect("a fixed port in [1, 65535] (0, any free port, only from the command line)")]
EnvName = Annotated[Text, Expect("an environment variable name"), Field(pattern=ENV_NAME_PATTERN)]


class ServerConfig(Section):
    metrics_host: Host = Field("127.0.0.1", pattern=r"^\S+$", description="address /metrics, /healthz and /readyz listen on")
    metrics_port: Port = Field(9108, ge=1, le=65535, description="port of /metrics, /healthz and /readyz")
    web_host: Host = Field("127.0.0.1", pattern=r"^\S+$", description="address the live overlay listens on")
    web_port: Port = Field(8080, ge=1, le=65535, description="port of the live overlay")
    infer_workers: Integer = Field(
        1, ge=1, le=64, description="inference worker processes, each serving its shard of the cameras (a camera's shard, else a "
        "stable hash of its name); crowdwatch run serves worker i's /metrics on metrics_port + i",
    )  # fmt: skip
    liveness_timeout_s: Duration = Field(
        120.0, ge=1, alias="liveness_timeout",
        description="/healthz turns 503 when the inference loop has not finished a cycle for this long",
    )  # fmt: skip
    stall_restart_s: Duration = Field(
        30.0, ge=1, le=3600, alias="stall_restart",
        description="crowdwatch run replaces a stage whose loop made no progress (no heartbeat) for this long: a hang or a SIGSTOP",
    )  # fmt: skip
    start_timeout_s: Duration = Field(
        300.0, ge=1, le=86400, alias="start_timeout",
        description="crowdwatch run: how long a stage may take from its start to its first heartbeat (loading models) before it counts as hung",
    )  # fmt: skip

    auth_token_env: EnvName = Field(
        "CROWDWATCH_TOKEN",
        description="environment variable holding the access token; required (start-up error without it) when a listener "
        "binds beyond localhost; clients send it as a Bearer token, a basic-auth password or ?token=",
    )  # fmt: skip
    max_connections: Integer = Field(256, ge=4, le=10000, description="HTTP connections served at once per listener; more get a 503")
    max_streams: Integer = Field(32, ge=1, le=1000, description="live MJPEG streams served at once by the web stage; more get a 503")
    request_timeout_s: Duration = Field(
        15.0, ge=1, le=600, alias="request_timeout",
        description="a request's line and headers must arrive within this, and a connection idle (or not reading) this long is closed",
    )  # fmt: skip

    @model_validator(mode="after")
    def _streams_within_connections(self) -> ServerConfig:
        if self.max_streams >= self.max_connections:
            raise fail(f"fewer streams than max_connections ({self.max_connections})", self.max_streams, key="max_streams")
        if self.metrics_port + self.infer_workers - 1 > 65535:
            raise fail(f"a port of at most {65536 - self.infer_workers} (infer worker i uses metrics_port + i)", self.metrics_port, key="metrics_port")
        return self

    def listeners(self) -> list[tuple[str, str, int]]:
        """(key, host, port) of each HTTP server: the root model checks that no two share an address."""
        metrics = [("metrics_port" if i == 0 else f"metrics_port of infer worker {i}", self.metrics_host, self.metrics_port + i)
                   for i in range(self.infer_workers)]
        return [*metrics, ("web_port", self.web_host, self.web_port)]
