"""Decode benchmark for camera sources: PyAV against the ffmpeg CLI, keyframes-only against
full decoding, and the two ways to turn a decoded frame into the model's RGB input.

    python bench/decode.py                       # vtest.avi if present, else a generated 720p clip
    python bench/decode.py --media generated     # always the generated 720p clip
    python bench/decode.py [--media generated] [--write FILE.md]   # appends the table and this command line

Every number printed is measured in this run: decode-only on both sides (ffmpeg
``-f null -`` with only the video stream mapped; PyAV demux + decode of the video
stream, no conversion), same thread setting on both sides, runs interleaved
(ours, theirs, ours, ...) so that load on a shared machine hits both alike,
median of the repeats. Times exclude opening the file on both sides (ffmpeg's
``-benchmark`` rtime covers transcoding only).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import av
import cv2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from crowdwatch.fit import Fit  # noqa: E402
from streamer.sources.testclip import write_clip  # noqa: E402

SHARED_DATA = Path(os.environ.get("CROWDWATCH_SHARED_DATA", REPO.parent / "shared" / "data"))
VTEST = SHARED_DATA / "pets2009_s2l1" / "vtest.avi"
BOX = (640, 480)  # a typical model input box


@dataclass
class Run:
    frames: int
    seconds: float

    @property
    def fps(self) -> float:
        return self.frames / self.seconds


# ---- measurements ----------------------------------------------------------------------


def pyav_decode(path: Path, threads: int, thread_type: str = "AUTO", skip_frame: str | None = None) -> Run:
    """Decode the first video stream; threads 0 = as many as the codec likes."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        ctx.thread_count = threads
        ctx.thread_type = thread_type
        if skip_frame:
            ctx.skip_frame = skip_frame
        frames = 0
        start = time.perf_counter()
        for packet in container.demux(stream):
            frames += len(packet.decode())
        return Run(frames, time.perf_counter() - start)


def ffmpeg_decode(path: Path, threads: int) -> Run:
    """ffmpeg decode-only: video stream only, null muxer, -benchmark's real time."""
    cmd = [
        "ffmpeg", "-hide_banner", "-nostdin", "-nostats", "-benchmark", "-progress", "pipe:1",
        "-threads", str(threads), "-i", str(path), "-map", "0:v:0", "-f", "null", "-",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    frames = int(re.findall(r"^frame=(\d+)", done.stdout, re.M)[-1])
    rtime = float(re.search(r"bench: utime=\S+ stime=\S+ rtime=([\d.]+)s", done.stderr).group(1))
    return Run(frames, rtime)


def convert_frames(path: Path, n: int) -> list[av.VideoFrame]:
    with av.open(str(path)) as container:
        out = []
        for frame in container.decode(video=0):
            out.append(frame)
            if len(out) == n:
                return out
    return out


def time_conversion(frames: list[av.VideoFrame], fit: Fit, how: str) -> float:
    """Seconds per frame to get the fitted RGB content (padding excluded: the same for both)."""
    shrinking = fit.scale < 1.0
    start = time.perf_counter()
    for frame in frames:
        if how == "ndarray+cv2":
            rgb = frame.to_ndarray(format="rgb24")
            if (fit.content_w, fit.content_h) != (fit.src_w, fit.src_h):
                cv2.resize(rgb, (fit.content_w, fit.content_h),
                           interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
        else:
            frame.reformat(fit.content_w, fit.content_h, "rgb24",
                           interpolation="AREA" if shrinking else "BILINEAR").to_ndarray()
    return (time.perf_counter() - start) / len(frames)


# ---- report ----------------------------------------------------------------------------


def median_run(runs: list[Run]) -> Run:
    frames = {r.frames for r in runs}
    if len(frames) != 1:
        raise RuntimeError(f"frame counts differ between repeats: {sorted(frames)}")
    return Run(frames.pop(), statistics.median(r.seconds for r in runs))


def media_for(choice: str, workdir: Path) -> tuple[Path, str]:
    if choice == "auto":
        choice = "vtest" if VTEST.is_file() else "generated"
    if choice == "vtest":
        if not VTEST.is_file():
            raise SystemExit(f"{VTEST} not found")
        return VTEST, "PETS2009 S2L1 vtest.avi (H.264 High, 480x360, 10 fps, 795 frames, keyframe every 250)"
    if choice == "generated":
        clip = write_clip(workdir / "bench720p.mp4", width=1280, height=720, fps=25, seconds=12, gop=50, bframes=True)
        return clip.path, (
            f"generated moving pattern (H.264 x264 ultrafast, 1280x720, 25 fps, {clip.frames} frames, "
            "keyframe every 50, 2 B-frames)"
        )
    path = Path(choice)
    if not path.is_file():
        raise SystemExit(f"{path} not found")
    return path, path.name


def environment() -> str:
    cpu = platform.processor() or "unknown cpu"
    try:
        names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    libs = av.library_versions
    lavc = ".".join(map(str, libs["libavcodec"]))
    ffmpeg = "not installed"
    if shutil.which("ffmpeg"):
        first = subprocess.run(["ffmpeg", "-hide_banner", "-version"], capture_output=True, text=True).stdout
        ffmpeg = first.splitlines()[0].split(" Copyright")[0] if first else "unknown"
        m = re.search(r"libavcodec\s+(\d+)\.\s*(\d+)\.\s*(\d+)", first)
        if m:
            ffmpeg += f" (libavcodec {'.'.join(m.groups())})"
    return (
        f"{cpu}, {os.cpu_count()} cores visible, load average {os.getloadavg()[0]:.2f} at start; "
        f"Python {platform.python_version()}, PyAV {av.__version__} (bundled libavcodec {lavc}), "
        f"OpenCV {cv2.__version__} ({cv2.getNumThreads()} threads); CLI: {ffmpeg}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--media", default="auto", help="auto (default), vtest, generated, or a file path")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", type=Path, help="append the results, with this command line, to this markdown file")
    args = parser.parse_args(argv)
    command = "python " + shlex.join([os.path.relpath(__file__, Path.cwd())] + (sys.argv[1:] if argv is None else argv))

    with tempfile.TemporaryDirectory() as tmp:
        path, label = media_for(args.media, Path(tmp))
        started = time.monotonic()
        env = environment()
        have_ffmpeg = shutil.which("ffmpeg") is not None
        pyav_decode(path, 1)  # warm-up: page cache, codec init
        if have_ffmpeg:
            ffmpeg_decode(path, 1)

        rows: list[str] = []
        # 1. PyAV against ffmpeg, same threads, interleaved.
        for threads, name in ((1, "1 thread"), (0, "auto threads")):
            ours, theirs = [], []
            for _ in range(args.repeats):
                ours.append(pyav_decode(path, threads))
                if have_ffmpeg:
                    theirs.append(ffmpeg_decode(path, threads))
            a = median_run(ours)
            if have_ffmpeg:
                b = median_run(theirs)
                if a.frames != b.frames:
                    raise RuntimeError(f"PyAV decoded {a.frames} frames, ffmpeg {b.frames}")
                rows.append(f"| full decode, {name} | {a.frames} | {a.fps:,.0f} | {b.fps:,.0f} | {a.fps / b.fps:.2f} |")
            else:
                rows.append(f"| full decode, {name} | {a.frames} | {a.fps:,.0f} | (ffmpeg not installed) | |")

        # 2. Keyframes only against full decoding, PyAV, 1 thread, interleaved.
        full, keys = [], []
        for _ in range(args.repeats):
            full.append(pyav_decode(path, 1))
            keys.append(pyav_decode(path, 1, skip_frame="NONKEY"))
        f, k = median_run(full), median_run(keys)
        key_rows = [
            f"| full decode | {f.frames} | {f.seconds * 1000:,.1f} | 1.00 |",
            f"| keyframes only (`skip_frame=\"NONKEY\"`) | {k.frames} | {k.seconds * 1000:,.1f} | "
            f"{f.seconds / k.seconds:,.1f}x faster |",
        ]

        # 3. Frame -> fitted RGB: what Source does against libswscale doing the resize.
        sample = convert_frames(path, 100)
        fit = Fit.plan(sample[0].width, sample[0].height, *BOX)
        conv: dict[str, list[float]] = {"ndarray+cv2": [], "reformat": []}
        for _ in range(args.repeats):
            for how in conv:
                conv[how].append(time_conversion(sample, fit, how))
        c1, c2 = statistics.median(conv["ndarray+cv2"]), statistics.median(conv["reformat"])
        interp = "INTER_AREA / AREA" if fit.scale < 1 else "INTER_LINEAR / BILINEAR"
        conv_rows = [
            f"| `to_ndarray(\"rgb24\")` + `cv2.resize` (Source) | {c1 * 1000:.2f} | 1.00 |",
            f"| `reformat(w, h, \"rgb24\")` + `to_ndarray()` | {c2 * 1000:.2f} | {c2 / c1:.2f} |",
        ]
        elapsed = time.monotonic() - started

    text = "\n".join([
        "## Camera decode (`bench/decode.py`)",
        "",
        f"Command: `{command}`  ",
        f"Media: {label}  ",
        f"Machine: {env}  ",
        f"Median of {args.repeats} interleaved repeats; whole benchmark {elapsed:.0f} s.",
        "",
        "### PyAV against the ffmpeg CLI (decode only, same thread setting)",
        "",
        "| case | frames | PyAV frames/s | ffmpeg frames/s | ours / ffmpeg |",
        "|---|---:|---:|---:|---:|",
        *rows,
        "",
        "PyAV's wheel bundles its own FFmpeg build, the CLI is the distribution's: the two",
        "sides do not run the same libavcodec version (see Machine). Auto threads: PyAV",
        "`thread_type=\"AUTO\"`, `thread_count=0`; ffmpeg `-threads 0`.",
        "",
        "### Keyframes only against full decoding (PyAV, 1 thread, whole file)",
        "",
        "| mode | frames out | ms | speed-up |",
        "|---|---:|---:|---:|",
        *key_rows,
        "",
        f"### Decoded frame to fitted RGB ({fit.src_w}x{fit.src_h} -> {fit.content_w}x{fit.content_h}, "
        f"box {BOX[0]}x{BOX[1]}, {interp}, 100 frames)",
        "",
        "| method | ms per frame | relative |",
        "|---|---:|---:|",
        *conv_rows,
        "",
    ])
    print(text)
    if args.write:
        with args.write.open("a") as out:
            out.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
