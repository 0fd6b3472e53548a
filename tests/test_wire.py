"""Wire format: round trips over real sockets, every malformed variant dropped with its reason."""

from __future__ import annotations

import ast
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq
import zmq.auth

import crowdwatch.wire as wire
from crowdwatch.fit import Fit
from crowdwatch.result import Figures, Result
from crowdwatch.wire import (
    REASONS,
    AdaptationRun,
    FrameMessage,
    LatestReceiver,
    WireError,
    decode_frame,
    decode_inbound,
    decode_result,
    encode_adaptation,
    encode_frame,
    encode_result,
    open_socket,
    send_once,
    send_parts,
)

RNG = np.random.default_rng(7)


def smooth_image(h: int = 96, w: int = 128) -> np.ndarray:
    # A smooth image JPEG can reproduce closely (noise would not survive compression).
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], axis=-1)
    return img.astype(np.uint8)


def frame_msg(camera: str = "plaza", seq: int = 1, capture_ns: int = 1_000, **kw: object) -> FrameMessage:
    return FrameMessage(camera=camera, seq=seq, capture_ns=capture_ns, image=smooth_image(), **kw)  # type: ignore[arg-type]


FIGURES = Figures(count=57.25, zones={"fountain": 12.5}, uncertainty=2.0, close_pairs=3.5, density_peak_per_m2=1.75,
                  area_over_density_ratio=0.125, calibrated=True)  # fmt: skip
FIT = Fit.plan(1920, 1080, 128, 96)  # 128x72 content in a 128x96 input: the density map is 12x16


def result_msg(**kw: object) -> Result:
    fields: dict[str, object] = dict(
        camera="plaza", seq=9, capture_ns=123456789, model_version="plaza-0003", figures=FIGURES, fit=FIT,
        density=RNG.random((12, 16)).astype(np.float32), timings={"infer_s": 0.05, "queue_s": 0.01}, truth=60.0,
    )  # fmt: skip
    fields.update(kw)
    return Result(**fields)  # type: ignore[arg-type]


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


@pytest.fixture
def ipc_dir() -> Iterator[Path]:
    # Short path: unix socket paths are limited to 107 bytes.
    d = Path(tempfile.mkdtemp(prefix="cw-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def pair(ctx: zmq.Context, endpoint: str, kind: tuple[str, str] = ("pull", "push"), **kw: object) -> tuple[zmq.Socket, zmq.Socket]:
    server = open_socket(ctx, kind[0], endpoint, bind=True, **kw)  # type: ignore[arg-type]
    client = open_socket(ctx, kind[1], endpoint, bind=False, **kw)  # type: ignore[arg-type]
    return server, client


def recv(sock: zmq.Socket, timeout_ms: int = 3000) -> list[zmq.Frame] | None:
    if not sock.poll(timeout_ms):
        return None
    return sock.recv_multipart(copy=False)


# --------------------------------------------------------------------------- round trips


def test_rgb24_frame_round_trip_over_ipc_zero_copy(ctx: zmq.Context, ipc_dir: Path) -> None:
    pull, push = pair(ctx, f"ipc://{ipc_dir}/run/frames.ipc")
    fit = Fit.plan(1920, 1080, 128, 96)
    msg = frame_msg(fit=fit, truth=42.0)
    parts = encode_frame(msg)
    assert isinstance(parts[1], memoryview)  # sent straight from the numpy buffer
    assert send_parts(push, parts)
    got = decode_frame(recv(pull))  # type: ignore[arg-type]
    assert (got.camera, got.seq, got.capture_ns, got.fit, got.truth) == ("plaza", 1, 1_000, fit, 42.0)
    assert got.image.dtype == np.uint8 and np.array_equal(got.image, msg.image)
    assert not got.image.flags.writeable  # a view over the received message
    assert (ipc_dir / "run").stat().st_mode & 0o777 == 0o700
    pull.close(), push.close()


def test_jpeg_frame_round_trip(ctx: zmq.Context, ipc_dir: Path) -> None:
    pull, push = pair(ctx, f"ipc://{ipc_dir}/f.ipc")
    msg = frame_msg()
    parts = encode_frame(msg, jpeg_quality=90)
    assert header_of(parts)["parts"][0]["encoding"] == "jpeg"
    assert len(parts[1]) < msg.image.nbytes
    send_parts(push, parts)
    got = decode_frame(recv(pull))  # type: ignore[arg-type]
    assert got.image.shape == msg.image.shape
    # Colours survive (RGB order kept through cv2's BGR).
    assert np.abs(got.image.astype(int) - msg.image).mean() < 2.0
    pull.close(), push.close()


def test_result_round_trip_over_pub_sub(ctx: zmq.Context, ipc_dir: Path) -> None:
    sub_sock = open_socket(ctx, "sub", f"ipc://{ipc_dir}/r.ipc", bind=False)
    pub = open_socket(ctx, "pub", f"ipc://{ipc_dir}/r.ipc", bind=True)
    msg = result_msg(uncertainty_map=np.full((12, 16), 0.25), image=smooth_image())
    parts = encode_result(msg, jpeg_quality=85)
    got = None
    for _ in range(50):  # PUB drops until the subscription has propagated
        pub.send_multipart(parts, copy=False)
        raw = recv(sub_sock, 100)
        if raw is not None:
            got = decode_result(raw)
            break
    assert got is not None
    assert (got.figures, got.model_version, got.truth, got.fit) == (FIGURES, "plaza-0003", 60.0, FIT)
    assert got.timings == {"infer_s": 0.05, "queue_s": 0.01}
    assert got.density.dtype == np.float16
    assert np.allclose(got.density, msg.density, atol=1e-3)
    assert got.uncertainty_map is not None and np.all(got.uncertainty_map == 0.25)
    assert got.image is not None and got.image.shape == (96, 128, 3)
    pub.close(), sub_sock.close()


def test_result_optional_figures_may_be_missing() -> None:
    msg = result_msg(figures=Figures(count=3.0), truth=None, timings={})
    got = decode_result(encode_result(msg))
    assert got.figures.uncertainty is None and got.figures.zones == {} and got.truth is None and got.image is None
    assert "truth" not in header_of(encode_result(msg))["body"]  # defaults are left out of the header


def test_a_header_only_decode_checks_the_parts_but_decodes_no_buffer() -> None:
    parts = encode_result(result_msg(image=smooth_image()), jpeg_quality=80)
    got = decode_result([parts[0], parts[1], b"not a jpeg"], arrays=False)
    assert got.figures == FIGURES and got.density is None and got.image is None
    with pytest.raises(WireError) as info:
        decode_result([parts[0], parts[1]], arrays=False)  # one buffer short
    assert info.value.reason == "bad_parts"


# --------------------------------------------------------------------------- malformed


def header_of(parts: list) -> dict:
    return json.loads(bytes(parts[0]))


_DELETE = object()


def edited(msg_parts: list, /, top: dict | None = None, **body: object) -> list:
    """The message with header fields changed (``top``: beside the body; else in the body; _DELETE removes)."""
    h = header_of(msg_parts)
    for target, changes in ((h, top or {}), (h["body"], body)):
        for k, v in changes.items():
            if v is _DELETE:
                del target[k]
            else:
                target[k] = v
    return [json.dumps(h).encode(), *msg_parts[1:]]


def with_header(msg_parts: list, /, **body: object) -> list:
    return edited(msg_parts, **body)


GOOD = encode_frame(frame_msg())
GOOD_RAW = bytes(GOOD[1])
SIDE = {"src_w": 256, "src_h": 192, "scale": 0.5, "content_w": 128, "content_h": 96}


def part_desc(**changes: object) -> list:
    d = {"name": "image", "shape": [96, 128, 3], "encoding": "rgb24"}
    d.update(changes)
    return [d]


def top(**changes: object) -> list:
    return edited(GOOD, top=changes)


@pytest.mark.parametrize(
    ("parts", "reason"),
    [
        ([b"{not json", GOOD_RAW], "bad_json"),
        ([b"\xff\xfe", GOOD_RAW], "bad_json"),
        ([b"[1, 2]", GOOD_RAW], "bad_json"),
        ([GOOD[0].replace(b'"seq":1', b'"seq":NaN'), GOOD_RAW], "bad_json"),
        (top(v=1), "schema"),
        (top(v=_DELETE), "schema"),
        (with_header(GOOD, kind="result"), "bad_kind"),
        (with_header(GOOD, kind="pickle"), "bad_kind"),
        (with_header(GOOD, kind=_DELETE), "bad_kind"),
        (with_header(GOOD, kind=[]), "bad_kind"),  # found by the fuzz of tests/test_reliability.py: it raised TypeError
        (with_header(GOOD, kind={}), "bad_kind"),
        (top(body=[1, 2]), "bad_kind"),
        (with_header(GOOD, seq=_DELETE), "missing_field"),
        (top(parts=_DELETE), "missing_field"),
        (with_header(GOOD, extra=1), "unknown_field"),
        (top(extra=1), "unknown_field"),
        (with_header(GOOD, seq=-1), "bad_field"),
        (with_header(GOOD, seq="1"), "bad_field"),
        (with_header(GOOD, seq=True), "bad_field"),
        (with_header(GOOD, capture_ns=1.5), "bad_field"),
        (with_header(GOOD, capture_ns=2**63), "bad_field"),
        (with_header(GOOD, fit={**SIDE, "out_w": 128, "out_h": 96, "scale": 5.0}), "bad_field"),  # maps pixels wrongly
        (with_header(GOOD, fit={**SIDE, "out_w": 256, "out_h": 192}), "bad_field"),  # not the image's size
        (with_header(GOOD, fit={**SIDE, "out_w": 128}), "missing_field"),
        (with_header(GOOD, stats={"reconnects": -1}), "bad_field"),
        (with_header(GOOD, truth=-3), "bad_field"),
        (with_header(GOOD, camera="../etc"), "bad_camera"),
        (with_header(GOOD, camera="Plaza"), "bad_camera"),
        (with_header(GOOD, camera=7), "bad_camera"),
        (with_header(GOOD, image=[1, 2]), "bad_field"),  # arrays travel as parts only
        (top(parts=part_desc(encoding="float16")), "bad_dtype"),
        (top(parts=part_desc(encoding="pyobj")), "bad_dtype"),
        (top(parts=part_desc(shape=[96, 128, 4])), "bad_shape"),
        (top(parts=part_desc(shape=[0, 128, 3])), "bad_shape"),
        (top(parts=part_desc(shape=[5000, 5000, 3])), "bad_shape"),
        (top(parts=part_desc(shape="96x128")), "bad_shape"),
        (top(parts=part_desc(name="density")), "bad_parts"),
        (top(parts=[{"name": "image", "shape": [96, 128, 3]}]), "bad_parts"),
        (top(parts=part_desc() * 2), "bad_parts"),
        ([GOOD[0], GOOD_RAW[:-1]], "truncated"),
        ([GOOD[0], b""], "truncated"),
        ([GOOD[0], GOOD_RAW + b"\0"], "bad_length"),
        ([GOOD[0], GOOD_RAW, b"extra"], "bad_parts"),
        ([GOOD[0]], "bad_parts"),
        ([b"{" + b" " * wire.MAX_HEADER_BYTES + b"}", GOOD_RAW], "oversized"),
        (edited([GOOD[0], bytes(70_000)], top={"parts": part_desc(shape=[8, 8, 3], encoding="jpeg")}), "oversized"),
        (edited([GOOD[0], b"\xff\xd8 not a jpeg"], top={"parts": part_desc(encoding="jpeg")}), "bad_jpeg"),
    ],
)
def test_malformed_frames_are_rejected_with_their_reason(parts: list, reason: str) -> None:
    with pytest.raises(WireError) as info:
        decode_frame(parts)
    assert info.value.reason == reason, str(info.value)
    assert info.value.reason in REASONS


def test_jpeg_that_decodes_to_another_shape_is_rejected() -> None:
    parts = encode_frame(frame_msg(), jpeg_quality=80)
    bad = edited(parts, top={"parts": part_desc(shape=[64, 128, 3], encoding="jpeg")})
    with pytest.raises(WireError) as info:
        decode_frame(bad)
    assert info.value.reason == "bad_jpeg"


GOOD_RESULT = encode_result(result_msg())


def figures(**changes: object) -> dict:
    return {"figures": {**header_of(GOOD_RESULT)["body"]["figures"], **changes}}


@pytest.mark.parametrize(
    ("body", "parts", "reason"),
    [
        (figures(count=-1), None, "bad_field"),
        (figures(count="57"), None, "bad_field"),
        (figures(count=None), None, "bad_field"),
        (figures(zones={"Bad Zone": 1.0}), None, "bad_field"),
        (figures(zones=[1]), None, "bad_field"),
        (figures(zones={f"z{i}": 1.0 for i in range(65)}), None, "bad_field"),
        (figures(area_over_density_ratio=1.5), None, "bad_field"),
        (figures(calibrated=1), None, "bad_field"),
        (figures(people=1), None, "unknown_field"),
        ({"figures": _DELETE}, None, "missing_field"),
        ({"model_version": "v1; rm -rf"}, None, "bad_field"),
        ({"timings": {"infer_s": -1}}, None, "bad_field"),
        ({"timings": {f"t{i}": 0 for i in range(20)}}, None, "bad_field"),
        ({"model_version": _DELETE}, None, "missing_field"),
        ({"fit": _DELETE}, None, "missing_field"),
        ({}, [{"name": "density", "shape": [12, 16], "encoding": "rgb24"}], "bad_dtype"),
        ({}, [{"name": "density", "shape": [12, 16, 1], "encoding": "float16"}], "bad_shape"),
        ({}, [{"name": "image", "shape": [12, 16, 3], "encoding": "rgb24"}], "bad_parts"),
        ({"kind": "frame"}, None, "bad_kind"),
        ({"kind": "adaptation"}, None, "bad_kind"),
    ],
)
def test_malformed_results_are_rejected(body: dict, parts: list | None, reason: str) -> None:
    with pytest.raises(WireError) as info:
        decode_result(edited(GOOD_RESULT, top=None if parts is None else {"parts": parts}, **body))
    assert info.value.reason == reason, str(info.value)


def test_non_finite_density_is_rejected() -> None:
    nan = np.full((12, 16), np.nan, dtype="<f2")
    with pytest.raises(WireError) as info:
        decode_result([GOOD_RESULT[0], nan.tobytes()])
    assert info.value.reason == "bad_value"
    with pytest.raises(ValueError, match="non-finite"):
        encode_result(result_msg(density=np.full((12, 16), 1e6)))  # beyond float16


def test_encoders_refuse_bad_messages() -> None:
    with pytest.raises(ValueError, match="camera"):
        encode_frame(frame_msg(camera="a/b"))
    with pytest.raises(ValueError, match="uint8"):
        encode_frame(FrameMessage("plaza", 1, 1, np.zeros((4, 4, 3), np.float32)))
    with pytest.raises(ValueError, match="seq"):
        encode_frame(frame_msg(seq=-1))
    with pytest.raises(ValueError, match="fit"):
        encode_frame(frame_msg(fit=Fit.plan(1920, 1080, 640, 480)))  # a fit for another image size
    with pytest.raises(ValueError, match="count"):
        encode_result(result_msg(figures=Figures(count=float("nan"))))
    with pytest.raises(ValueError, match="area_over_density_ratio"):
        encode_result(result_msg(figures=Figures(count=1.0, area_over_density_ratio=1.5)))


def test_nothing_is_pickled() -> None:
    tree = ast.parse(Path(wire.__file__).read_text())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    attrs = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    imports = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    imports |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    forbidden = {"pickle", "cPickle", "dill", "send_pyobj", "recv_pyobj", "marshal"}
    assert not forbidden & (names | attrs | imports)


# --------------------------------------------------------------------------- receiver


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def test_receiver_keeps_newest_per_camera_and_counts_drops(ctx: zmq.Context, ipc_dir: Path) -> None:
    pull, push = pair(ctx, f"ipc://{ipc_dir}/f.ipc", hwm=100)
    drops: list[tuple[str, str | None]] = []
    clock = Clock(10_000_000_000)
    rx = LatestReceiver(
        pull, decode_frame, cameras={"plaza", "hall"}, max_age_s=5.0,
        on_drop=lambda reason, cam: drops.append((reason, cam)), clock=clock,
    )  # fmt: skip
    sent = [
        frame_msg("plaza", 1, 6_000_000_000),
        frame_msg("plaza", 2, 7_000_000_000),
        frame_msg("hall", 1, 6_500_000_000),
        frame_msg("plaza", 3, 8_000_000_000),
        frame_msg("hall", 0, 6_400_000_000),  # arrives late, older than the pending one
        frame_msg("plaza", 4, 1_000_000_000),  # 9 s old
        frame_msg("lobby", 1, 9_000_000_000),  # not configured
    ]
    for m in sent:
        assert send_parts(push, encode_frame(m))
    assert send_parts(push, with_header(encode_frame(frame_msg("hall", 5, 9_000_000_000)), seq=-5))
    n = 0
    while n < len(sent) + 1:
        got = rx.drain(timeout_ms=2000)
        assert got, "messages did not arrive"
        n += got
    assert len(rx) == 2
    taken = rx.take()
    assert [(m.camera, m.seq) for m in taken] == [("hall", 1), ("plaza", 3)]  # oldest capture first
    assert sorted(drops, key=str) == sorted(
        [("overflow", "plaza"), ("overflow", "plaza"), ("overflow", "hall"), ("stale", "plaza"),
         ("unknown_camera", None), ("bad_field", "hall")], key=str,
    )  # fmt: skip
    # A frame that ages in the queue is dropped when taken.
    send_parts(push, encode_frame(frame_msg("plaza", 5, 9_000_000_000)))
    rx.drain(timeout_ms=2000)
    clock.now = 20_000_000_000
    assert rx.poll() == [] and drops[-1] == ("stale", "plaza")
    pull.close(), push.close()


def test_send_without_a_receiver_does_not_block(ctx: zmq.Context, ipc_dir: Path) -> None:
    push = open_socket(ctx, "push", f"ipc://{ipc_dir}/none.ipc", bind=True, hwm=1)
    assert send_parts(push, encode_frame(frame_msg())) is False
    push.close()


# --------------------------------------------------------------------------- CURVE
# tests/test_curve.py: the allow-list, refusals counted, keys from the environment.


def test_frame_source_stats_round_trip_and_validation():
    img = np.zeros((32, 64, 3), np.uint8)
    parts = encode_frame(FrameMessage("cam", 1, 5, img, stats={"reconnects": 2, "dropped_sampling": 7}))
    assert decode_frame([bytes(p) for p in parts]).stats == {"reconnects": 2, "dropped_sampling": 7}
    for bad in ({"reconnects": -1}, {"Bad-Key": 1}, {"x": 1.5}, [1, 2], {f"s{i}": 1 for i in range(33)}):
        with pytest.raises(WireError) as e:
            decode_frame([bytes(p) for p in with_header(parts, stats=bad)])
        assert e.value.reason == "bad_field"


def test_the_fit_travels_with_the_frame_and_its_result():
    fit = Fit.plan(1920, 1080, 64, 64)  # 64x36 content in a 64x64 input
    frame = decode_frame([bytes(p) for p in encode_frame(FrameMessage("cam", 1, 5, np.zeros((64, 64, 3), np.uint8), fit=fit))])
    assert frame.fit == fit and frame.fit.scale == pytest.approx(1 / 30)
    assert decode_frame([bytes(p) for p in encode_frame(FrameMessage("cam", 1, 5, np.zeros((64, 64, 3), np.uint8)))]).fit is None
    result = result_msg(fit=fit, density=np.zeros((8, 8), np.float32))
    assert decode_result([bytes(p) for p in encode_result(result)]).fit == fit


def test_stats_keep_a_fixed_set_of_keys_with_bounded_values():
    from streamer.ingest import counters
    from streamer.sources import SourceStats

    assert set(counters(SourceStats(), 0)) <= set(wire.STATS_LIMITS)  # everything ingest sends is known
    forged = {"reconnects": 100_000_000, "dropped_" + "x" * 40: 3, "dropped_sampling": 7, "dropped_new": 1}
    assert wire.bounded_stats(forged) == ({"reconnects": wire.STATS_LIMITS["reconnects"], "dropped_sampling": 7}, ("clamped_stat", "unknown_stat"))
    assert wire.bounded_stats({"reconnects": 2}) == ({"reconnects": 2}, ())
    assert wire.bounded_stats(None) == (None, ())


def test_adaptation_runs_travel_with_the_frames_and_are_events_for_the_receiver(ctx: zmq.Context, ipc_dir: Path) -> None:
    run = AdaptationRun("plaza", 1234.5, "rejected")
    parts = encode_adaptation(run)
    assert len(parts) == 1 and decode_inbound(parts) == run
    assert isinstance(decode_inbound(encode_frame(frame_msg())), FrameMessage)
    for bad, reason in ((edited(parts, result="maybe"), "bad_field"), (edited(parts, time=-1), "bad_field"),
                        (edited(parts, top={"parts": part_desc()}), "bad_parts")):  # fmt: skip
        with pytest.raises(WireError) as e:
            decode_inbound(bad)
        assert e.value.reason == reason
    with pytest.raises(WireError) as e:
        decode_frame(parts)  # a socket of frames alone
    assert e.value.reason == "bad_kind"

    endpoint = f"ipc://{ipc_dir}/f.ipc"
    pull = open_socket(ctx, "pull", endpoint, bind=True, hwm=100)
    events: list[AdaptationRun] = []
    drops: list[tuple[str, str | None]] = []
    rx = LatestReceiver(pull, decode_inbound, cameras={"plaza"}, on_event=events.append,
                        on_drop=lambda reason, cam: drops.append((reason, cam)), clock=Clock(2_000))  # fmt: skip
    # sent from a socket that lives for one message (crowdwatch adapt --record does so)
    assert send_once(endpoint, encode_frame(frame_msg("plaza", 1, 1_000)))
    for msg in (run, AdaptationRun("plaza", 1300.0, "succeeded"), AdaptationRun("lobby", 1.0, "failed")):
        assert send_once(endpoint, encode_adaptation(msg))
    n = 0
    while n < 4:
        got = rx.drain(timeout_ms=3000)
        assert got, "messages did not arrive"
        n += got
    assert [e.result for e in events] == ["rejected", "succeeded"]  # two runs of one camera: neither replaces the other
    assert drops == [("unknown_camera", None)]
    assert [m.seq for m in rx.take()] == [1]
    pull.close()


def test_send_once_returns_when_nobody_listens(ipc_dir: Path) -> None:
    # queued, then dropped when the linger ends: the sender never waits on a receiver
    assert send_once(f"ipc://{ipc_dir}/nobody.ipc", encode_adaptation(AdaptationRun("plaza", 1.0, "failed")), linger_s=0.2)


def test_a_frame_larger_than_its_cameras_box_is_rejected_before_decoding():
    img = np.zeros((96, 128, 3), np.uint8)
    boxes = {"cam": (128, 96), "small": (64, 64)}
    for quality in (None, 80):
        parts = [bytes(p) for p in encode_frame(FrameMessage("cam", 1, 5, img), quality)]
        assert decode_frame(parts, max_size=boxes.get).image.shape == (96, 128, 3)
        small = [bytes(p) for p in encode_frame(FrameMessage("small", 1, 5, img), quality)]
        with pytest.raises(WireError) as e:
            decode_frame(small, max_size=boxes.get)
        assert e.value.reason == "oversized"
        other = [bytes(p) for p in encode_frame(FrameMessage("other", 1, 5, img), quality)]
        assert decode_frame(other, max_size=boxes.get).camera == "other"  # unknown cameras: the receiver decides
