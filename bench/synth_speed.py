"""Synthetic renders per minute: one labelled image after another, and a whole dataset on all workers.

    python bench/synth_speed.py [--size 1024x768] [--scenes packed,tribune] [--count 300:3000] [--n 24]
                                [--styles day,overcast,dusk,indoor] [--workers 2]

0. With --stream N: `walk` + `render` of N frames on one cached scene (what a
   synthetic:// camera does), CPU seconds per frame.
1. Per render, in this process: `render_sample` (new camera, scene, crowd and
   effects every image) for images 1..n of the dataset (seed 0, ...). Its CPU
   seconds are what a free core would take: 60 / CPU seconds is renders per
   minute per core, the figure that holds on a busy machine. Wall seconds are
   printed too, with the load average, because they do not.
2. The dataset: `write_dataset` (what `crowdwatch synth` runs) of the same n
   images with --workers processes, JPEG and label files included, timed on
   the wall clock: images per minute as this machine delivered them.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="1024x768", help="WxH")
    p.add_argument("--scenes", default="packed,tribune")
    p.add_argument("--count", default="300:3000")
    p.add_argument("--styles", default="day,overcast,dusk,indoor")
    p.add_argument("--n", type=int, default=24, help="images in each part")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stream", type=int, default=0, help="also time N frames of walk + render on one cached scene")
    args = p.parse_args()
    import numpy as np

    from adapt.synth import render, sample_crowd, walk
    from adapt.synth.kinds import sample_kind_scene
    from adapt.synth.render import render_sample
    from adapt.synth.writers import check_count, image_kind, image_seed, image_style, write_dataset

    w, h = (int(v) for v in args.size.split("x"))
    lo, hi = (int(v) for v in args.count.split(":"))
    kinds, styles = args.scenes.split(","), args.styles.split(",")
    check_count(kinds, styles, w, h, hi)  # what crowdwatch synth would refuse is not measured
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")

    if args.stream:
        rng = np.random.default_rng(args.seed)
        n = (lo + hi) // 2
        scene = sample_kind_scene(rng, w, h, styles[0], kinds[0], n)
        people = sample_crowd(rng, scene, n, {"packed": "packed", "tribune": "seated"}.get(kinds[0], "mixed"))
        c0 = time.process_time()
        for _ in range(args.stream):
            people = walk(scene, people, 0.1, rng)
            r = render(scene, people, rng)
        per = (time.process_time() - c0) / args.stream
        print(f"walk + render, one {kinds[0]} {styles[0]} scene, {n} people ({r.count} labelled): CPU {per:.3f} s/frame "
              f"-> {1 / per:.1f} frames/s per free core")

    cpu, wall, heads, share = [], [], [], []
    for i in range(1, args.n + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        seed = image_seed(args.seed, i)
        r = render_sample(seed, w, h, image_style(args.seed, i, styles), (lo, hi), image_kind(args.seed, i, kinds))
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - t0)
        heads.append(r.count)
        asked = int(np.random.default_rng(seed).integers(lo, hi + 1))  # render_sample's first draw
        if asked:
            share.append(r.count / asked)
    med = statistics.median(cpu)
    print(f"render_sample {w}x{h} {args.scenes} count {lo}:{hi}: {args.n} images, {statistics.mean(heads):.0f} labelled heads "
          f"on average (max {max(heads)}); labelled / requested {min(share):.2f}-{max(share):.2f} (median {statistics.median(share):.2f})")
    print(f"  CPU s/render median {med:.2f} (mean {statistics.mean(cpu):.2f}) -> {60 / med:.1f} renders/min per free core; "
          f"wall s/render median {statistics.median(wall):.2f}")

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        meta = write_dataset(tmp, args.n, args.seed, w, h, styles, (lo, hi), workers=args.workers, progress=False, kinds=kinds)
        dt = time.perf_counter() - t0
    print(f"write_dataset --workers {args.workers}: {args.n} images ({meta['empty_images']} empty, {meta['total_heads']} heads) "
          f"in {dt:.1f} s -> {60 * args.n / dt:.1f} images/min on this machine")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
