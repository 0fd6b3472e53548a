"""End to end on this machine: how many 720p synthetic cameras at 1 fps run with no drops?

    python bench/e2e_capacity.py [--max-cameras 8] [--seconds 60] [--warmup 20] [--size 1280x720] [--fps 1] [--workers 1]

For N = 1, 2, ... it starts `crowdwatch run --no-adapt` with N synthetic
cameras (split over --workers inference workers, whose /metrics are summed),
lets it warm up, then measures for --seconds: frames inferred per
camera against the frames expected (seconds x fps), drops by reason (the fps
sampler's own "sampling" skips are not drops), and the p50/p95
capture-to-metrics latency from the crowd_frame_latency_seconds histogram.
It stops at the first N that drops frames or falls behind. Synthetic cameras
render their frames, which costs CPU that a real camera spends on decoding.

    python bench/e2e_capacity.py --soak 3600 [--cameras 2] [--sample 10] [--warmup 120] [--json runs/soak.json]

--soak SECONDS runs one `crowdwatch run` with --cameras synthetic cameras for
--warmup + SECONDS and samples the resident memory (VmRSS, and its anonymous
part RssAnon, from /proc) of each stage and of the supervisor every --sample
seconds. It prints each stage's growth in MB per hour after the warm-up, against
the 5 MB/h a stage may grow, two ways: the slope of a least-squares line through
every sample, and the slope through each --window's lowest sample (the floor). A
leak raises the floor; memory allocated and given back between two samples (a
stage's transient peaks) moves only the first. Every sample goes to --json. A
stage that restarted is named; its line then mixes two processes.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STYLES = ["day", "overcast", "dusk", "indoor", "fog", "day", "overcast", "dusk"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> int:
    """A port p with p .. p + n - 1 free: the metrics ports of n workers."""
    while True:
        port = free_port()
        try:
            for i in range(1, n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port + i))
            return port
        except OSError:
            continue


def scrape(port: int, workers: int = 1):
    """Every worker's samples by family (worker i serves metrics_port + i), concatenated: totals add up."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list] = {}
    for i in range(workers):
        text = urllib.request.urlopen(f"http://127.0.0.1:{port + i}/metrics", timeout=5).read().decode()
        for f in text_string_to_metric_families(text):
            out.setdefault(f.name, []).extend(f.samples)
    return out


def total(samples, name: str, **labels) -> float:
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def latency_buckets(fams) -> dict[float, float]:
    out: dict[float, float] = {}
    for s in fams.get("crowd_frame_latency_seconds", []):
        if s.name.endswith("_bucket"):
            le = float(s.labels["le"])
            out[le] = out.get(le, 0.0) + s.value
    return out


def quantile(buckets_before: dict, buckets_after: dict, q: float) -> float:
    """Histogram quantile over the measured window (linear within a bucket, as PromQL does)."""
    edges = sorted(buckets_after)
    counts = [buckets_after[e] - buckets_before.get(e, 0.0) for e in edges]
    n = counts[-1]
    if n <= 0:
        return float("nan")
    rank, prev_edge, prev_count = q * n, 0.0, 0.0
    for edge, c in zip(edges, counts):
        if c >= rank:
            if edge == float("inf"):
                return prev_edge
            return prev_edge + (edge - prev_edge) * (rank - prev_count) / max(c - prev_count, 1e-9)
        prev_edge, prev_count = edge, c
    return edges[-2]


@contextlib.contextmanager
def running(n: int, args):
    """`crowdwatch run --no-adapt` on n synthetic cameras of --size at --fps: (process, first metrics port)."""
    w, h = (int(v) for v in args.size.split("x"))
    # the cameras render at the full size; the model box is that size rounded down to multiples of 32
    bw, bh = w // 32 * 32, h // 32 * 32
    mport = free_ports(args.workers)
    wport = free_port()
    while mport <= wport < mport + args.workers:
        wport = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cams = "\n".join(f'[cameras.cam{i}]\nurl = "synthetic://?people={40 + 10 * i}&style={STYLES[i % len(STYLES)]}&size={w}x{h}"\n' for i in range(n))
        cfg = Path(tmp) / "config.toml"
        cfg.write_text(f"""
[server]
metrics_port = {mport}
web_port = {wport}
infer_workers = {args.workers}
[paths]
var = "{tmp}/var"
run = "{tmp}/run"
[model]
registry = "{REPO / 'models'}"
providers = {json.dumps(args.providers.split(","))}
[defaults]
fps = {args.fps}
width = {bw}
height = {bh}
[defaults.adapt]
enabled = false
{cams}""")
        proc = subprocess.Popen([sys.executable, "-m", "streamer.cli", "run", "--config", str(cfg), "--no-adapt"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp, start_new_session=True,
                                env={**os.environ, "PYTHONPATH": str(REPO)})  # this checkout's code, whatever is installed
        try:
            yield proc, mport
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


def run_n(n: int, args) -> dict:
    with running(n, args) as (proc, mport):
        time.sleep(args.warmup)
        if proc.poll() is not None:
            raise SystemExit(f"crowdwatch run exited: {proc.stderr.read().decode()}")
        before = scrape(mport, args.workers)
        t0 = time.time()
        time.sleep(args.seconds)
        after = scrape(mport, args.workers)
        dt = time.time() - t0

    def frames(fams):
        return {f"cam{i}": total(fams.get("crowd_frames", []), "crowd_frames_total", camera=f"cam{i}", stage="infer") for i in range(n)}

    def drops(fams):
        out = {}
        for s in fams.get("crowd_frames_dropped", []):
            if s.name == "crowd_frames_dropped_total" and s.labels.get("reason") != "sampling":
                out[s.labels["reason"]] = out.get(s.labels["reason"], 0.0) + s.value
        return out

    f0, f1 = frames(before), frames(after)
    d0, d1 = drops(before), drops(after)
    got = {c: f1[c] - f0[c] for c in f1}
    dropped = {r: d1[r] - d0.get(r, 0.0) for r in d1 if d1[r] - d0.get(r, 0.0) > 0}
    b0, b1 = latency_buckets(before), latency_buckets(after)
    return {
        "cameras": n, "seconds": round(dt, 1), "expected_per_camera": dt * args.fps,
        "min_frames": min(got.values()), "mean_frames": sum(got.values()) / n, "drops": dropped,
        "p50": quantile(b0, b1, 0.5), "p95": quantile(b0, b1, 0.95),
    }


# --------------------------------------------------------------------------- soak: memory over time


def stages(pid: int) -> dict[str, int]:
    """`crowdwatch run` (pid) and its stages by name: run, infer, infer:1, web, ingest:CAMERA -> pid."""
    out = {"run": pid}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) != pid:
                continue
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if b"streamer.cli" in argv:
            name = argv[argv.index(b"streamer.cli") + 1].decode()
            for flag in (b"--camera", b"--shard"):
                if flag in argv:
                    name += ":" + argv[argv.index(flag) + 1].decode()
            out[name] = int(proc.name)
    return out


def memory_mb(pid: int) -> tuple[float, float] | None:
    """(VmRSS, RssAnon) of a process in MB, or None if it is gone."""
    fields = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon"):
                fields[key] = int(rest.split()[0]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return (fields["VmRSS"], fields.get("RssAnon", float("nan"))) if "VmRSS" in fields else None


def growth_mb_per_h(points: list[tuple[float, float]]) -> float:
    """Slope of the least-squares line through (seconds, MB), in MB per hour."""
    if len(points) < 2:
        return float("nan")
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    return 3600 * sum((t - mt) * (v - mv) for t, v in points) / var if var else float("nan")


def floor(points: list[tuple[float, float]], window_s: float) -> list[tuple[float, float]]:
    """The lowest sample of each window of ``window_s`` seconds, at its window's middle."""
    if not points:
        return []
    t0 = points[0][0]
    lows: dict[int, float] = {}
    for t, v in points:
        k = int((t - t0) // window_s)
        lows[k] = min(v, lows.get(k, v))
    return [(t0 + (k + 0.5) * window_s, v) for k, v in sorted(lows.items())]


def soak(args) -> None:
    """One site for --warmup + --soak seconds; every stage's memory every --sample seconds."""
    samples: list[dict] = []
    with running(args.cameras, args) as (proc, mport):
        t0 = time.monotonic()
        end = t0 + args.warmup + args.soak
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise SystemExit(f"crowdwatch run exited: {proc.stderr.read().decode()}")
            t = time.monotonic() - t0
            row: dict = {"t": round(t, 1), "pid": {}, "rss_mb": {}, "anon_mb": {}}
            for name, pid in stages(proc.pid).items():
                mem = memory_mb(pid)
                if mem is not None:
                    row["pid"][name], row["rss_mb"][name], row["anon_mb"][name] = pid, round(mem[0], 2), round(mem[1], 2)
            try:
                fams = scrape(mport, args.workers)
                row["frames"] = total(fams.get("crowd_frames", []), "crowd_frames_total", stage="infer")
            except (OSError, http.client.HTTPException):
                row["frames"] = None  # infer restarting, or too busy to answer in time
            samples.append(row)
            print(f"{t:7.0f} s  " + "  ".join(f"{k} {v:.0f}" for k, v in sorted(row["rss_mb"].items())), flush=True)
            time.sleep(max(0.0, args.sample - (time.monotonic() - t0 - t)))
    names = sorted({k for r in samples for k in r["rss_mb"]})
    measured = [r for r in samples if r["t"] >= args.warmup]
    result = {"command": " ".join(sys.argv), "cameras": args.cameras, "size": args.size, "fps": args.fps, "workers": args.workers,
              "warmup_s": args.warmup, "soak_s": args.soak, "sample_s": args.sample, "window_s": args.window, "stages": {}, "samples": samples}
    for name in names:
        pids = list(dict.fromkeys(r["pid"][name] for r in samples if name in r["pid"]))
        # a restarted stage starts its memory over: fit the process that ran last, over its measured samples
        mine = [r for r in measured if r["pid"].get(name) == pids[-1]]
        pts = [(r["t"], r["rss_mb"][name]) for r in mine]
        anon = [(r["t"], r["anon_mb"][name]) for r in mine]
        result["stages"][name] = {
            "rss_start_mb": pts[0][1] if pts else None, "rss_end_mb": pts[-1][1] if pts else None,
            "rss_growth_mb_per_h": round(growth_mb_per_h(pts), 2), "anon_growth_mb_per_h": round(growth_mb_per_h(anon), 2),
            "rss_floor_growth_mb_per_h": round(growth_mb_per_h(floor(pts, args.window)), 2),
            "anon_floor_growth_mb_per_h": round(growth_mb_per_h(floor(anon, args.window)), 2),
            "rss_min_mb": min(v for _, v in pts) if pts else None, "rss_max_mb": max(v for _, v in pts) if pts else None,
            "processes": len(pids), "fitted_s": round(pts[-1][0] - pts[0][0], 1) if pts else 0.0,
        }
    frames = [r["frames"] for r in measured if r.get("frames") is not None]
    result["frames_inferred"] = frames[-1] - frames[0] if len(frames) > 1 else None
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"\n# soak: {args.cameras} x {args.size} synthetic cameras at {args.fps} fps, {args.workers} infer workers; "
          f"{args.soak:.0f} s measured after {args.warmup:.0f} s warm-up, a sample every {args.sample:.0f} s, floor per {args.window:.0f} s; "
          f"{result['frames_inferred']} frames inferred in the measured window")
    # the verdict is on the anonymous floor: the kernel may page out a process's file-backed pages (shared
    # libraries, the model file) at any time, which moves RSS without any leak or use
    print("| stage | RSS at start / end of window | lowest / highest sample | growth: all samples | of it anonymous | growth of the floor: RSS / anonymous | anonymous floor below 5 MB/h |")
    print("|---|---|---|---|---|---|---|")
    for name, st in result["stages"].items():
        restarted = f" (restarted: {st['processes']} processes; the last fitted over {st['fitted_s']:.0f} s)" if st["processes"] > 1 else ""
        ok = "yes" if st["anon_floor_growth_mb_per_h"] < 5 else "no"
        print(f"| {name}{restarted} | {st['rss_start_mb']:.1f} / {st['rss_end_mb']:.1f} MB | {st['rss_min_mb']:.1f} / {st['rss_max_mb']:.1f} MB "
              f"| {st['rss_growth_mb_per_h']:+.2f} MB/h | {st['anon_growth_mb_per_h']:+.2f} MB/h "
              f"| {st['rss_floor_growth_mb_per_h']:+.2f} / {st['anon_floor_growth_mb_per_h']:+.2f} MB/h | {ok} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-cameras", type=int, default=8)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--warmup", type=float, default=20, help="seconds before measuring (the soak fits its line after them)")
    p.add_argument("--size", default="1280x720")
    p.add_argument("--fps", type=float, default=1.0)
    p.add_argument("--workers", type=int, default=1, help="[server] infer_workers: inference worker processes")
    p.add_argument("--providers", default="CPUExecutionProvider",
                   help="[model] providers, comma-separated ONNX Runtime provider names (a GPU node: CUDAExecutionProvider,CPUExecutionProvider)")
    p.add_argument("--soak", type=float, default=None, metavar="SECONDS",
                   help="instead of the capacity sweep: run --cameras cameras this long and sample each stage's memory")
    p.add_argument("--cameras", type=int, default=2, help="--soak: synthetic cameras")
    p.add_argument("--sample", type=float, default=10, help="--soak: seconds between memory samples")
    p.add_argument("--window", type=float, default=60, help="--soak: seconds per window of the floor (its lowest sample)")
    p.add_argument("--json", default=None, help="--soak: write every sample and the fitted growth here")
    args = p.parse_args()
    if args.soak is not None:
        soak(args)
        return
    rows = []
    for n in range(1, args.max_cameras + 1):
        r = run_n(n, args)
        rows.append(r)
        print(r, flush=True)
        keeping_up = r["min_frames"] >= 0.9 * r["expected_per_camera"]
        if r["drops"] or not keeping_up:
            break
    print(f"\n# {args.size} synthetic cameras at {args.fps} fps, {args.workers} infer workers, {args.seconds:.0f} s measured "
          f"after {args.warmup:.0f} s warm-up")
    print("| cameras | frames per camera (expected) | drops (reason: n) | p50 latency | p95 latency |")
    print("|---|---|---|---|---|")
    for r in rows:
        d = ", ".join(f"{k}: {v:.0f}" for k, v in r["drops"].items()) or "none"
        print(f"| {r['cameras']} | {r['min_frames']:.0f} to {r['mean_frames']:.0f} ({r['expected_per_camera']:.0f}) | {d} | {r['p50']:.2f} s | {r['p95']:.2f} s |")


if __name__ == "__main__":
    main()
