"""[transport]: the ZeroMQ endpoints between the stages, and CURVE for tcp://."""

from __future__ import annotations

import os
import re
from typing import Annotated, Any

from pydantic import AfterValidator, Field, ValidationInfo, model_validator

from .base import ENV_NAME_PATTERN, Flag, Integer, OptionalPath, Section, Text, base_dir
from .errors import Expect, fail
from .units import Duration

# sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_IPC_PATH_BYTES = 107
ENDPOINT_EXPECTED = "an endpoint 'ipc://PATH' or 'tcp://HOST:PORT'"
SHARD = "{shard}"  # an inference worker's number in an endpoint (docs/DEPLOY.md, Scale-out)
_PORT_PLUS = re.compile(r":(\d+)\+(\d+)$")


def for_shard(endpoint: str, shard: int) -> str:
    """Worker ``shard``'s address: ``{shard}`` replaced (a tcp port written ``BASE+{shard}`` is BASE plus
    the shard). Without ``{shard}``, worker 0 uses the endpoint as written, and worker i > 0 an ipc path with
    ``-i`` before its suffix (workers share the host) or the same tcp endpoint (each on its own host)."""
    if SHARD in endpoint:
        return _PORT_PLUS.sub(lambda m: f":{int(m[1]) + int(m[2])}", endpoint.replace(SHARD, str(shard)))
    if shard and endpoint.startswith("ipc://"):
        head, dot, suffix = endpoint.rpartition(".")
        return f"{head}-{shard}.{suffix}" if dot and "/" not in suffix else f"{endpoint}-{shard}"
    return endpoint


def ipc_too_long(endpoint: str) -> bool:
    return endpoint.startswith("ipc://") and len(endpoint[len("ipc://"):].encode()) > MAX_IPC_PATH_BYTES


IPC_TOO_LONG = f"an ipc path of at most {MAX_IPC_PATH_BYTES} bytes (a unix socket limit); use a shorter [paths] run"


def _endpoint(text: str, info: ValidationInfo) -> str:
    """Check an endpoint (as worker 0 sees it); a relative ipc path is pinned to the config's folder (ZeroMQ would use the cwd)."""
    if text.startswith("ipc://"):
        path = text[len("ipc://"):]
        if not path:
            raise fail(ENDPOINT_EXPECTED, text)
        full = "ipc://" + (path if os.path.isabs(path) else str(base_dir(info) / path))
        if ipc_too_long(for_shard(full, 0)):
            raise fail(IPC_TOO_LONG, text)
        return full
    if text.startswith("tcp://"):
        host, sep, port = for_shard(text, 0)[len("tcp://"):].rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise fail(ENDPOINT_EXPECTED + " (PORT may be BASE+{shard})", text)
        return text
    raise fail(ENDPOINT_EXPECTED, text)


Endpoint = Annotated[Text, AfterValidator(_endpoint)]
EnvName = Annotated[Text, Expect("an environment variable name"), Field(pattern=ENV_NAME_PATTERN)]


class CurveConfig(Section):
    """CURVE for tcp:// endpoints. The binding side (infer) is the CURVE server.

    Keys are Z85 strings in the named environment variables, or zmq.auth
    certificate files (``*_cert``, which win when set).
    """

    enabled: Flag = Field(False, description="encrypt and authenticate tcp:// endpoints (ipc:// is protected by file permissions)")
    server_public_env: EnvName = Field("CROWDWATCH_CURVE_SERVER_PUBLIC", description="environment variable holding the server's Z85 public key")
    server_secret_env: EnvName = Field("CROWDWATCH_CURVE_SERVER_SECRET", description="environment variable holding the server's Z85 secret key")
    client_public_env: EnvName = Field("CROWDWATCH_CURVE_CLIENT_PUBLIC", description="environment variable holding the client's Z85 public key")
    client_secret_env: EnvName = Field("CROWDWATCH_CURVE_CLIENT_SECRET", description="environment variable holding the client's Z85 secret key")
    server_cert: OptionalPath = Field(None, description="zmq.auth certificate file of the server (wins over the environment)")
    client_cert: OptionalPath = Field(None, description="zmq.auth certificate file of the client (wins over the environment)")
    authorized_clients: OptionalPath = Field(
        None, description="folder of client public certificates; unset: any client that knows the server's public key may connect"
    )


def _scheme(endpoint: str) -> str:
    return endpoint.split("://")[0]


class TransportConfig(Section):
    frames: Endpoint = Field(None, description="endpoint ingest connects to (PUSH) and infer binds (PULL); default ipc://<paths.run>/frames.ipc")  # type: ignore[assignment]
    results: Endpoint = Field(None, description="endpoint infer binds (PUB) and web connects to (SUB); default ipc://<paths.run>/results.ipc")  # type: ignore[assignment]
    frames_bind: Endpoint = Field(None, description="what the binding side binds, e.g. tcp://0.0.0.0:5555; default: frames")  # type: ignore[assignment]
    results_bind: Endpoint = Field(None, description="what the binding side binds; default: results")  # type: ignore[assignment]
    jpeg_quality: Integer = Field(85, ge=0, le=100, description="frames over tcp:// travel as JPEG of this quality; 0 keeps raw rgb24")
    hwm: Integer = Field(4, ge=1, le=10000, description="ZeroMQ high-water mark, messages per peer")
    max_frame_age_s: Duration = Field(5.0, gt=0, alias="max_frame_age", description="older frames are dropped as `stale`")
    curve: CurveConfig = Field(default_factory=CurveConfig, description="encryption and authentication for tcp:// endpoints")

    @model_validator(mode="before")
    @classmethod
    def _binds_default_to_endpoints(cls, data: Any) -> Any:
        """frames/results default to ipc sockets under [paths] run (filled in by the root model)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key in ("frames", "results"):
            if f"{key}_bind" not in data and key in data:
                data[f"{key}_bind"] = data[key]
        return data

    @model_validator(mode="after")
    def _consistent(self) -> TransportConfig:
        if self.frames == self.results:
            raise fail("a different endpoint from frames", self.results, key="results")
        if self.frames_bind == self.results_bind:
            raise fail("a different endpoint from frames_bind", self.results_bind, key="results_bind")
        for key in ("frames", "results"):
            endpoint, bind = getattr(self, key), getattr(self, f"{key}_bind")
            if _scheme(endpoint) != _scheme(bind):
                raise fail(f"the same transport as {key} ({_scheme(endpoint)}://)", bind, key=f"{key}_bind")
        if self.curve.enabled and not any(e.startswith("tcp://") for e in (self.frames, self.results)):
            raise fail("CURVE only with tcp:// endpoints (ipc is protected by file permissions)", True, key=("curve", "enabled"))
        return self

    def listeners(self, workers: int = 1) -> list[tuple[str, str, int]]:
        """(key, host, port) of each tcp:// socket the infer workers bind (ipc:// sockets are files, not ports).
        A bind with ``{shard}`` counts once per worker (they may share a host), one without it once."""
        out = []
        for key in ("frames_bind", "results_bind"):
            endpoint = getattr(self, key)
            shards = range(workers) if SHARD in endpoint else range(1)
            for shard in shards if endpoint.startswith("tcp://") else ():
                host, _, port = for_shard(endpoint, shard)[len("tcp://"):].rpartition(":")
                out.append((key if shard == 0 else f"{key} of infer worker {shard}", host, int(port)))
        return out

    @property
    def frame_encoding(self) -> str:
        """'jpeg' across hosts (tcp, quality > 0), raw 'rgb24' within a host."""
        return "jpeg" if self.frames.startswith("tcp://") and self.jpeg_quality > 0 else "rgb24"
