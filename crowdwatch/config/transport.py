"""[transport]: the ZeroMQ endpoints between the stages, and CURVE for tcp:// (on by default, keys from the environment)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import zmq
from pydantic import AfterValidator, Field, ValidationInfo, model_validator
from zmq.utils import z85

from .base import ENV_NAME_PATTERN, Flag, Integer, Section, Text, base_dir
from .errors import ConfigWarning, Expect, Found, fail
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


Role = Literal["server", "client"]
Z85_KEY_CHARS = 40  # a 32-byte CURVE key in Z85
KEYGEN = "crowdwatch keys generate"
# Who cannot start without a role's keys: infer is the CURVE server, ingest and web (and adapt's
# announcements) connect as clients, and crowdwatch run runs both sides.
ROLE_STOPS: dict[str, frozenset[str]] = {"server": frozenset({"supervisor", "infer"}), "client": frozenset({"supervisor", "ingest", "web"})}
# Each variable's file from `crowdwatch keys generate`, which is also its key in the Kubernetes Secret
# crowdwatch-curve (`crowdwatch deploy k8s`), and which variables each side reads.
KEY_FILES: dict[str, str] = {
    "server_public_env": "server-public",
    "server_secret_env": "server-secret",
    "client_public_env": "client-public",
    "client_secret_env": "client-secret",
    "allowed_clients_env": "allowed-clients",
}
ROLE_KEYS: dict[str, tuple[str, ...]] = {
    "server": ("server_public_env", "server_secret_env", "allowed_clients_env"),
    "client": ("server_public_env", "client_public_env", "client_secret_env"),
}
_KEY_SPLIT = re.compile(r"[\s,]+")
_REMOVED_FILE_KEYS = ("server_cert", "client_cert", "authorized_clients")  # an earlier schema read zmq.auth key files


@dataclass(frozen=True, repr=False)
class CurveKeys:
    """Z85 keys of one side; clients also hold the server's public key."""

    public: bytes
    secret: bytes
    server_public: bytes | None = None

    def __repr__(self) -> str:  # never print a secret key
        return f"CurveKeys(public={self.public!r}, secret=***, server_public={self.server_public!r})"


class CurveConfig(Section):
    """CURVE on tcp:// endpoints: on unless turned off here. The binding side (infer) is the CURVE server.

    One model for keys: Z85 strings in environment variables, which the ``*_env`` keys name
    (``crowdwatch keys generate`` makes a set). infer needs the server pair and the allow-list,
    ingest, web and adapt the client pair and the server's public key, ``crowdwatch run`` all of
    them. A stage that lacks its keys stops at load with the variable's name.
    """

    enabled: Flag = Field(
        True, description="encrypt tcp:// endpoints and admit only the clients on the allow-list (ipc:// is protected by file "
        "permissions); false needs insecure = true",
    )  # fmt: skip
    insecure: Flag = Field(
        False, description="with enabled = false: acknowledge that tcp:// frames and results travel in plaintext and that any host "
        "that reaches the ports may send frames and read the counts (every stage logs a warning when it starts)",
    )  # fmt: skip
    server_public_env: EnvName = Field("CROWDWATCH_CURVE_SERVER_PUBLIC", description="environment variable holding the server's Z85 public key (infer, and every client)")
    server_secret_env: EnvName = Field("CROWDWATCH_CURVE_SERVER_SECRET", description="environment variable holding the server's Z85 secret key (infer only)")
    client_public_env: EnvName = Field("CROWDWATCH_CURVE_CLIENT_PUBLIC", description="environment variable holding the client's Z85 public key (ingest, web, adapt)")
    client_secret_env: EnvName = Field("CROWDWATCH_CURVE_CLIENT_SECRET", description="environment variable holding the client's Z85 secret key (ingest, web, adapt)")
    allowed_clients_env: EnvName = Field(
        "CROWDWATCH_CURVE_ALLOWED_CLIENTS", description="environment variable holding the allow-list (infer): the Z85 public keys of "
        "the clients it accepts, separated by commas, spaces or newlines; any other client is refused and counted",
    )  # fmt: skip

    @model_validator(mode="before")
    @classmethod
    def _no_key_files(cls, data: Any) -> Any:
        for key in _REMOVED_FILE_KEYS if isinstance(data, dict) else ():
            if key in data:
                raise fail(f"CURVE keys in environment variables, which the *_env keys name ({KEYGEN} makes them); "
                           "key files are not read", Found(f"{key} = {data[key]!r}"), key=key)  # fmt: skip
        return data

    @model_validator(mode="after")
    def _acknowledged(self) -> CurveConfig:
        if self.insecure and self.enabled:
            raise fail("insecure = true only beside enabled = false", True, key="insecure")
        return self

    # ----------------------------------------------------------------- keys, from the environment

    def _problem(self, field: str, role: Role, expected: str, found: str, source: str) -> ConfigWarning:
        return ConfigWarning(f"transport.curve.{field}", expected, Found(found), source, stops=ROLE_STOPS[role])

    def _key(self, field: str, what: str, role: Role, environ: Mapping[str, str], source: str) -> bytes:
        """The key in the variable ``field`` names; never shows its value (a secret)."""
        name = getattr(self, field)
        expected = f"the environment variable {name} to hold {what} ({Z85_KEY_CHARS} Z85 characters, as {KEYGEN} writes)"
        value = environ.get(name)
        if value is None or not value.strip():
            raise self._problem(field, role, expected, "it unset" if value is None else "it empty", source)
        key = value.strip().encode()
        if len(key) != Z85_KEY_CHARS:
            raise self._problem(field, role, expected, f"{len(key)} characters in it", source)
        try:
            z85.decode(key)
        except Exception:  # noqa: BLE001 - ValueError or KeyError, by character
            raise self._problem(field, role, expected, "characters that are not Z85 in it", source) from None
        return key

    def _pair(self, side: Role, role: Role, environ: Mapping[str, str], source: str) -> tuple[bytes, bytes]:
        public = self._key(f"{side}_public_env", f"the CURVE {side}'s public key", role, environ, source)
        secret = self._key(f"{side}_secret_env", f"the CURVE {side}'s secret key", role, environ, source)
        if zmq.curve_public(secret) != public:
            raise self._problem(f"{side}_public_env", role, f"the public key of the secret key in {getattr(self, f'{side}_secret_env')}",
                                f"the public key of another pair in {getattr(self, f'{side}_public_env')}", source)  # fmt: skip
        return public, secret

    def server_keys(self, environ: Mapping[str, str] | None = None, source: str = "") -> CurveKeys:
        """infer's key pair; a :class:`ConfigWarning` naming the variable when one is missing or malformed."""
        env = os.environ if environ is None else environ
        public, secret = self._pair("server", "server", env, source)
        return CurveKeys(public, secret)

    def client_keys(self, environ: Mapping[str, str] | None = None, source: str = "") -> CurveKeys:
        """A client's key pair and the server's public key (ingest, web, adapt)."""
        env = os.environ if environ is None else environ
        public, secret = self._pair("client", "client", env, source)
        server = self._key("server_public_env", "the CURVE server's public key", "client", env, source)
        return CurveKeys(public, secret, server)

    def allowed_clients(self, environ: Mapping[str, str] | None = None, source: str = "") -> frozenset[bytes]:
        """The Z85 public keys infer accepts (the allow-list)."""
        env = os.environ if environ is None else environ
        name, field = self.allowed_clients_env, "allowed_clients_env"
        expected = (f"the environment variable {name} to hold the allow-list: the Z85 public keys ({Z85_KEY_CHARS} characters each) "
                    f"of the clients infer accepts, separated by commas, spaces or newlines")  # fmt: skip
        value = env.get(name)
        items = [k for k in _KEY_SPLIT.split(value or "") if k]
        if not items:
            raise self._problem(field, "server", expected, "it unset" if value is None else "it empty", source)
        keys = set()
        for i, item in enumerate(items, 1):
            try:
                ok = len(item) == Z85_KEY_CHARS and len(z85.decode(item.encode())) == 32
            except Exception:  # noqa: BLE001
                ok = False
            if not ok:
                raise self._problem(field, "server", expected, f"item {i} of {len(items)}, {len(item)} characters, not a Z85 key", source)
            keys.add(item.encode())
        return frozenset(keys)

    def variables(self, role: Role) -> list[tuple[str, str]]:
        """(environment variable, key file / Secret key) of what ``role`` reads."""
        return [(getattr(self, field), KEY_FILES[field]) for field in ROLE_KEYS[role]]

    def problems(self, environ: Mapping[str, str], source: str = "") -> list[ConfigWarning]:
        """What this machine's environment lacks for CURVE: the first problem of the server's keys, of the
        clients' keys, and whether crowdwatch run's own clients are on its allow-list."""
        found: list[ConfigWarning] = []
        allowed = client = None
        try:
            self.server_keys(environ, source)
            allowed = self.allowed_clients(environ, source)
        except ConfigWarning as w:
            found.append(w)
        try:
            client = self.client_keys(environ, source)
        except ConfigWarning as w:
            found.append(w)
        if allowed is not None and client is not None and client.public not in allowed:
            found.append(ConfigWarning(
                "transport.curve.allowed_clients_env", f"the client's public key ({self.client_public_env}) among the keys in "
                f"{self.allowed_clients_env}: crowdwatch run's own ingest, web and adapt connect with it",
                Found("it missing"), source, stops={"supervisor"}))  # fmt: skip
        return found


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
    curve: CurveConfig = Field(default_factory=CurveConfig, description="encryption and a client allow-list for tcp:// endpoints (on by default)")

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
        if not self.uses_tcp:
            if self.curve.enabled and "enabled" in self.curve.model_fields_set:
                raise fail("CURVE only with tcp:// endpoints (ipc is protected by file permissions)", True, key=("curve", "enabled"))
        elif not self.curve.enabled and not self.curve.insecure:
            raise fail("insecure = true beside enabled = false, to acknowledge that tcp:// without CURVE is plaintext and lets any "
                       "host that reaches the ports send frames and read the counts (or CURVE, the default, with keys from "
                       f"{KEYGEN})", False if "insecure" in self.curve.model_fields_set else Found("it unset"),
                       key=("curve", "insecure"))  # fmt: skip
        return self

    @property
    def uses_tcp(self) -> bool:
        """Whether any endpoint crosses hosts (tcp://)."""
        return any(e.startswith("tcp://") for e in (self.frames, self.results))

    @property
    def curve_on(self) -> bool:
        """CURVE on every socket between the stages: the default as soon as an endpoint is tcp://."""
        return self.curve.enabled and self.uses_tcp

    @property
    def insecure_tcp(self) -> bool:
        """tcp:// endpoints with CURVE turned off (``insecure = true``): every stage warns when it starts."""
        return self.uses_tcp and not self.curve.enabled

    def machine_problems(self, environ: Mapping[str, str], source: str = "") -> list[ConfigWarning]:
        """CURVE keys this machine's environment lacks (:meth:`CurveConfig.problems`); none without CURVE."""
        return self.curve.problems(environ, source) if self.curve_on else []

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
