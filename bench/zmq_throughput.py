"""ZeroMQ ipc:// throughput of 1080p rgb24 frames in our wire format, against a plain memcpy.

    python bench/zmq_throughput.py [--frames 300] [--repeats 5] [--size 1920x1080]

Sender and receiver are separate processes (as ingest and infer are), using
crowdwatch.wire's encode/decode and zero-copy sends. The baseline copies the
same bytes once with numpy (a memcpy), the least any hand-off between
processes could cost. Runs alternate and medians are reported.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time

import numpy as np


def sender(endpoint: str, n: int, w: int, h: int, ready) -> None:
    import zmq

    from crowdwatch.wire import FrameMessage, encode_frame, open_socket

    ctx = zmq.Context()
    sock = open_socket(ctx, "push", endpoint, bind=False, hwm=8)
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    ready.wait()
    for i in range(n):
        sock.send_multipart(encode_frame(FrameMessage("bench", i, time.time_ns(), image)), copy=False)
    sock.close(linger=-1)
    ctx.term()


def zmq_run(n: int, w: int, h: int) -> float:
    """Seconds to receive and decode n frames."""
    import zmq

    from crowdwatch.wire import decode_frame, open_socket

    with tempfile.TemporaryDirectory() as tmp:
        endpoint = f"ipc://{tmp}/bench.ipc"
        ctx = zmq.Context()
        sock = open_socket(ctx, "pull", endpoint, bind=True, hwm=8)
        ready = mp.get_context("spawn").Event()
        proc = mp.get_context("spawn").Process(target=sender, args=(endpoint, n, w, h, ready))
        proc.start()
        ready.set()
        first = sock.recv_multipart(copy=False)  # connection set-up is not throughput
        decode_frame(first)
        t0 = time.perf_counter()
        for _ in range(n - 1):
            msg = decode_frame(sock.recv_multipart(copy=False))
            assert msg.image.shape == (h, w, 3)
        dt = time.perf_counter() - t0
        proc.join()
        sock.close(linger=0)
        ctx.term()
    return dt / (n - 1) * n


def memcpy_run(n: int, w: int, h: int) -> float:
    src = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    dst = np.empty_like(src)
    t0 = time.perf_counter()
    for _ in range(n):
        np.copyto(dst, src)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--size", default="1920x1080")
    args = p.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    z, m = [], []
    for _ in range(args.repeats):
        z.append(zmq_run(args.frames, w, h))
        m.append(memcpy_run(args.frames, w, h))
    mb = w * h * 3 / 1e6
    zs, ms = statistics.median(z), statistics.median(m)
    print(f"# {w}x{h} rgb24 ({mb:.1f} MB/frame), {args.frames} frames, median of {args.repeats}")
    print("| path | frames/s | GB/s | time vs memcpy |")
    print("|---|---|---|---|")
    print(f"| memcpy (np.copyto, one process) | {args.frames / ms:,.0f} | {args.frames * mb / 1e3 / ms:.2f} | 1.00x |")
    print(f"| ZeroMQ ipc:// PUSH/PULL, wire encode + decode, two processes | {args.frames / zs:,.0f} | {args.frames * mb / 1e3 / zs:.2f} | {zs / ms:.2f}x |")


if __name__ == "__main__":
    main()
