from __future__ import annotations

import errno
import logging
import os
import threading
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

import adapt.store.buffer as buffer_mod
from adapt.data.images import load_image
from adapt.store.buffer import SKIP_REASONS, FrameBuffer, capture_seconds, frame_name, thumb_distance, thumbnail
from adapt.store.names import InvalidCameraName
from crowdwatch.config import BufferSettings

S = 1_000_000_000
T0 = 1_700_000_000 * S  # a plausible epoch time in ns
H, W = 96, 160


class Clock:
    """Injectable wall clock (seconds), starting at T0."""

    def __init__(self) -> None:
        self.t = T0 / S

    def __call__(self) -> float:
        return self.t


def scene(seed: int, people: int = 6, noise: float = 0.0, noise_seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    """A textured background with ``people`` bright blobs placed by ``seed``; optional sensor noise."""
    yy, xx = np.mgrid[0:h, 0:w]
    bg = (80 + 40 * np.sin(xx / 9.0) * np.cos(yy / 13.0)).astype(np.float32)
    img = np.stack([bg, bg * 0.9, bg * 1.1], axis=-1)
    rng = np.random.default_rng(seed)
    for _ in range(people):
        x, y = rng.integers(0, w - 12), rng.integers(0, h - 30)
        img[y : y + 30, x : x + 12] = rng.integers(150, 255, size=3)
    if noise:
        img = img + np.random.default_rng(10_000 + noise_seed).normal(0, noise, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def cfg(**kw) -> BufferSettings:
    base = dict(min_interval_s=0.0, min_free_bytes=0)
    base.update(kw)
    # the byte limit is tested on frames of a few kB, under the 1 MiB floor of [buffer] max_bytes
    small = {"max_bytes": base.pop("max_bytes")} if base.get("max_bytes", 1024**2) < 1024**2 else {}
    return BufferSettings(**base).model_copy(update=small)


def make_buffer(tmp_path: Path, camera: str = "cam1", clock: Clock | None = None, **kw) -> FrameBuffer:
    return FrameBuffer(tmp_path / "buffer", camera, cfg(**kw), clock=clock or Clock())


# ------------------------------------------------------------------ sampling


def test_interval_keeps_one_frame_per_interval_of_capture_time(tmp_path):
    buf = make_buffer(tmp_path, min_interval_s=30.0)
    results = [buf.offer(scene(i), T0 + i * S) for i in range(121)]  # 2 minutes at 1 fps
    assert [i for i, r in enumerate(results) if r is None] == [0, 30, 60, 90, 120]
    st = buf.stats()
    assert (st.frames, st.accepted, st.skipped["interval"]) == (5, 5, 116)
    assert [int(p.stem) for p in buf.frames()] == [T0 + k * 30 * S for k in range(5)]


def test_camera_clock_jumping_back_restarts_the_timeline(tmp_path):
    buf = make_buffer(tmp_path, min_interval_s=30.0)
    assert buf.offer(scene(1), T0 + 3600 * S) is None
    assert buf.offer(scene(2), T0 + 3590 * S) == "interval"  # small jitter backwards: still inside the interval
    assert buf.offer(scene(3), T0) is None                     # clock reset by an hour: accepted


def test_static_scene_is_deduplicated_but_a_changed_scene_is_accepted(tmp_path):
    buf = make_buffer(tmp_path, min_interval_s=30.0)
    # an empty 640x360 scene with fresh sensor noise (sigma 10) in every frame
    empty = [scene(0, people=0, noise=10.0, noise_seed=i, h=360, w=640) for i in range(8)]
    assert buf.offer(empty[0], T0) is None
    # an hour of the same empty scene: every frame passes the interval and is a duplicate
    assert [buf.offer(empty[i % 8], T0 + (30 + 30 * i) * S) for i in range(120)] == ["duplicate"] * 120
    # people walk in: accepted at once, since a duplicate does not use up the interval
    assert buf.offer(scene(0, people=8, noise=10.0, noise_seed=99, h=360, w=640), T0 + 3631 * S) is None
    st = buf.stats()
    assert (st.frames, st.skipped["duplicate"]) == (2, 120)


def test_dedup_threshold_separates_noise_from_motion():
    hw = dict(h=360, w=640)
    # two frames of a still 640x360 scene with independent sensor noise (sigma 15), and a JPEG round trip
    a, b = (thumbnail(scene(5, people=10, noise=15.0, noise_seed=k, **hw)) for k in (1, 2))
    still = scene(5, people=10, **hw)
    jpeg = cv2.imdecode(cv2.imencode(".jpg", still, [cv2.IMWRITE_JPEG_QUALITY, 90])[1], cv2.IMREAD_COLOR)
    noise = [thumb_distance(a, b), thumb_distance(thumbnail(jpeg), thumbnail(still))]
    # the same ten people somewhere else
    moved = thumb_distance(thumbnail(scene(6, people=10, **hw)), thumbnail(still))
    threshold = BufferSettings().dedup_threshold
    assert max(noise) < threshold < moved


def test_dedup_threshold_zero_disables_dedup(tmp_path):
    buf = make_buffer(tmp_path, dedup_threshold=0.0)
    img = scene(1)
    assert [buf.offer(img, T0 + i * S) for i in range(3)] == [None, None, None]


# -------------------------------------------------------------------- limits


def test_count_limit_evicts_oldest_first(tmp_path):
    buf = make_buffer(tmp_path, max_frames=3)
    for i in range(6):
        assert buf.offer(scene(i), T0 + i * S) is None
    assert [int(p.stem) for p in buf.frames()] == [T0 + i * S for i in (3, 4, 5)]
    st = buf.stats()
    assert st.frames == 3 and st.accepted == 6
    assert st.bytes == sum(p.stat().st_size for p in buf.frames())


def test_byte_limit_evicts_oldest_first(tmp_path):
    probe = make_buffer(tmp_path, camera="probe")
    probe.offer(scene(0), T0)
    size = probe.stats().bytes
    buf = make_buffer(tmp_path, max_bytes=int(2.6 * size))
    for i in range(5):
        assert buf.offer(scene(i), T0 + i * S) is None
    kept = [int(p.stem) for p in buf.frames()]
    assert kept == [T0 + i * S for i in (3, 4)]
    assert buf.stats().bytes <= int(2.6 * size)


def test_frame_names_sort_lexically_in_time_order(tmp_path):
    buf = make_buffer(tmp_path, retention_days=100_000.0)  # keep 1970 frames
    times = [5 * S, 100 * S, T0]  # different digit counts
    for i, t in enumerate(reversed(times)):
        buf.offer(scene(i), t)
    names = sorted(os.listdir(buf.dir))
    assert names == [frame_name(t) for t in times]
    assert [int(n[:-4]) for n in names] == times
    assert buf.frames() == [buf.dir / n for n in names]
    assert capture_seconds(buf.frames()).tolist() == [t / S for t in times]  # the scene model's timeline
    assert capture_seconds([*buf.frames(), buf.dir / "IMG_1.jpg"]) is None  # a folder of photos has none


def test_restart_resumes_counts_and_the_interval(tmp_path):
    clock = Clock()
    buf = make_buffer(tmp_path, clock=clock, min_interval_s=30.0)
    buf.offer(scene(1), T0)
    buf.offer(scene(2), T0 + 30 * S)
    again = make_buffer(tmp_path, clock=clock, min_interval_s=30.0)
    assert (again.stats().frames, again.stats().bytes) == (2, buf.stats().bytes)
    assert again.offer(scene(3), T0 + 40 * S) == "interval"
    assert again.offer(scene(2), T0 + 70 * S) == "duplicate"  # same picture as the newest stored frame
    assert again.offer(scene(4), T0 + 70 * S) is None


# ----------------------------------------------------------------- retention


def test_retention_deletes_old_frames_on_offer_and_prune(tmp_path):
    clock = Clock()
    buf = make_buffer(tmp_path, clock=clock, retention_days=1.0)
    for i in range(3):
        buf.offer(scene(i), T0 - (20 - i) * 3600 * S)  # 20, 19, 18 hours ago
    clock.t += 5.5 * 3600  # now the first two are older than a day
    assert buf.offer(scene(9), T0 + 4 * 3600 * S) is None
    assert [int(p.stem) for p in buf.frames()] == [T0 - 18 * 3600 * S, T0 + 4 * 3600 * S]
    clock.t += 2 * 86400
    assert buf.prune() == 2
    assert buf.frames() == [] and buf.stats().frames == 0


def test_frame_already_past_retention_is_not_stored(tmp_path):
    buf = make_buffer(tmp_path, retention_days=7.0)
    assert buf.offer(scene(1), T0 - 8 * 86400 * S) == "expired"
    assert buf.frames() == []


def test_clear_removes_all_frames_of_the_camera_only(tmp_path):
    a, b = make_buffer(tmp_path, camera="a"), make_buffer(tmp_path, camera="b")
    for i in range(3):
        a.offer(scene(i), T0 + i * S)
        b.offer(scene(i), T0 + i * S)
    a.clear()
    assert a.frames() == [] and a.stats().frames == 0 and a.stats().bytes == 0
    assert len(b.frames()) == 3
    assert a.offer(scene(0), T0 + 10 * S) is None  # dedup state was reset too


# -------------------------------------------------------------------- safety


def test_write_is_atomic_and_never_visible_partially(tmp_path, monkeypatch):
    buf = make_buffer(tmp_path)
    seen_during_write: list[list[Path]] = []
    real_fsync = os.fsync

    def spying_fsync(fd):
        seen_during_write.append(buf.frames())
        return real_fsync(fd)

    monkeypatch.setattr(buffer_mod.os, "fsync", spying_fsync)
    assert buf.offer(scene(1), T0) is None
    assert seen_during_write and seen_during_write[0] == []  # data synced before the name exists
    monkeypatch.setattr(buffer_mod.os, "fsync", real_fsync)

    # a crash between write and rename leaves neither a frame nor a temp file
    def failing_replace(src, dst):
        raise OSError(errno.EIO, "simulated I/O error")

    monkeypatch.setattr(buffer_mod.os, "replace", failing_replace)
    assert buf.offer(scene(2), T0 + S) == "write_error"
    assert sorted(os.listdir(buf.dir)) == [frame_name(T0)]
    assert buf.stats().skipped["write_error"] == 1


def test_leftover_temp_files_are_removed_at_start(tmp_path):
    camdir = tmp_path / "buffer" / "cam1"
    camdir.mkdir(parents=True)
    old = camdir / f".{frame_name(T0)}.4242.1.1.tmp"
    old.write_bytes(b"\xff\xd8 half a jpeg")
    os.utime(old, (T0 / S - 3600, T0 / S - 3600))
    young = camdir / f".{frame_name(T0 + S)}.4243.1.1.tmp"  # another live writer, mid-write
    young.write_bytes(b"\xff\xd8")
    os.utime(young, (T0 / S - 1, T0 / S - 1))
    buf = make_buffer(tmp_path)
    assert not old.exists() and young.exists()
    assert buf.frames() == [] and buf.stats().frames == 0


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EDQUOT])
def test_disk_full_on_write_is_counted_logged_once_and_recovers(tmp_path, monkeypatch, caplog, err):
    buf = make_buffer(tmp_path, min_interval_s=30.0)
    real_write = buf._write_atomic

    def full(name, data):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(buf, "_write_atomic", full)
    with caplog.at_level(logging.WARNING, logger="adapt.store.buffer"):
        results = [buf.offer(scene(i), T0 + i * S) for i in range(5)]
    assert results == ["disk_full"] * 5  # a failed frame does not use up the interval
    assert buf.stats().disk_full and buf.stats().skipped["disk_full"] == 5
    assert sum("disk full" in r.getMessage() for r in caplog.records) == 1
    assert list(buf.dir.glob("*")) == []

    monkeypatch.setattr(buf, "_write_atomic", real_write)
    assert buf.offer(scene(9), T0 + 5 * S) is None
    st = buf.stats()
    assert not st.disk_full and st.frames == 1 and st.accepted == 1


def test_disk_full_mid_write_leaves_no_temp_file(tmp_path, monkeypatch):
    buf = make_buffer(tmp_path)

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(buffer_mod.os, "write", full)
    assert buf.offer(scene(1), T0) == "disk_full"
    assert list(buf.dir.iterdir()) == []


def test_free_space_reserve_stops_and_resumes_buffering(tmp_path, monkeypatch):
    free = {"bytes": 100 * 1024**2}
    real_usage = buffer_mod.shutil.disk_usage

    def usage(path):
        total, used, _ = real_usage(path)
        return type(real_usage(path))(total, used, free["bytes"])

    monkeypatch.setattr(buffer_mod.shutil, "disk_usage", usage)
    buf = make_buffer(tmp_path, min_free_bytes=512 * 1024**2)
    assert buf.offer(scene(1), T0) == "disk_full"
    assert buf.offer(scene(2), T0 + S) == "disk_full"
    free["bytes"] = 10 * 1024**3
    assert buf.offer(scene(3), T0 + 2 * S) is None
    assert buf.stats().skipped["disk_full"] == 2 and buf.stats().frames == 1


def test_huge_reserve_means_nothing_is_written(tmp_path):
    buf = make_buffer(tmp_path, min_free_bytes=1 << 62)
    assert buf.offer(scene(1), T0) == "disk_full"
    assert buf.frames() == []


def test_other_write_errors_are_counted_not_raised(tmp_path, monkeypatch):
    buf = make_buffer(tmp_path)

    def denied(name, data):
        raise PermissionError(errno.EACCES, "read-only volume")

    monkeypatch.setattr(buf, "_write_atomic", denied)
    assert buf.offer(scene(1), T0) == "write_error"
    assert buf.stats().skipped["write_error"] == 1 and not buf.stats().disk_full


@pytest.mark.parametrize("name", ["../x", "A", "", "a/b", "cam.1", None])
def test_invalid_camera_names_are_rejected_before_any_path_is_made(tmp_path, name):
    root = tmp_path / "buffer"
    with pytest.raises(InvalidCameraName):
        FrameBuffer(root, name, cfg())
    assert not root.exists() and list(tmp_path.iterdir()) == []


def test_bad_frames_are_counted(tmp_path):
    buf = make_buffer(tmp_path)
    good = scene(1)
    bad = [
        good.astype(np.float32),
        good[..., 0],
        np.dstack([good, good[..., :1]]),
        np.zeros((0, 10, 3), np.uint8),
        None,
        [[1, 2, 3]],
    ]
    assert [buf.offer(b, T0) for b in bad] == ["bad_frame"] * len(bad)
    assert buf.offer(good, -5) == "bad_frame"
    assert buf.offer(good, 1.5) == "bad_frame"
    st = buf.stats()
    assert st.skipped["bad_frame"] == len(bad) + 2 and st.frames == 0
    assert set(st.skipped) == set(SKIP_REASONS)


def test_stored_frame_round_trips_as_rgb(tmp_path):
    buf = make_buffer(tmp_path, jpeg_quality=95)
    img = scene(3)
    img[:20, :20] = (255, 0, 0)  # pure red: catches a BGR/RGB swap
    buf.offer(img, T0)
    back = load_image(buf.frames()[0])
    assert back.dtype == np.uint8 and back.shape == img.shape
    assert back[10, 10, 0] > 200 and back[10, 10, 2] < 60
    assert np.abs(back.astype(int) - img).mean() < 3


def test_read_frame_names_the_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="broken.jpg"):
        load_image(bad)
    with pytest.raises(ValueError, match="missing.jpg"):
        load_image(tmp_path / "missing.jpg")


def test_concurrent_reader_never_sees_a_partial_frame(tmp_path):
    buf = make_buffer(tmp_path, max_frames=4)
    reader = FrameBuffer(tmp_path / "buffer", "cam1", cfg(max_frames=4))  # e.g. the adaptation job
    stop = threading.Event()
    problems: list[str] = []
    reads = [0]

    def read_loop():
        while not stop.is_set():
            for p in reader.frames():
                try:
                    img = load_image(p)
                    assert img.shape == (H, W, 3)
                    reads[0] += 1
                except ValueError as e:
                    if p.exists():  # vanished by eviction is fine; present but unreadable is not
                        problems.append(str(e))
            reader.stats()

    t = threading.Thread(target=read_loop)
    t.start()
    try:
        for i in range(60):
            assert buf.offer(scene(i), T0 + i * S) is None
    finally:
        stop.set()
        t.join()
    assert problems == [] and reads[0] > 0
    assert len(buf.frames()) == 4 and buf.stats().frames == 4


def test_config_is_validated():
    with pytest.raises(ValueError, match="max_frames"):
        BufferSettings(max_frames=0)
    with pytest.raises(ValueError, match="jpeg_quality"):
        BufferSettings(jpeg_quality=101)
    with pytest.raises(ValueError, match="retention_days"):
        BufferSettings(retention_days=0)


# ------------------------------------------------------------------- imports


def _code(i: int, img: np.ndarray) -> None:
    """Write frame index ``i`` as 8 black/white blocks in the top row, to read back after compression."""
    for b in range(8):
        img[0:16, b * 16 : (b + 1) * 16] = 255 if (i >> b) & 1 else 0


def _decode(img: np.ndarray) -> int:
    return sum(1 << b for b in range(8) if img[4:12, b * 16 + 4 : b * 16 + 12].mean() > 128)


def make_video(path: Path, seconds: int = 20, fps: int = 5, moving: bool = True, gop: int = 5, fmt: str | None = None) -> Path:
    out = av.open(str(path), "w", format=fmt)
    stream = out.add_stream("mpeg4", rate=fps)
    stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
    stream.bit_rate = 2_000_000  # the default rate pumps compression noise above the dedup threshold
    stream.codec_context.gop_size = gop  # short GOPs let the importer seek
    for i in range(seconds * fps):
        img = scene(i if moving else 0, people=6, noise=0.0)
        _code(i if moving else 0, img)
        for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    out.close()
    return path


def test_fill_from_video_spreads_frames_over_the_pts_timeline(tmp_path):
    video = make_video(tmp_path / "clip.mp4")  # 20 s, 100 frames
    clock = Clock()
    buf = make_buffer(tmp_path, clock=clock, min_interval_s=30.0)
    st = buf.fill_from_video(video, every_s=2.0)
    assert st.accepted == 10 and st.frames == 10
    assert [_decode(load_image(p)) for p in buf.frames()] == list(range(0, 100, 10))
    times = [int(p.stem) for p in buf.frames()]
    assert all(b - a == 2 * S for a, b in zip(times, times[1:]))  # the video's clock, not wall time
    assert T0 - 21 * S <= times[0] and times[-1] <= T0  # the video's end is dated at the import


@pytest.mark.parametrize("gop", [5, 150])  # seeking pays off / keyframes too sparse to seek
def test_fill_from_video_seeking_picks_the_same_frames_as_decoding_everything(tmp_path, gop):
    video = make_video(tmp_path / "long.mp4", seconds=40, gop=gop)
    buf = make_buffer(tmp_path)
    assert buf.fill_from_video(video, every_s=10.0).accepted == 4
    assert [_decode(load_image(p)) for p in buf.frames()] == [0, 50, 100, 150]


def test_fill_from_video_with_a_target_count_covers_the_whole_video(tmp_path):
    video = make_video(tmp_path / "clip.mkv")
    buf = make_buffer(tmp_path)
    st = buf.fill_from_video(video, max_frames=5)
    idx = [_decode(load_image(p)) for p in buf.frames()]
    assert st.accepted == 5 and len(idx) == 5
    assert idx[0] == 0 and idx[-1] >= 75  # not the first five frames
    assert all(b - a >= 15 for a, b in zip(idx, idx[1:]))


def test_fill_from_raw_stream_without_timestamps_still_spreads(tmp_path):
    video = make_video(tmp_path / "raw.m4v", fmt="m4v")  # elementary stream: no duration, no pts
    buf = make_buffer(tmp_path)
    assert buf.fill_from_video(video, max_frames=5).accepted == 5
    assert [_decode(load_image(p)) for p in buf.frames()] == [0, 20, 40, 60, 80]


def test_fill_from_video_default_interval_uses_the_config(tmp_path):
    video = make_video(tmp_path / "clip.mp4")
    buf = make_buffer(tmp_path, min_interval_s=8.0)
    assert buf.fill_from_video(video).accepted == 3  # at 0, 8 and 16 s


def test_fill_from_static_video_is_deduplicated(tmp_path):
    video = make_video(tmp_path / "static.mp4", moving=False)
    buf = make_buffer(tmp_path)
    st = buf.fill_from_video(video, every_s=1.0)
    assert st.accepted == 1 and st.skipped["duplicate"] == 19


def test_fill_from_video_rejects_a_file_that_is_not_a_video(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 1000)
    buf = make_buffer(tmp_path)
    with pytest.raises(ValueError, match="junk.mp4"):
        buf.fill_from_video(junk)
    assert buf.frames() == []


def test_fill_from_folder_keeps_order_dedups_and_counts_corrupt_files(tmp_path):
    src = tmp_path / "frames"
    src.mkdir()
    for i in (1, 2, 10):  # natural order: 1, 2, 10
        img = scene(i)
        _code(i, img)
        cv2.imwrite(str(src / f"img{i}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    dup = scene(10)
    _code(10, dup)
    cv2.imwrite(str(src / "img11.jpg"), cv2.cvtColor(dup, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    (src / "img3.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (src / "notes.txt").write_text("not an image")
    buf = make_buffer(tmp_path, min_interval_s=30.0)  # not applied to folders
    st = buf.fill_from_folder(src)
    assert (st.accepted, st.skipped["bad_frame"], st.skipped["duplicate"], st.skipped["interval"]) == (3, 1, 1, 0)
    assert [_decode(load_image(p)) for p in buf.frames()] == [1, 2, 10]
    assert buf.stats().accepted == 3  # the buffer's own counters include imports


def test_two_imports_at_the_same_instant_do_not_overwrite_each_other(tmp_path):
    src = tmp_path / "frames"
    src.mkdir()
    for i in range(3):
        cv2.imwrite(str(src / f"{i}.png"), scene(i))
    buf = make_buffer(tmp_path)  # the clock does not move between imports
    buf.fill_from_folder(src)
    buf.fill_from_folder(src)
    assert len(buf.frames()) == 6 and len(set(buf.frames())) == 6


def test_pets_clip_sampling(tmp_path, shared_data):
    clip = shared_data / "pets2009_s2l1" / "vtest.avi"
    if not clip.is_file():
        pytest.skip(f"{clip} not present")
    buf = make_buffer(tmp_path)
    sparse = buf.fill_from_video(clip, every_s=30.0)  # an 80 s clip: frames at 0, 30 and 60 s
    assert sparse.accepted == 3
    buf.clear()
    dense = buf.fill_from_video(clip, every_s=1.0)
    # 80 one-second candidates; people keep walking, so dedup drops only a few
    assert dense.accepted + dense.skipped["duplicate"] == 80
    assert 70 <= dense.accepted < 80
    times = [int(p.stem) for p in buf.frames()]
    assert times == sorted(times) and (times[-1] - times[0]) > 75 * S
