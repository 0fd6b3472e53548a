"""The ZeroMQ wire format and socket helpers (docs/DESIGN.md, "Wire format").

Every message is multipart. Part 0 is a UTF-8 JSON header: the schema version,
the message (``body``, tagged by its ``kind``) and a ``parts`` list that
describes, in order, the raw buffers that follow::

    {"v": 2, "parts": [{"name": "image", "shape": [384, 640, 3], "encoding": "rgb24"}],
     "body": {"kind": "frame", "camera": "plaza", "seq": 42, "capture_ns": 1718000000123456789,
              "fit": {"src_w": 1920, "src_h": 1080, "scale": 0.333, "content_w": 640, "content_h": 360,
                      "out_w": 640, "out_h": 384}, "truth": 57}}

    {"v": 2, "parts": [{"name": "density", "shape": [48, 80], "encoding": "float16"},
                       {"name": "image", "shape": [384, 640, 3], "encoding": "jpeg"}],
     "body": {"kind": "result", "camera": "plaza", "seq": 42, "capture_ns": ..., "model_version": "plaza-0003",
              "figures": {"count": 56.8, "zones": {"fountain": 12.3}, "uncertainty": 2.1, ...},
              "fit": {...}, "timings": {"infer": 0.05, "latency": 0.2}}}

    {"v": 2, "parts": [], "body": {"kind": "adaptation", "camera": "plaza", "time": 1718000000.5, "result": "succeeded"}}

The bodies are :class:`FrameMessage`, :class:`crowdwatch.result.Result` and
:class:`AdaptationRun`: msgspec Structs whose declarations are the schema (types
and bounds). A part is named after the body's array field it fills. Encodings:
``rgb24`` (uint8 H x W x 3, RGB, row-major), ``jpeg`` (a JPEG of that image;
``shape`` is the decoded shape) and ``float16`` (little-endian). Frame images
are the model input: the camera frame made so by the ``fit`` beside it.

Nothing here pickles: headers are JSON, buffers are raw bytes sent zero-copy
from numpy and received as read-only views. Every header field is validated;
any problem raises :class:`WireError` whose ``reason`` (one of :data:`REASONS`)
is the ``reason`` label of ``crowd_frames_dropped_total``.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, ClassVar, Generic, Literal, Protocol, TypeVar, get_args

import cv2
import msgspec
import numpy as np
import zmq
import zmq.auth

from crowdwatch.config.names import CAMERA_NAME_RE
from crowdwatch.config.transport import CurveKeys
from crowdwatch.fit import Fit
from crowdwatch.handshake import FAILED, Monitor, RefusalWatch, Throttle, server_refusal
from crowdwatch.result import CameraName, Count, NonNegative, Result

SCHEMA_VERSION = 2
MAX_HEADER_BYTES = 64 * 1024
MAX_IMAGE_SIDE = 4096
MAX_MAP_SIDE = 1024
MAX_IMAGE_BYTES = MAX_IMAGE_SIDE * MAX_IMAGE_SIDE * 3
# Biggest single part a receiver accepts (ZMQ_MAXMSGSIZE disconnects bigger senders).
MAX_PART_BYTES = MAX_IMAGE_BYTES + 64 * 1024
MAX_STATS = 32

REASONS = frozenset(
    {
        "bad_json",  # header is not UTF-8 JSON object / has NaN
        "schema",  # unknown schema version
        "bad_kind",  # a frame where a result was expected, or the reverse
        "missing_field",
        "unknown_field",
        "bad_field",  # wrong type or out of range
        "bad_camera",  # camera name fails validation
        "bad_shape",
        "bad_dtype",  # encoding not allowed for that part
        "bad_parts",  # part list malformed, duplicate or missing names, count mismatch
        "truncated",  # buffer shorter than its shape says
        "bad_length",  # buffer longer than its shape says
        "oversized",  # header or part above the size limits
        "bad_jpeg",  # JPEG does not decode to the announced shape
        "bad_value",  # non-finite numbers in a float part
        # receiver-level reasons
        "unknown_camera",  # not a configured camera
        "overflow",  # replaced by a newer message of the same camera before use
        "stale",  # older than the maximum frame age
    }
)


class WireError(ValueError):
    """A message that must be dropped; ``reason`` is a short label from REASONS."""

    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in REASONS, reason
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


# --------------------------------------------------------------------------- messages

# The in-band source counters a frame may carry (streamer.ingest.counters), with the
# highest value each is believed up to: a fixed set, so the metrics they become have
# a fixed set of label values whatever a sender puts in its header.
STATS_LIMITS: Mapping[str, int] = MappingProxyType({
    "reconnects": 10**7,  # one every 10 s for three years
    "dropped_hwm": 10**15,
    "dropped_sampling": 10**15,
    "dropped_nonkey": 10**15,
    "dropped_decode_error": 10**15,
})
# Parts of a message that a receiver discarded while keeping the message (counted in
# crowd_wire_ignored_total{what}); "truth" is discarded by the infer stage for a
# camera that is not synthetic.
IGNORED = ("unknown_stat", "clamped_stat", "truth")
StatName = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,47}$")]


class FrameMessage(msgspec.Struct, frozen=True, eq=False, forbid_unknown_fields=True, omit_defaults=True,
                   tag="frame", tag_field="kind"):  # fmt: skip
    """One model-input frame. ``image`` is uint8 (H, W, 3) RGB; decoded ones are read-only."""

    camera: CameraName
    seq: Count
    capture_ns: Count
    image: np.ndarray | None = None  # a part, never in the header
    fit: Fit | None = None  # how the camera frame became `image`; None: it already was the model input
    truth: NonNegative | None = None  # the synthetic camera's true count
    # cumulative source counters (reconnects, drops by reason), so one /metrics
    # endpoint at the inference stage covers every ingest process
    stats: Annotated[dict[StatName, Count], msgspec.Meta(max_length=MAX_STATS)] | None = None

    ARRAYS: ClassVar[tuple[str, ...]] = ("image",)


RunResult = Literal["succeeded", "failed", "rejected", "skipped"]
ADAPTATION_RESULTS: tuple[str, ...] = get_args(RunResult)  # crowd_adaptation_runs_total{result}


class AdaptationRun(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="adaptation", tag_field="kind"):
    """A finished adaptation run, as recorded in runs.jsonl (adapt/store/runs.py), for the exporter."""

    camera: CameraName
    time: NonNegative  # unix time of the record
    result: RunResult

    ARRAYS: ClassVar[tuple[str, ...]] = ()


Body = FrameMessage | Result | AdaptationRun
B = TypeVar("B")
Encoding = Literal["rgb24", "jpeg", "float16"]


class Part(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    shape: list[int]
    encoding: Encoding


class Header(msgspec.Struct, Generic[B], forbid_unknown_fields=True):
    v: int
    parts: list[Part]
    body: B


# kind -> {part name: allowed encodings}; the names are the body's array fields
_PART_RULES: dict[str, dict[str, set[str]]] = {
    "frame": {"image": {"rgb24", "jpeg"}},
    "result": {"density": {"float16"}, "uncertainty_map": {"float16"}, "image": {"rgb24", "jpeg"}},
    "adaptation": {},
}
_REQUIRED_PARTS = {"frame": {"image"}, "result": {"density"}, "adaptation": set()}
_KIND: dict[type, str] = {t: t.__struct_config__.tag for t in (FrameMessage, Result, AdaptationRun)}  # type: ignore[misc]


def bounded_stats(stats: Mapping[str, int] | None) -> tuple[dict[str, int] | None, tuple[str, ...]]:
    """The known counters of a frame, clamped to their limits, and what was not kept (``IGNORED`` labels)."""
    if stats is None:
        return None, ()
    out: dict[str, int] = {}
    ignored: list[str] = []
    for key, value in stats.items():
        limit = STATS_LIMITS.get(key)
        what = "unknown_stat" if limit is None else "clamped_stat" if value > limit else None
        if what is not None and what not in ignored:
            ignored.append(what)
        if limit is not None:
            out[key] = min(value, limit)
    return out, tuple(ignored)


# --------------------------------------------------------------------------- encoding

Buffer = bytes | memoryview


def _raw(arr: np.ndarray) -> memoryview:
    # A flat byte view of a C-contiguous array: pyzmq sends it without copying.
    return memoryview(np.ascontiguousarray(arr)).cast("B")


def _image_part(name: str, image: np.ndarray, jpeg_quality: int | None) -> tuple[Part, Buffer]:
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"{name} must be uint8 (H, W, 3) RGB, found {img.dtype} {img.shape}")
    if not (1 <= img.shape[0] <= MAX_IMAGE_SIDE and 1 <= img.shape[1] <= MAX_IMAGE_SIDE):
        raise ValueError(f"{name} is larger than {MAX_IMAGE_SIDE} pixels a side: {img.shape}")
    if jpeg_quality:
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in [1, 100], found {jpeg_quality}")
        # cv2 encodes BGR; a proper RGB JPEG can go straight to a browser (MJPEG).
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
        if not ok:
            raise ValueError("JPEG encoding failed")
        return Part(name, list(img.shape), "jpeg"), buf.tobytes()
    return Part(name, list(img.shape), "rgb24"), _raw(img)


def _map_part(name: str, arr: np.ndarray) -> tuple[Part, Buffer]:
    a = np.asarray(arr)
    if a.ndim == 4 and a.shape[:2] == (1, 1):
        a = a[0, 0]
    if a.ndim != 2 or not all(1 <= s <= MAX_MAP_SIDE for s in a.shape):
        raise ValueError(f"{name} must be a 2-D map of at most {MAX_MAP_SIDE} a side, found {a.shape}")
    with np.errstate(over="ignore"):  # values beyond float16 become inf, refused just below
        half = np.ascontiguousarray(a, dtype="<f2")
    if not np.all(np.isfinite(half)):
        raise ValueError(f"{name} has non-finite values (or values beyond float16)")
    return Part(name, list(half.shape), "float16"), _raw(half)


def _plain(obj: Any) -> Any:
    # numpy scalars (a count summed by numpy, say) are written as the numbers they are
    if isinstance(obj, np.generic):
        return obj.item()
    raise NotImplementedError(f"cannot put a {type(obj).__name__} in a header")


_ENCODER = msgspec.json.Encoder(enc_hook=_plain)


def _encode(body: Body, jpeg_quality: int | None = None) -> list[Buffer]:
    """Header + the body's arrays as parts; checked with the receiver's rules, so a bad message fails here, loudly."""
    parts: list[tuple[Part, Buffer]] = []
    for name in body.ARRAYS:
        arr = getattr(body, name)
        if arr is not None:
            parts.append(_image_part(name, arr, jpeg_quality) if name == "image" else _map_part(name, arr))
    bare = msgspec.structs.replace(body, **dict.fromkeys(body.ARRAYS))  # type: ignore[type-var]
    data = _ENCODER.encode(Header(v=SCHEMA_VERSION, parts=[p for p, _ in parts], body=bare))
    if len(data) > MAX_HEADER_BYTES:
        raise ValueError(f"header is {len(data)} bytes, above {MAX_HEADER_BYTES}")
    out = [data, *(b for _, b in parts)]
    decode(out, type(body), arrays=False)
    return out


def encode_frame(msg: FrameMessage, jpeg_quality: int | None = None) -> list[Buffer]:
    """Header + image part; raw rgb24 unless ``jpeg_quality`` (1..100) is given."""
    if msg.image is None:
        raise ValueError("a frame needs its image")
    return _encode(msg, jpeg_quality)


def encode_result(result: Result, jpeg_quality: int | None = None) -> list[Buffer]:
    """Header + density (float16) [+ uncertainty map] [+ image, JPEG if ``jpeg_quality``]."""
    if result.density is None:
        raise ValueError("a result needs its density map")
    return _encode(result, jpeg_quality)


def encode_adaptation(run: AdaptationRun) -> list[Buffer]:
    """A header with no parts."""
    return _encode(run)


# --------------------------------------------------------------------------- decoding


def _buffer(part: object) -> memoryview:
    if isinstance(part, zmq.Frame):
        return part.buffer
    try:
        return memoryview(part).cast("B")  # type: ignore[arg-type]
    except TypeError:
        raise WireError("bad_parts", f"part of type {type(part).__name__} is not a buffer") from None


def _reason(exc: msgspec.ValidationError) -> str:
    """The drop reason for a header that does not match the declarations (msgspec says what and where)."""
    text = str(exc)
    path = text.rpartition(" - at `")[2].rstrip("`") if " - at `" in text else "$"
    if path.startswith("$.parts"):
        return "bad_shape" if ".shape" in path else "bad_dtype" if path.endswith(".encoding") else "bad_parts"
    if text.startswith("Object missing required field"):
        return "missing_field"
    if text.startswith("Object contains unknown field"):
        return "unknown_field"
    return {"$.body.camera": "bad_camera", "$.body.kind": "bad_kind"}.get(path, "bad_field")


@functools.cache
def _header_type(body_type: Any) -> Any:
    return Header[body_type]  # type: ignore[valid-type]


def _decode_header(parts: Sequence[object], body_type: Any) -> tuple[Header[Any], list[memoryview]]:
    """The validated header (its body of ``body_type``, a message type or a union of them) and the buffers."""
    if not parts:
        raise WireError("bad_parts", "no parts")
    head = _buffer(parts[0])
    if len(head) > MAX_HEADER_BYTES:
        raise WireError("oversized", f"header is {len(head)} bytes")
    try:
        raw = msgspec.json.decode(head)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:  # not JSON (NaN is not), not UTF-8, numbers out of range
        raise WireError("bad_json", str(exc)[:100]) from None
    if not isinstance(raw, dict):
        raise WireError("bad_json", "header is not a JSON object")
    # version and kind first: a message of another schema or kind fails as such, whatever else it holds
    if raw.get("v") != SCHEMA_VERSION:
        raise WireError("schema", f"schema version {raw.get('v')!r}, expected {SCHEMA_VERSION}")
    body = raw.get("body")
    kind = body.get("kind") if isinstance(body, dict) else None
    kinds = {_KIND[t] for t in get_args(body_type) or (body_type,)}
    if not isinstance(kind, str) or kind not in kinds:  # a list or an object is no kind (and unhashable)
        expected = " or ".join(sorted(kinds))
        raise WireError("bad_kind", f"a {kind!r} where a {expected} was expected"[:100])
    try:
        header = msgspec.convert(raw, _header_type(body_type))
    except msgspec.ValidationError as exc:
        raise WireError(_reason(exc), str(exc)[:100]) from None
    return header, [_buffer(p) for p in parts[1:]]


def _check_parts(kind: str, descs: list[Part], buffers: list[memoryview]) -> None:
    rules = _PART_RULES[kind]
    if len(buffers) != len(descs):
        raise WireError("bad_parts", f"{len(buffers)} buffers for {len(descs)} descriptors")
    seen: set[str] = set()
    for d in descs:
        if d.name not in rules or d.name in seen:
            raise WireError("bad_parts", f"unexpected or repeated part {d.name!r}"[:80])
        seen.add(d.name)
        if d.encoding not in rules[d.name]:
            raise WireError("bad_dtype", f"{d.name} as {d.encoding!r}")
        is_image = d.name == "image"
        side = MAX_IMAGE_SIDE if is_image else MAX_MAP_SIDE
        if len(d.shape) != (3 if is_image else 2) or not all(1 <= s <= side for s in d.shape[:2]) or (is_image and d.shape[2] != 3):
            raise WireError("bad_shape", f"{d.name} shape {d.shape!r}"[:80])
    missing = _REQUIRED_PARTS[kind] - seen
    if missing:
        raise WireError("bad_parts", f"missing part {', '.join(sorted(missing))}")


def _decode_buffer(d: Part, buf: memoryview) -> np.ndarray:
    if len(buf) > MAX_PART_BYTES:
        raise WireError("oversized", f"{d.name} is {len(buf)} bytes")
    shape = tuple(d.shape)
    if d.encoding == "jpeg":
        if len(buf) > math.prod(shape) + 64 * 1024:
            raise WireError("oversized", f"{d.name}: JPEG larger than its raw image")
        bgr = cv2.imdecode(np.frombuffer(buf, dtype=np.uint8), cv2.IMREAD_COLOR)
        if bgr is None or bgr.shape != shape:
            got = None if bgr is None else bgr.shape
            raise WireError("bad_jpeg", f"{d.name} decodes to {got}, header says {shape}")
        arr = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        arr.setflags(write=False)
        return arr
    dtype = np.dtype(np.uint8) if d.encoding == "rgb24" else np.dtype("<f2")
    expected = math.prod(shape) * dtype.itemsize
    if len(buf) < expected:
        raise WireError("truncated", f"{d.name}: {len(buf)} bytes, shape needs {expected}")
    if len(buf) > expected:
        raise WireError("bad_length", f"{d.name}: {len(buf)} bytes, shape needs {expected}")
    # Zero-copy: a read-only view over the received message.
    arr = np.frombuffer(buf, dtype=dtype).reshape(shape)
    arr.setflags(write=False)
    if d.encoding == "float16" and not np.all(np.isfinite(arr)):
        raise WireError("bad_value", f"{d.name} has non-finite values")
    return arr


def _image_size(descs: list[Part]) -> tuple[int, int] | None:
    """(w, h) the header announces for its image part."""
    shape = next((d.shape for d in descs if d.name == "image"), None)
    return None if shape is None else (shape[1], shape[0])


def decode(
    parts: Sequence[Buffer | zmq.Frame],
    body_type: Any,
    *,
    arrays: bool = True,
    max_size: Callable[[str], tuple[int, int] | None] | None = None,
) -> Any:
    """Validate and decode a message whose body is ``body_type`` (a message type or a union of them).

    Raises WireError(reason). ``arrays=False`` checks the part list but decodes
    no buffer (the arrays stay None): for a reader of the figures alone.
    ``max_size(camera)`` gives the largest image (w, h) accepted for a camera
    (its configured model box); a bigger one is ``oversized`` and rejected
    before its buffer is decoded.
    """
    header, buffers = _decode_header(parts, body_type)
    body = header.body
    kind = _KIND[type(body)]
    _check_parts(kind, header.parts, buffers)
    size = _image_size(header.parts)
    if max_size is not None and size is not None:
        limit = max_size(body.camera)
        if limit is not None and (size[0] > limit[0] or size[1] > limit[1]):
            raise WireError("oversized", f"image {size[0]}x{size[1]} above the camera's {limit[0]}x{limit[1]}")
    if kind == "frame" and body.fit is not None and body.fit.out_size != size:
        raise WireError("bad_field", f"fit makes {body.fit.out_w}x{body.fit.out_h}, the image is {size}")
    if not arrays or not buffers:
        return body
    decoded = {d.name: _decode_buffer(d, buf) for d, buf in zip(header.parts, buffers)}
    if kind == "result" and "uncertainty_map" in decoded and decoded["uncertainty_map"].shape != decoded["density"].shape:
        raise WireError("bad_shape", "uncertainty map differs from the density map")
    return msgspec.structs.replace(body, **decoded)


def decode_frame(parts: Sequence[Buffer | zmq.Frame], max_size: Callable[[str], tuple[int, int] | None] | None = None) -> FrameMessage:
    """Validate and decode a frame message; raises WireError(reason)."""
    return decode(parts, FrameMessage, max_size=max_size)


def decode_result(parts: Sequence[Buffer | zmq.Frame], *, arrays: bool = True) -> Result:
    """Validate and decode a result message; raises WireError(reason)."""
    return decode(parts, Result, arrays=arrays)


def decode_inbound(
    parts: Sequence[Buffer | zmq.Frame], max_size: Callable[[str], tuple[int, int] | None] | None = None
) -> FrameMessage | AdaptationRun:
    """What the infer stage's PULL socket receives: frames from ingest, finished adaptation runs."""
    return decode(parts, FrameMessage | AdaptationRun, max_size=max_size)


# --------------------------------------------------------------------------- CURVE
#
# On by default for tcp:// (crowdwatch.config.transport.CurveConfig): infer, which binds, is the
# CURVE server and admits only the client keys on its allow-list; ingest, web and adapt connect
# as clients. Keys come from environment variables. A refused connection is counted by reason
# (REFUSED) and logged, at most once a minute per reason and client, by infer; a client learns
# that it was refused through its RefusalWatch (crowdwatch/handshake.py).


def client_curve(transport: Any) -> CurveKeys | None:
    """A client's keys for infer's sockets (``config.TransportConfig``), None when CURVE is off
    (ipc:// endpoints, or ``insecure``). Raises ConfigWarning (a ValueError) naming the variable
    that is missing or malformed."""
    return transport.curve.client_keys() if transport.curve_on else None


def server_curve(transport: Any) -> tuple[CurveKeys, frozenset[bytes]] | None:
    """infer's key pair and allow-list, None when CURVE is off."""
    if not transport.curve_on:
        return None
    return transport.curve.server_keys(), transport.curve.allowed_clients()


class CurveServer:
    """The CURVE server side of one process: a ZAP handler that admits the allow-listed client keys only,
    and a watch on the bound sockets that counts every refused connection.

    Start it before binding (without a ZAP handler libzmq admits every CURVE client), bind the sockets
    with ``open_socket(..., curve=keys, bind=True)``, :meth:`watch` each, then :meth:`start`.
    ``on_refused(socket_name, reason)`` is called once per refused connection (reasons: :data:`REFUSED`),
    from the watch thread. Log lines go to ``log``, at most one per minute per reason and client.
    """

    def __init__(self, ctx: zmq.Context, allowed: Iterable[bytes], on_refused: Callable[[str, str], None] | None = None,
                 log: logging.Logger | None = None) -> None:  # fmt: skip
        from zmq.auth.thread import ThreadAuthenticator

        self.allowed = frozenset(allowed)
        self.on_refused = on_refused
        self.log = log or logging.getLogger("crowdwatch.curve")
        self._throttle = Throttle()  # the ZAP thread and the watch thread both log
        self._monitor = Monitor(FAILED, self._handshake_failed)
        self._peer = "?"
        server = self

        class _Authenticator(ThreadAuthenticator):
            def handle_zap_message(self, msg: list[bytes]) -> Any:
                # the peer's address, for the log line of a refused key (ZAP requests are handled one at a time)
                server._peer = msg[3].decode(errors="replace") if len(msg) > 3 else "?"
                return super().handle_zap_message(msg)

        self.auth = _Authenticator(ctx, log=logging.getLogger("crowdwatch.curve.zap"))
        self.auth.start()
        self.auth.configure_curve_callback(domain="*", credentials_provider=self)

    def callback(self, domain: str, client_key: bytes) -> bool:
        """The ZAP decision (zmq.auth's credentials provider): the Z85 key is on the allow-list."""
        if client_key in self.allowed:
            return True
        self._say(("not_allowed", client_key.decode(errors="replace"), self._peer),
                  "refused a client from %s: its CURVE key %s is not on the allow-list", self._peer, client_key.decode(errors="replace"))
        return False

    def _say(self, key: tuple[str, ...], msg: str, *args: object) -> None:
        more = self._throttle(key)
        if more is not None:
            self.log.warning(msg + more, *args, extra={"event": "transport_refused"})

    def watch(self, sock: zmq.Socket, name: str) -> None:
        """Count the handshakes ``sock`` (a bound CURVE socket) fails, as ``name`` (frames, results)."""
        self._monitor.watch(sock, name)

    def start(self) -> CurveServer:
        self._monitor.start()
        return self

    def _handshake_failed(self, name: str, ev: dict[str, Any]) -> None:
        reason, text = server_refusal(ev["event"], ev["value"])
        if self.on_refused is not None:
            self.on_refused(name, reason)
        if reason != "not_allowed":  # the ZAP handler said that one, with the key and the address
            self._say((reason, name), "refused a connection on the %s socket (%s): %s", name, ev["endpoint"].decode(errors="replace"), text)

    def stop(self) -> None:
        """Stop watching (before the sockets close) and stop the ZAP handler."""
        self._monitor.stop()
        self.auth.stop()


# --------------------------------------------------------------------------- sockets

SocketKind = Literal["push", "pull", "pub", "sub"]
_KINDS = {"push": zmq.PUSH, "pull": zmq.PULL, "pub": zmq.PUB, "sub": zmq.SUB}
# infer's socket that a client of each kind connects to (the ``socket`` of a refusal)
_SERVER_SOCKET = {"push": "frames", "sub": "results"}


def open_socket(
    ctx: zmq.Context,
    kind: SocketKind,
    endpoint: str,
    *,
    bind: bool,
    hwm: int = 4,
    curve: CurveKeys | None = None,
    max_part_bytes: int = MAX_PART_BYTES,
    watch: RefusalWatch | None = None,
) -> zmq.Socket:
    """A socket with bounded queues, no linger, and CURVE when keys are given.

    The binding side is the CURVE server. A CURVE client is watched by ``watch``
    (before it connects) for the server refusing it. ipc:// socket directories
    are created with mode 0700 (the socket file is the access control within a host).
    """
    if kind not in _KINDS:
        raise ValueError(f"socket kind must be one of {sorted(_KINDS)}, found {kind!r}")
    if not endpoint.startswith(("ipc://", "tcp://")):
        raise ValueError(f"endpoint must be ipc:// or tcp://, found {endpoint!r}")
    sock = ctx.socket(_KINDS[kind])
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, hwm)
        if kind in ("pull", "sub"):
            # Bigger parts make the sender disconnect instead of filling memory.
            sock.setsockopt(zmq.MAXMSGSIZE, max_part_bytes)
        if kind == "sub":
            sock.setsockopt(zmq.SUBSCRIBE, b"")
        if curve is not None:
            if bind:
                sock.curve_server = True
                sock.curve_secretkey = curve.secret
                sock.curve_publickey = curve.public
            else:
                if curve.server_public is None:
                    raise ValueError("a CURVE client needs the server's public key")
                sock.curve_secretkey = curve.secret
                sock.curve_publickey = curve.public
                sock.curve_serverkey = curve.server_public
                if watch is not None:
                    watch.watch(sock, _SERVER_SOCKET.get(kind, kind))
        if endpoint.startswith("ipc://") and bind:
            Path(endpoint[6:]).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        (sock.bind if bind else sock.connect)(endpoint)
    except Exception:
        sock.close(linger=0)
        raise
    return sock


def subscribe(ctx: zmq.Context, endpoints: Sequence[str], *, hwm: int = 4, curve: CurveKeys | None = None,
              watch: RefusalWatch | None = None) -> zmq.Socket:  # fmt: skip
    """One SUB socket that receives from every endpoint (each inference worker's results)."""
    sock = open_socket(ctx, "sub", endpoints[0], bind=False, hwm=hwm, curve=curve, watch=watch)
    try:
        for other in endpoints[1:]:
            sock.connect(other)
    except Exception:
        sock.close(linger=0)
        raise
    return sock


def send_parts(sock: zmq.Socket, parts: Iterable[Buffer]) -> bool:
    """Send without blocking or copying; False when the high-water mark is reached
    (the caller counts a drop): a slow consumer never stalls a camera."""
    try:
        sock.send_multipart(list(parts), flags=zmq.NOBLOCK, copy=False)
    except zmq.Again:
        return False
    return True


def send_once(endpoint: str, parts: Sequence[Buffer], curve: CurveKeys | None = None, linger_s: float = 2.0,
              log: logging.Logger | None = None) -> bool:  # fmt: skip
    """Send one message from a short-lived PUSH socket, for a process that has one thing to say.

    It is delivered within ``linger_s`` (a connection and, with CURVE, a
    handshake) or dropped: whoever sends must never wait on a receiver.
    False: it could not even be queued, or the CURVE server refused this
    client (logged to ``log``, as every client's refusal is).
    """
    started = time.monotonic()
    ctx = zmq.Context()
    try:
        with RefusalWatch(log=log, background=False) as watch:  # closes its monitor socket, even if the connect failed
            sock = open_socket(ctx, "push", endpoint, bind=False, hwm=1, curve=curve, watch=watch)
            try:
                return send_parts(sock, parts) and watch.settle(linger_s) is None
            finally:
                sock.close(linger=int(max(0.0, linger_s - (time.monotonic() - started)) * 1000))
    finally:
        ctx.term()


class _Timestamped(Protocol):
    camera: str
    capture_ns: int


M = TypeVar("M", bound=_Timestamped)


class LatestReceiver(Generic[M]):
    """Drains a socket and keeps only the newest message per camera.

    ``drain`` reads everything queued (bounded per call); an older message of a
    camera that already has a newer pending one is dropped as ``overflow``,
    messages older than ``max_age_s`` as ``stale``, unknown cameras as
    ``unknown_camera`` and malformed ones with their WireError reason. Every
    drop calls ``on_drop(reason, camera_or_None)``. An :class:`AdaptationRun`
    (an event, not a picture) of a known camera goes to ``on_event`` at once,
    never replaced. Memory: at most one pending message per known camera plus
    the socket's high-water mark.
    """

    def __init__(
        self,
        sock: zmq.Socket,
        decode: Callable[[list[zmq.Frame]], M],
        *,
        cameras: Iterable[str] | None = None,
        max_age_s: float | None = None,
        on_drop: Callable[[str, str | None], None] | None = None,
        max_pending: int = 256,
        clock: Callable[[], int] = time.time_ns,
        on_event: Callable[[AdaptationRun], None] | None = None,
    ) -> None:
        self.sock = sock
        self.decode = decode
        self.cameras = frozenset(cameras) if cameras is not None else None
        self.max_age_ns = None if max_age_s is None else int(max_age_s * 1e9)
        self.on_drop = on_drop or (lambda reason, camera: None)
        self.max_pending = max_pending
        self.clock = clock
        self.on_event = on_event
        self.pending: dict[str, M] = {}
        self.poller = zmq.Poller()
        self.poller.register(sock, zmq.POLLIN)

    def __len__(self) -> int:
        return len(self.pending)

    def _camera_of(self, parts: list[zmq.Frame]) -> str | None:
        # Best effort, for labelling the drop of a malformed message.
        try:
            cam = msgspec.json.decode(parts[0].buffer[:MAX_HEADER_BYTES])["body"]["camera"]
        except Exception:
            return None
        if isinstance(cam, str) and CAMERA_NAME_RE.fullmatch(cam) and (self.cameras is None or cam in self.cameras):
            return cam
        return None

    def _is_stale(self, msg: M, now: int) -> bool:
        return self.max_age_ns is not None and now - msg.capture_ns > self.max_age_ns

    def drain(self, timeout_ms: int = 0, max_messages: int = 1000) -> int:
        """Wait up to ``timeout_ms`` for the first message, then read what is queued."""
        received = 0
        if not self.poller.poll(timeout_ms):
            return 0
        while received < max_messages:
            try:
                parts = self.sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            received += 1
            try:
                msg = self.decode(parts)
            except WireError as exc:
                self.on_drop(exc.reason, self._camera_of(parts))
                continue
            if self.cameras is not None and msg.camera not in self.cameras:
                self.on_drop("unknown_camera", None)
                continue
            if isinstance(msg, AdaptationRun):
                if self.on_event is None:
                    self.on_drop("bad_kind", msg.camera)
                else:
                    self.on_event(msg)
                continue
            if self._is_stale(msg, self.clock()):
                self.on_drop("stale", msg.camera)
                continue
            old = self.pending.get(msg.camera)
            if old is None and len(self.pending) >= self.max_pending:
                self.on_drop("overflow", msg.camera)
                continue
            if old is not None:
                # Keep the newer capture; the other one is the overflow.
                if old.capture_ns > msg.capture_ns:
                    self.on_drop("overflow", msg.camera)
                    continue
                self.on_drop("overflow", old.camera)
            self.pending[msg.camera] = msg
        return received

    def take(self, max_n: int | None = None) -> list[M]:
        """Pop up to ``max_n`` pending messages, oldest capture first (fair across
        cameras); those that went stale while waiting are dropped."""
        now = self.clock()
        ready = sorted(self.pending.values(), key=lambda m: m.capture_ns)
        out: list[M] = []
        for msg in ready:
            if max_n is not None and len(out) >= max_n:
                break
            del self.pending[msg.camera]
            if self._is_stale(msg, now):
                self.on_drop("stale", msg.camera)
            else:
                out.append(msg)
        return out

    def poll(self, timeout_ms: int = 0, max_n: int | None = None) -> list[M]:
        """drain + take."""
        self.drain(timeout_ms)
        return self.take(max_n)
