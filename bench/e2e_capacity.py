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
"""

from __future__ import annotations

import argparse
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


def run_n(n: int, args) -> dict:
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
providers = ["CPUExecutionProvider"]
[defaults]
fps = {args.fps}
width = {bw}
height = {bh}
[defaults.adapt]
enabled = false
{cams}""")
        proc = subprocess.Popen([sys.executable, "-m", "streamer.cli", "run", "--config", str(cfg), "--no-adapt"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp, start_new_session=True)
        try:
            time.sleep(args.warmup)
            if proc.poll() is not None:
                raise SystemExit(f"crowdwatch run exited: {proc.stderr.read().decode()}")
            before = scrape(mport, args.workers)
            t0 = time.time()
            time.sleep(args.seconds)
            after = scrape(mport, args.workers)
            dt = time.time() - t0
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-cameras", type=int, default=8)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--warmup", type=float, default=20)
    p.add_argument("--size", default="1280x720")
    p.add_argument("--fps", type=float, default=1.0)
    p.add_argument("--workers", type=int, default=1, help="[server] infer_workers: inference worker processes")
    args = p.parse_args()
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
