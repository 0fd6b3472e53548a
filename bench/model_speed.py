"""Density network throughput: torch eager vs ONNX Runtime, and the cost of the ensemble.

    python bench/model_speed.py [--size 768x1024] [--batches 1,4] [--repeats 5] [--providers cpu]

All variants run interleaved in one process (round-robin, median of repeats),
so the ratios hold on a shared, noisy machine even when absolute numbers drift.
- single pass: encoder + decoder once per frame (one mask), the cost of a plain network;
- ensemble (ours): encoder once, decoder for all M masks in one batched pass;
- naive ensemble: M full forward passes.
It also prints the ensemble's floating-point operations per frame, the
device-independent half of the GPU capacity model in docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode


def timeit(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="768x1024", help="HxW")
    p.add_argument("--batches", default="1,4")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--providers", default="cpu", help="ORT providers, e.g. tensorrt,cuda,cpu")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--threads", type=int, default=0, help="torch/ORT intra-op threads (0 = library default)")
    args = p.parse_args()
    import onnxruntime as ort

    from adapt.model.export import export_onnx
    from adapt.model.network import CrowdCounter, ModelConfig
    from streamer.backends import resolve_providers

    h, w = (int(v) for v in args.size.split("x"))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = CrowdCounter(ModelConfig(), pretrained=False).eval()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(model, Path(tmp) / "m.onnx")
        so = ort.SessionOptions()
        if args.threads:
            so.intra_op_num_threads = args.threads
        providers = resolve_providers(args.providers.split(","), ort.get_available_providers())
        session = ort.InferenceSession(str(onnx_path), so, providers=providers)
        model.to(device)
        rows = []
        for n in (int(b) for b in args.batches.split(",")):
            x_np = np.random.default_rng(0).integers(0, 256, (n, h, w, 3), dtype=np.uint8)
            x = torch.from_numpy(x_np).to(device)
            mask0 = model.masksembles.masks[0].view(1, -1, 1, 1)

            def sync():
                if device.type == "cuda":
                    torch.cuda.synchronize()

            variants = {
                # every frame through one mask: the cost of one plain network pass
                "torch single pass": lambda x=x, mask0=mask0: (model.head(model.trunk(x)[0] * mask0), sync()),
                "torch ensemble (ours)": lambda x=x: (model(x), sync()),
                "torch naive ensemble": lambda x=x: (model.naive_ensemble(x), sync()),
                "onnxruntime ensemble": lambda x_np=x_np: session.run(None, {"image": x_np}),
            }
            with torch.inference_mode():
                for fn in variants.values():
                    fn()  # warm-up
                times = {k: [] for k in variants}
                for _ in range(args.repeats):
                    for k, fn in variants.items():
                        times[k] += timeit(fn, 1)
            med = {k: statistics.median(v) for k, v in times.items()}
            for k, v in med.items():
                rows.append((n, k, n / v, v / med["torch single pass"]))
        with torch.inference_mode(), FlopCounterMode(display=False) as flops:
            model(torch.zeros((1, h, w, 3), dtype=torch.uint8, device=device))
        print(f"# {flops.get_total_flops() / 1e9:.1f} GFLOP per frame (ensemble, counted by torch.utils.flop_counter: "
              "convolutions and matrix products, one multiply-add = 2)")
        print(f"# {h}x{w}, M={model.config.masks} masks, torch {torch.__version__} on {device}, onnxruntime {ort.__version__} on {session.get_providers()[0]}, {platform.processor() or platform.machine()}")
        print("| batch | variant | frames/s | time vs single pass |")
        print("|---|---|---|---|")
        for n, k, fps, ratio in rows:
            print(f"| {n} | {k} | {fps:.2f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
