"""The ZeroMQ wire format and socket helpers (DESIGN.md, "Wire format").

Every message is multipart. Part 0 is a UTF-8 JSON header; every following part
is a raw buffer described by the header's ``parts`` list, in order::

    {"v": 1, "kind": "frame", "camera": "plaza", "seq": 42,
     "capture_ns": 1718000000123456789, "source_size": [1920, 1080], "truth": 57,
     "parts": [{"name": "image", "shape": [480, 640, 3], "encoding": "rgb24"}]}

    {"v": 1, "kind": "result", "camera": "plaza", "seq": 42, "capture_ns": ...,
     "count": 56.8, "zones": {"fountain": 12.3}, "uncertainty": 2.1,
     "close_pairs": 3.4, "density_peak_per_m2": 1.9, "area_over_density_ratio": 0.0,
     "calibrated": true, "model_version": "plaza-0003",
     "timings": {"queue_s": 0.01, "infer_s": 0.05},
     "parts": [{"name": "density", "shape": [60, 80], "encoding": "float16"},
               {"name": "image", "shape": [480, 640, 3], "encoding": "jpeg"}]}

Encodings: ``rgb24`` (uint8 H x W x 3, RGB, row-major), ``jpeg`` (a JPEG of
that image; ``shape`` is the decoded shape) and ``float16`` (little-endian).
Frame images are the model input: the source frame letterboxed to the camera's
width x height (crowd_metrics.letterbox); ``source_size`` is the size before.

Nothing here pickles: headers are JSON, buffers are raw bytes sent zero-copy
from numpy. Every header field is validated; any problem raises
:class:`WireError` whose ``reason`` (one of :data:`REASONS`) is the
``reason`` label of ``crowd_frames_dropped_total``.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Generic, Literal, Protocol, TypeVar

import cv2
import numpy as np
import zmq
import zmq.auth
from zmq.utils import z85

from crowdwatch.config.names import CAMERA_NAME_RE

SCHEMA_VERSION = 1
MAX_HEADER_BYTES = 64 * 1024
MAX_IMAGE_SIDE = 4096
MAX_MAP_SIDE = 1024
MAX_IMAGE_BYTES = MAX_IMAGE_SIDE * MAX_IMAGE_SIDE * 3
# Biggest single part a receiver accepts (ZMQ_MAXMSGSIZE disconnects bigger senders).
MAX_PART_BYTES = MAX_IMAGE_BYTES + 64 * 1024
MAX_ZONES = 64
MAX_TIMINGS = 16
MAX_NS = 2**63 - 1

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

_TIMING_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_VERSION_RE = re.compile(r"^[A-Za-z0-9._:+-]{1,128}$")
_ENCODINGS = {"rgb24", "jpeg", "float16"}


class WireError(ValueError):
    """A message that must be dropped; ``reason`` is a short label from REASONS."""

    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in REASONS, reason
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True, eq=False)
class FrameMessage:
    """One model-input frame. ``image`` is uint8 (H, W, 3) RGB; decoded ones are read-only."""

    camera: str
    seq: int
    capture_ns: int
    image: np.ndarray
    source_size: tuple[int, int] | None = None  # (w, h) before the letterbox
    truth: float | None = None  # the synthetic camera's true count
    # cumulative source counters (reconnects, drops by reason), so one /metrics
    # endpoint at the inference stage covers every ingest process
    stats: Mapping[str, int] | None = None
    # what the decoder discarded from an otherwise good message, one of IGNORED
    # each ("unknown_stat", "clamped_stat"): the receiver counts them
    ignored: tuple[str, ...] = ()


MAX_STATS = 32
_STAT_RE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
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


@dataclass(frozen=True, eq=False)
class ResultMessage:
    """Inference result for one frame. ``density`` travels as float16."""

    camera: str
    seq: int
    capture_ns: int
    count: float
    density: np.ndarray  # (h, w) people per cell
    model_version: str
    zones: Mapping[str, float] = field(default_factory=dict)
    uncertainty: float | None = None  # std of the count across masks
    close_pairs: float | None = None
    density_peak_per_m2: float | None = None
    area_over_density_ratio: float | None = None
    calibrated: bool = False
    timings: Mapping[str, float] = field(default_factory=dict)  # seconds
    uncertainty_map: np.ndarray | None = None  # (h, w) per-cell std, float16 on the wire
    image: np.ndarray | None = None  # the frame, for the overlay
    truth: float | None = None
    source_size: tuple[int, int] | None = None  # (w, h) of the camera frame before the letterbox


# --------------------------------------------------------------------------- encoding

Buffer = bytes | memoryview


def _raw(arr: np.ndarray) -> memoryview:
    # A flat byte view of a C-contiguous array: pyzmq sends it without copying.
    return memoryview(np.ascontiguousarray(arr)).cast("B")


def _image_part(name: str, image: np.ndarray, jpeg_quality: int | None) -> tuple[dict[str, Any], Buffer]:
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"{name} must be uint8 (H, W, 3) RGB, found {img.dtype} {img.shape}")
    if not (1 <= img.shape[0] <= MAX_IMAGE_SIDE and 1 <= img.shape[1] <= MAX_IMAGE_SIDE):
        raise ValueError(f"{name} is larger than {MAX_IMAGE_SIDE} pixels a side: {img.shape}")
    desc = {"name": name, "shape": list(img.shape)}
    if jpeg_quality:
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in [1, 100], found {jpeg_quality}")
        # cv2 encodes BGR; a proper RGB JPEG can go straight to a browser (MJPEG).
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
        if not ok:
            raise ValueError("JPEG encoding failed")
        return {**desc, "encoding": "jpeg"}, buf.tobytes()
    return {**desc, "encoding": "rgb24"}, _raw(img)


def _map_part(name: str, arr: np.ndarray) -> tuple[dict[str, Any], Buffer]:
    a = np.asarray(arr)
    if a.ndim == 4 and a.shape[:2] == (1, 1):
        a = a[0, 0]
    if a.ndim != 2 or not all(1 <= s <= MAX_MAP_SIDE for s in a.shape):
        raise ValueError(f"{name} must be a 2-D map of at most {MAX_MAP_SIDE} a side, found {a.shape}")
    with np.errstate(over="ignore"):  # values beyond float16 become inf, refused just below
        half = np.ascontiguousarray(a, dtype="<f2")
    if not np.all(np.isfinite(half)):
        raise ValueError(f"{name} has non-finite values (or values beyond float16)")
    return {"name": name, "shape": list(half.shape), "encoding": "float16"}, _raw(half)


def _header_bytes(header: dict[str, Any]) -> bytes:
    data = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    if len(data) > MAX_HEADER_BYTES:
        raise ValueError(f"header is {len(data)} bytes, above {MAX_HEADER_BYTES}")
    return data


def _base_header(kind: str, camera: str, seq: int, capture_ns: int) -> dict[str, Any]:
    if not isinstance(camera, str) or not CAMERA_NAME_RE.fullmatch(camera):
        raise ValueError(f"bad camera name {camera!r}")
    if not _is_int(seq, 0, MAX_NS) or not _is_int(capture_ns, 0, MAX_NS):
        raise ValueError(f"seq and capture_ns must be integers in [0, 2^63), found {seq!r}, {capture_ns!r}")
    return {"v": SCHEMA_VERSION, "kind": kind, "camera": camera, "seq": int(seq), "capture_ns": int(capture_ns)}


def _put_source_size(header: dict[str, Any], size: tuple[int, int] | None) -> None:
    if size is None:
        return
    w, h = size
    if not (_is_int(w, 1, 65535) and _is_int(h, 1, 65535)):
        raise ValueError(f"bad source_size {size!r}")
    header["source_size"] = [int(w), int(h)]


def _get_source_size(header: Mapping[str, Any]) -> tuple[int, int] | None:
    size = header.get("source_size")
    if size is None:
        return None
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v, 1, 65535) for v in size)):
        raise WireError("bad_field", "source_size")
    return (size[0], size[1])


def encode_frame(msg: FrameMessage, jpeg_quality: int | None = None) -> list[Buffer]:
    """Header + image part; raw rgb24 unless ``jpeg_quality`` (1..100) is given."""
    header = _base_header("frame", msg.camera, msg.seq, msg.capture_ns)
    desc, buf = _image_part("image", msg.image, jpeg_quality)
    header["parts"] = [desc]
    _put_source_size(header, msg.source_size)
    if msg.truth is not None:
        header["truth"] = float(msg.truth)
    if msg.stats is not None:
        header["stats"] = {str(k): int(v) for k, v in msg.stats.items()}
    return [_header_bytes(header), buf]


def encode_result(msg: ResultMessage, jpeg_quality: int | None = None) -> list[Buffer]:
    """Header + density (float16) [+ uncertainty map] [+ image, JPEG if ``jpeg_quality``]."""
    header = _base_header("result", msg.camera, msg.seq, msg.capture_ns)
    header["count"] = float(msg.count)
    header["zones"] = {str(k): float(v) for k, v in msg.zones.items()}
    for key in ("uncertainty", "close_pairs", "density_peak_per_m2", "area_over_density_ratio"):
        value = getattr(msg, key)
        # None and NaN both mean "not available" (NaN is not valid JSON).
        header[key] = None if value is None or math.isnan(value) else float(value)
    header["calibrated"] = bool(msg.calibrated)
    header["model_version"] = msg.model_version
    header["timings"] = {str(k): float(v) for k, v in msg.timings.items()}
    if msg.truth is not None:
        header["truth"] = float(msg.truth)
    _put_source_size(header, msg.source_size)
    parts = [_map_part("density", msg.density)]
    if msg.uncertainty_map is not None:
        parts.append(_map_part("uncertainty", msg.uncertainty_map))
    if msg.image is not None:
        parts.append(_image_part("image", msg.image, jpeg_quality))
    header["parts"] = [d for d, _ in parts]
    # Validate what we send with the receiver's rules: a bad result fails here, loudly.
    _check_result_fields(header)
    return [_header_bytes(header), *(b for _, b in parts)]


# --------------------------------------------------------------------------- decoding


def _is_int(v: object, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _is_num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _reject_constant(name: str) -> float:
    raise WireError("bad_json", f"{name} is not JSON")


def _buffer(part: object) -> memoryview:
    if isinstance(part, zmq.Frame):
        return part.buffer
    try:
        return memoryview(part).cast("B")  # type: ignore[arg-type]
    except TypeError:
        raise WireError("bad_parts", f"part of type {type(part).__name__} is not a buffer") from None


_FRAME_FIELDS = {"v", "kind", "camera", "seq", "capture_ns", "parts", "source_size", "truth", "stats"}
_RESULT_FIELDS = {
    "v", "kind", "camera", "seq", "capture_ns", "parts", "count", "zones", "uncertainty", "close_pairs",
    "density_peak_per_m2", "area_over_density_ratio", "calibrated", "model_version", "timings", "truth", "source_size",
}  # fmt: skip
_REQUIRED = {"v", "kind", "camera", "seq", "capture_ns", "parts"}
_RESULT_REQUIRED = _REQUIRED | {"count", "zones", "calibrated", "model_version", "timings"}
# part name -> allowed encodings, per message kind
_PART_RULES: dict[str, dict[str, set[str]]] = {
    "frame": {"image": {"rgb24", "jpeg"}},
    "result": {"density": {"float16"}, "uncertainty": {"float16"}, "image": {"rgb24", "jpeg"}},
}
_REQUIRED_PARTS = {"frame": {"image"}, "result": {"density"}}


def _parse_header(parts: Sequence[object], kind: str) -> tuple[dict[str, Any], list[memoryview]]:
    if len(parts) < 2:
        raise WireError("bad_parts", f"{len(parts)} parts, expected a header and at least one buffer")
    head = _buffer(parts[0])
    if len(head) > MAX_HEADER_BYTES:
        raise WireError("oversized", f"header is {len(head)} bytes")
    try:
        header = json.loads(bytes(head).decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise WireError("bad_json", str(exc)[:100]) from None
    if not isinstance(header, dict):
        raise WireError("bad_json", "header is not a JSON object")
    if header.get("v") != SCHEMA_VERSION:
        raise WireError("schema", f"schema version {header.get('v')!r}, expected {SCHEMA_VERSION}")
    if header.get("kind") not in _PART_RULES:
        raise WireError("bad_kind", f"kind {header.get('kind')!r}")
    if header["kind"] != kind:
        raise WireError("bad_kind", f"a {header['kind']} where a {kind} was expected")
    allowed = _FRAME_FIELDS if kind == "frame" else _RESULT_FIELDS
    required = _REQUIRED if kind == "frame" else _RESULT_REQUIRED
    missing = required - header.keys()
    if missing:
        raise WireError("missing_field", ", ".join(sorted(missing)))
    unknown = header.keys() - allowed
    if unknown:
        raise WireError("unknown_field", ", ".join(sorted(unknown))[:100])
    camera = header["camera"]
    if not isinstance(camera, str) or not CAMERA_NAME_RE.fullmatch(camera):
        raise WireError("bad_camera", repr(camera)[:80])
    if not _is_int(header["seq"], 0, MAX_NS):
        raise WireError("bad_field", "seq")
    if not _is_int(header["capture_ns"], 0, MAX_NS):
        raise WireError("bad_field", "capture_ns")
    if "truth" in header and not (_is_num(header["truth"]) and header["truth"] >= 0):
        raise WireError("bad_field", "truth")
    return header, [_buffer(p) for p in parts[1:]]


def _decode_parts(header: dict[str, Any], buffers: list[memoryview]) -> dict[str, np.ndarray]:
    kind = header["kind"]
    descs = header["parts"]
    rules = _PART_RULES[kind]
    if not isinstance(descs, list) or not descs or len(descs) > len(rules):
        raise WireError("bad_parts", "parts must list one descriptor per buffer")
    if len(buffers) != len(descs):
        raise WireError("bad_parts", f"{len(buffers)} buffers for {len(descs)} descriptors")
    checked: list[tuple[str, tuple[int, ...], str]] = []
    for desc in descs:
        if not isinstance(desc, dict) or set(desc) != {"name", "shape", "encoding"}:
            raise WireError("bad_parts", "a part descriptor needs exactly name, shape, encoding")
        name, shape, enc = desc["name"], desc["shape"], desc["encoding"]
        if name not in rules or any(name == c[0] for c in checked):
            raise WireError("bad_parts", f"unexpected or repeated part {name!r}"[:80])
        if enc not in rules[name]:
            raise WireError("bad_dtype", f"{name} as {enc!r}"[:80])
        is_image = name == "image"
        side = MAX_IMAGE_SIDE if is_image else MAX_MAP_SIDE
        if (
            not isinstance(shape, list)
            or len(shape) != (3 if is_image else 2)
            or not all(_is_int(s, 1, side) for s in shape[:2])
            or (is_image and shape[2] != 3)
        ):
            raise WireError("bad_shape", f"{name} shape {shape!r}"[:80])
        checked.append((name, tuple(shape), enc))
    missing = _REQUIRED_PARTS[kind] - {c[0] for c in checked}
    if missing:
        raise WireError("bad_parts", f"missing part {', '.join(sorted(missing))}")
    out: dict[str, np.ndarray] = {}
    for (name, shape, enc), buf in zip(checked, buffers):
        if len(buf) > MAX_PART_BYTES:
            raise WireError("oversized", f"{name} is {len(buf)} bytes")
        out[name] = _decode_buffer(name, shape, enc, buf)
    return out


def _decode_buffer(name: str, shape: tuple[int, ...], enc: str, buf: memoryview) -> np.ndarray:
    if enc == "jpeg":
        if len(buf) > math.prod(shape) + 64 * 1024:
            raise WireError("oversized", f"{name}: JPEG larger than its raw image")
        bgr = cv2.imdecode(np.frombuffer(buf, dtype=np.uint8), cv2.IMREAD_COLOR)
        if bgr is None or bgr.shape != shape:
            got = None if bgr is None else bgr.shape
            raise WireError("bad_jpeg", f"{name} decodes to {got}, header says {shape}")
        arr = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        arr.setflags(write=False)
        return arr
    dtype = np.dtype(np.uint8) if enc == "rgb24" else np.dtype("<f2")
    expected = math.prod(shape) * dtype.itemsize
    if len(buf) < expected:
        raise WireError("truncated", f"{name}: {len(buf)} bytes, shape needs {expected}")
    if len(buf) > expected:
        raise WireError("bad_length", f"{name}: {len(buf)} bytes, shape needs {expected}")
    # Zero-copy: a read-only view over the received message.
    arr = np.frombuffer(buf, dtype=dtype).reshape(shape)
    arr.setflags(write=False)
    if enc == "float16" and not np.all(np.isfinite(arr)):
        raise WireError("bad_value", f"{name} has non-finite values")
    return arr


def _opt_num(header: Mapping[str, Any], key: str, lo: float = 0.0, hi: float = math.inf) -> float | None:
    v = header.get(key)
    if v is None:
        return None
    if not _is_num(v) or not lo <= v <= hi:
        raise WireError("bad_field", key)
    return float(v)


def _check_result_fields(h: Mapping[str, Any]) -> None:
    if not _is_num(h["count"]) or h["count"] < 0:
        raise WireError("bad_field", "count")
    zones = h["zones"]
    if not isinstance(zones, dict) or len(zones) > MAX_ZONES:
        raise WireError("bad_field", "zones")
    for k, v in zones.items():
        if not CAMERA_NAME_RE.fullmatch(k) or not _is_num(v) or v < 0:
            raise WireError("bad_field", f"zones.{k}"[:80])
    for key in ("uncertainty", "close_pairs", "density_peak_per_m2"):
        _opt_num(h, key)
    _opt_num(h, "area_over_density_ratio", 0.0, 1.0)
    if not isinstance(h["calibrated"], bool):
        raise WireError("bad_field", "calibrated")
    if not isinstance(h["model_version"], str) or not _VERSION_RE.fullmatch(h["model_version"]):
        raise WireError("bad_field", "model_version")
    timings = h["timings"]
    if not isinstance(timings, dict) or len(timings) > MAX_TIMINGS:
        raise WireError("bad_field", "timings")
    for k, v in timings.items():
        if not _TIMING_RE.fullmatch(k) or not _is_num(v) or v < 0:
            raise WireError("bad_field", f"timings.{k}"[:80])


def _image_size(header: Mapping[str, Any]) -> tuple[int, int] | None:
    """(w, h) the header announces for its image part, if it is well formed."""
    for desc in header.get("parts") or ():
        if isinstance(desc, dict) and desc.get("name") == "image":
            shape = desc.get("shape")
            if isinstance(shape, list) and len(shape) == 3 and all(_is_int(v, 1, MAX_NS) for v in shape[:2]):
                return shape[1], shape[0]
    return None


def _bounded_stats(stats: object) -> tuple[dict[str, int] | None, tuple[str, ...]]:
    """The known counters, clamped to their limits; the rest is reported, not kept."""
    if stats is None:
        return None, ()
    if not (isinstance(stats, dict) and len(stats) <= MAX_STATS and all(isinstance(k, str) and _STAT_RE.fullmatch(k) and _is_int(v, 0, MAX_NS) for k, v in stats.items())):
        raise WireError("bad_field", "stats")
    out: dict[str, int] = {}
    ignored: list[str] = []
    for key, value in stats.items():
        limit = STATS_LIMITS.get(key)
        if limit is None:
            if "unknown_stat" not in ignored:
                ignored.append("unknown_stat")
        elif value > limit:
            out[key] = limit
            if "clamped_stat" not in ignored:
                ignored.append("clamped_stat")
        else:
            out[key] = value
    return out, tuple(ignored)


def decode_frame(
    parts: Sequence[Buffer | zmq.Frame], max_size: Callable[[str], tuple[int, int] | None] | None = None
) -> FrameMessage:
    """Validate and decode a frame message; raises WireError(reason).

    ``max_size(camera)`` gives the largest image (w, h) accepted for a camera (its
    configured model box); a bigger one is ``oversized`` and rejected before its
    buffer is decoded. Stats keep only the keys of :data:`STATS_LIMITS`, clamped;
    what was discarded is listed in ``FrameMessage.ignored``.
    """
    header, buffers = _parse_header(parts, "frame")
    source_size = _get_source_size(header)
    stats, ignored = _bounded_stats(header.get("stats"))
    if max_size is not None:
        limit, size = max_size(header["camera"]), _image_size(header)
        if limit is not None and size is not None and (size[0] > limit[0] or size[1] > limit[1]):
            raise WireError("oversized", f"image {size[0]}x{size[1]} above the camera's {limit[0]}x{limit[1]}")
    arrays = _decode_parts(header, buffers)
    return FrameMessage(
        camera=header["camera"],
        seq=header["seq"],
        capture_ns=header["capture_ns"],
        image=arrays["image"],
        source_size=source_size,
        truth=_opt_num(header, "truth"),
        stats=stats,
        ignored=ignored,
    )


def decode_result(parts: Sequence[Buffer | zmq.Frame]) -> ResultMessage:
    """Validate and decode a result message; raises WireError(reason)."""
    header, buffers = _parse_header(parts, "result")
    _check_result_fields(header)
    arrays = _decode_parts(header, buffers)
    density = arrays["density"]
    unc_map = arrays.get("uncertainty")
    if unc_map is not None and unc_map.shape != density.shape:
        raise WireError("bad_shape", "uncertainty map differs from the density map")
    return ResultMessage(
        camera=header["camera"],
        seq=header["seq"],
        capture_ns=header["capture_ns"],
        count=float(header["count"]),
        density=density,
        model_version=header["model_version"],
        zones=MappingProxyType({k: float(v) for k, v in header["zones"].items()}),
        uncertainty=_opt_num(header, "uncertainty"),
        close_pairs=_opt_num(header, "close_pairs"),
        density_peak_per_m2=_opt_num(header, "density_peak_per_m2"),
        area_over_density_ratio=_opt_num(header, "area_over_density_ratio", 0.0, 1.0),
        calibrated=header["calibrated"],
        timings=MappingProxyType({k: float(v) for k, v in header["timings"].items()}),
        uncertainty_map=unc_map,
        image=arrays.get("image"),
        truth=_opt_num(header, "truth"),
        source_size=_get_source_size(header),
    )


# --------------------------------------------------------------------------- CURVE


@dataclass(frozen=True, repr=False)
class CurveKeys:
    """Z85 keys of one side; clients also hold the server's public key."""

    public: bytes
    secret: bytes
    server_public: bytes | None = None

    def __repr__(self) -> str:  # never print a secret key
        return f"CurveKeys(public={self.public!r}, secret=***, server_public={self.server_public!r})"


def _z85_key(value: str | bytes, what: str) -> bytes:
    key = value.encode() if isinstance(value, str) else value
    key = key.strip()
    if len(key) != 40:
        raise ValueError(f"{what} must be a 40-character Z85 CURVE key, found {len(key)} characters")
    try:
        z85.decode(key)
    except Exception:
        raise ValueError(f"{what} is not valid Z85") from None
    return key


def curve_keys(
    role: Literal["server", "client"],
    *,
    public_env: str,
    secret_env: str,
    server_public_env: str | None = None,
    cert_file: str | os.PathLike[str] | None = None,
    server_cert_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> CurveKeys:
    """Keys from a zmq.auth certificate file (if given) or from environment variables.

    A client needs the server's public key too: from ``server_cert_file`` (a
    public certificate) or ``server_public_env``.
    """
    env = os.environ if environ is None else environ

    def from_env(name: str) -> bytes:
        if name not in env:
            raise ValueError(f"CURVE key variable {name} is not set")
        return _z85_key(env[name], name)

    if cert_file is not None:
        public, secret = zmq.auth.load_certificate(os.fspath(cert_file))
        if not secret:
            raise ValueError(f"{cert_file} has no secret key (use the .key_secret file)")
    else:
        public, secret = from_env(public_env), from_env(secret_env)
    server_public = None
    if role == "client":
        if server_cert_file is not None:
            server_public, _ = zmq.auth.load_certificate(os.fspath(server_cert_file))
        elif server_public_env:
            server_public = from_env(server_public_env)
        else:
            raise ValueError("a CURVE client needs the server's public key")
    return CurveKeys(public=public, secret=secret, server_public=server_public)


class _CurveSettings(Protocol):
    enabled: bool
    server_public_env: str
    server_secret_env: str
    client_public_env: str
    client_secret_env: str
    server_cert: Path | None
    client_cert: Path | None


def curve_keys_from_config(
    curve: _CurveSettings, role: Literal["server", "client"], environ: Mapping[str, str] | None = None
) -> CurveKeys | None:
    """Keys for ``config.TransportConfig.curve``; None when CURVE is disabled."""
    if not curve.enabled:
        return None
    if role == "server":
        return curve_keys(
            "server", public_env=curve.server_public_env, secret_env=curve.server_secret_env,
            cert_file=curve.server_cert, environ=environ,
        )  # fmt: skip
    return curve_keys(
        "client", public_env=curve.client_public_env, secret_env=curve.client_secret_env,
        server_public_env=curve.server_public_env, cert_file=curve.client_cert,
        server_cert_file=curve.server_cert, environ=environ,
    )  # fmt: skip


def start_authenticator(ctx: zmq.Context, allowed_clients_dir: str | os.PathLike[str] | None) -> Any:
    """ZAP handler for CURVE servers: only clients whose public certificates are in
    ``allowed_clients_dir`` may connect (None: any client holding the server key).
    Returns the running ThreadAuthenticator; call ``.stop()`` on shutdown."""
    from zmq.auth.thread import ThreadAuthenticator

    auth = ThreadAuthenticator(ctx)
    auth.start()
    if allowed_clients_dir is None:
        auth.configure_curve(domain="*", location=zmq.auth.CURVE_ALLOW_ANY)
    else:
        auth.configure_curve(domain="*", location=os.fspath(allowed_clients_dir))
    return auth


# --------------------------------------------------------------------------- sockets

SocketKind = Literal["push", "pull", "pub", "sub"]
_KINDS = {"push": zmq.PUSH, "pull": zmq.PULL, "pub": zmq.PUB, "sub": zmq.SUB}


def open_socket(
    ctx: zmq.Context,
    kind: SocketKind,
    endpoint: str,
    *,
    bind: bool,
    hwm: int = 4,
    curve: CurveKeys | None = None,
    max_part_bytes: int = MAX_PART_BYTES,
) -> zmq.Socket:
    """A socket with bounded queues, no linger, and CURVE when keys are given.

    The binding side is the CURVE server. ipc:// socket directories are created
    with mode 0700 (the socket file is the access control within a host).
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
        if endpoint.startswith("ipc://") and bind:
            Path(endpoint[6:]).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        (sock.bind if bind else sock.connect)(endpoint)
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
    drop calls ``on_drop(reason, camera_or_None)``. Memory: at most one pending
    message per known camera plus the socket's high-water mark.
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
    ) -> None:
        self.sock = sock
        self.decode = decode
        self.cameras = frozenset(cameras) if cameras is not None else None
        self.max_age_ns = None if max_age_s is None else int(max_age_s * 1e9)
        self.on_drop = on_drop or (lambda reason, camera: None)
        self.max_pending = max_pending
        self.clock = clock
        self.pending: dict[str, M] = {}
        self.poller = zmq.Poller()
        self.poller.register(sock, zmq.POLLIN)

    def __len__(self) -> int:
        return len(self.pending)

    def _camera_of(self, parts: list[zmq.Frame]) -> str | None:
        # Best effort, for labelling the drop of a malformed message.
        try:
            cam = json.loads(bytes(parts[0].buffer[:MAX_HEADER_BYTES])).get("camera")
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
