"""Writing synthetic datasets to disk, in ShanghaiTech and JSON point formats.

Layout of an output directory::

    images/IMG_<i>.jpg                 i = 1..n
    ground-truth/GT_IMG_<i>.mat        ShanghaiTech: image_info{1x1} -> struct(location (N,2), number, head_size (N,))
    labels/IMG_<i>.json                {"image", "width", "height", "points", "head_sizes", "style", "camera"}
    meta.json                          generation parameters and per-image style, scene kind, emptiness and count

Image i is rendered from a seed derived from (seed, i) alone, and its style,
scene kind and emptiness are drawn from (seed, i) too, so a dataset is
identical whatever the number of workers. A request the renderer cannot
satisfy (a count no view of the size holds, more images than the disk has
room for) is refused before anything is written.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import scipy.io

from .kinds import KINDS, LIMIT_RULES, max_people
from .render import RENDERER_VERSION, Render, render_sample
from .styles import STYLES

FORMATS = ("shanghaitech", "json")
_OUTPUTS = ("images", "ground-truth", "labels", "meta.json")
EMPTY_SHARE = 0.1  # default share of images without people: backgrounds the model must learn to count as 0
MAX_IMAGES = 1_000_000  # one command's bound; larger sets are several commands with other seeds


def image_seed(seed: int, i: int) -> int:
    """The render seed of image i (1-based) of a dataset generated with `seed`."""
    return int(np.random.SeedSequence([int(seed), int(i)]).generate_state(1, np.uint64)[0])


def _draw(seed: int, i: int, salt: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(i), salt]).generate_state(1, np.uint32)[0])


def image_style(seed: int, i: int, styles: Sequence[str]) -> str:
    """The style of image i: drawn from `styles` by (seed, i), so it too is independent of workers."""
    return styles[_draw(seed, i, 1) % len(styles)]


def image_kind(seed: int, i: int, kinds: Sequence[str]) -> str:
    """The scene kind of image i, drawn from `kinds` by (seed, i)."""
    return kinds[_draw(seed, i, 2) % len(kinds)]


def image_empty(seed: int, i: int, share: float) -> bool:
    """Whether image i is rendered without people: true for a `share` of the images, drawn by (seed, i)."""
    return _draw(seed, i, 3) < share * 2.0**32


# -- label files ------------------------------------------------------------------------


def write_shanghaitech_mat(path: Path, points: np.ndarray, head_sizes: np.ndarray) -> None:
    """ShanghaiTech nesting: loadmat(f)["image_info"][0, 0][0, 0]["location"] is (N, 2) float."""
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    sizes = np.asarray(head_sizes, np.float64).reshape(-1)
    if len(sizes) != len(pts):
        raise ValueError(f"{len(pts)} points but {len(sizes)} head sizes")
    struct = np.empty((1, 1), dtype=[("location", "O"), ("number", "O"), ("head_size", "O")])
    struct[0, 0]["location"] = pts
    struct[0, 0]["number"] = np.array([[len(pts)]], dtype=np.int32)
    struct[0, 0]["head_size"] = sizes.reshape(-1, 1) if len(sizes) else np.zeros((0, 1))
    cell = np.empty((1, 1), dtype=object)
    cell[0, 0] = struct
    scipy.io.savemat(str(path), {"image_info": cell}, do_compression=True)


def read_shanghaitech_mat(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(points (N, 2) float64, head sizes (N,) or None for files without them)."""
    info = scipy.io.loadmat(str(path))["image_info"][0, 0][0, 0]
    pts = np.asarray(info["location"], np.float64).reshape(-1, 2)
    names = info.dtype.names or ()
    sizes = np.asarray(info["head_size"], np.float64).reshape(-1) if "head_size" in names else None
    return pts, sizes


def label_dict(name: str, r: Render) -> dict:
    h, w = r.image.shape[:2]
    return {
        "image": name,
        "width": int(w),
        "height": int(h),
        "points": [[round(float(x), 3), round(float(y), 3)] for x, y in r.points],
        "head_sizes": [round(float(s), 3) for s in r.head_sizes],
        "style": r.style,
        "camera": r.camera.to_dict() if r.camera is not None else None,
    }


# -- dataset --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    out: str
    i: int
    seed: int
    width: int
    height: int
    style: str
    count_range: tuple[int, int]
    formats: tuple[str, ...]
    jpeg_quality: int
    kind: str = "street"
    empty: bool = False


def _write_one(job: _Job) -> tuple[int, str, int]:
    r = render_sample(job.seed, job.width, job.height, job.style, job.count_range, job.kind, job.empty)
    out = Path(job.out)
    name = f"IMG_{job.i}.jpg"
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(r.image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, job.jpeg_quality])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for {name}")
    (out / "images" / name).write_bytes(buf.tobytes())
    if "shanghaitech" in job.formats:
        write_shanghaitech_mat(out / "ground-truth" / f"GT_IMG_{job.i}.mat", r.points, r.head_sizes)
    if "json" in job.formats:
        (out / "labels" / f"IMG_{job.i}.json").write_text(json.dumps(label_dict(name, r)))
    return job.i, job.style, r.count


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core; OpenCV threads would fight over the same cores


def _check(n: int, width: int, height: int, styles: Sequence[str], count_range: tuple[int, int],
           formats: Iterable[str], workers: int, kinds: Sequence[str] = ("street",),
           empty: float = EMPTY_SHARE) -> tuple[list[str], tuple[str, ...], list[str]]:
    if n < 0 or n > MAX_IMAGES:
        raise ValueError(f"n must be between 0 and {MAX_IMAGES:,}, found {n}")
    if width < 32 or height < 32 or width > 8192 or height > 8192:
        raise ValueError(f"image size must be between 32 and 8192 pixels a side, found {width}x{height}")
    styles = list(styles)
    if not styles:
        raise ValueError("at least one style is needed")
    unknown = [s for s in styles if s not in STYLES]
    if unknown:
        raise ValueError(f"unknown style(s) {', '.join(unknown)}; known: {', '.join(STYLES)}")
    kinds = list(kinds)
    bad_kinds = [k for k in kinds if k not in KINDS]
    if not kinds or bad_kinds:
        raise ValueError(f"scene kind(s) must be among {', '.join(KINDS)}, found {', '.join(kinds) or 'none'}")
    if not 0.0 <= empty <= 1.0:
        raise ValueError(f"empty share must be between 0 and 1, found {empty}")
    lo, hi = count_range
    if lo < 0 or hi < lo:
        raise ValueError(f"count range must satisfy 0 <= lo <= hi, found {lo}:{hi}")
    check_count(kinds, styles, width, height, hi)
    fmts = tuple(dict.fromkeys(formats))
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise ValueError(f"format(s) must be among {', '.join(FORMATS)}, found {', '.join(fmts) or 'none'}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, found {workers}")
    return styles, fmts, kinds


def check_count(kinds: Sequence[str], styles: Sequence[str], width: int, height: int, hi: int) -> None:
    """Refuse a count that some requested kind of scene cannot show at this size (kinds.max_people)."""
    if hi <= 0:
        return
    outdoor = {STYLES[s].outdoor for s in styles}
    for kind in dict.fromkeys(kinds):
        most = min(max_people(kind, width, height, o) for o in outdoor)
        if hi > most:
            raise ValueError(f"count up to {hi} is more people than a {width}x{height} {kind} view holds "
                             f"(at most {most}: {LIMIT_RULES[kind]}); lower the count or raise the image size")


def estimate_bytes(n: int, width: int, height: int, hi: int, formats: Sequence[str]) -> int:
    """A generous size of a dataset on disk: JPEG at quality 95 of noisy renders (under 0.6 bytes a
    pixel) and about 30 bytes a head per label format."""
    return int(n * (0.6 * width * height + 30 * hi * len(formats) + 2048))


def _check_disk(out: Path, need: int) -> None:
    probe = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    free = shutil.disk_usage(probe).free
    if need > free:
        raise ValueError(f"the dataset needs about {need / 1e9:.1f} GB and {probe} has {free / 1e9:.1f} GB free; "
                         "lower n or the image size, or write elsewhere")


def write_dataset(out_dir: str | Path, n: int, seed: int, width: int, height: int, styles: Sequence[str],
                  count_range: tuple[int, int], formats: Sequence[str] = ("shanghaitech", "json"), workers: int = 1,
                  progress: bool = True, overwrite: bool = False, jpeg_quality: int = 95,
                  kinds: Sequence[str] = ("street",), empty: float = EMPTY_SHARE) -> dict:
    """Render n labelled images into out_dir; returns the meta dict also written to meta.json.

    Each image shows a scene kind drawn from `kinds`; a share `empty` of them shows nobody."""
    styles, fmts, kinds = _check(n, width, height, styles, count_range, formats, workers, kinds, empty)
    out = Path(out_dir)
    _check_disk(out, estimate_bytes(n, width, height, count_range[1], fmts))
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output path {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"output directory {out} is not empty; pass overwrite=True (--overwrite) to replace it")
        for name in _OUTPUTS:  # only what a previous run wrote; anything else is left alone
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    (out / "images").mkdir(parents=True, exist_ok=True)
    if "shanghaitech" in fmts:
        (out / "ground-truth").mkdir(exist_ok=True)
    if "json" in fmts:
        (out / "labels").mkdir(exist_ok=True)

    cr = (int(count_range[0]), int(count_range[1]))
    jobs = [_Job(str(out), i, image_seed(seed, i), width, height, image_style(seed, i, styles), cr, fmts, jpeg_quality,
                 image_kind(seed, i, kinds), image_empty(seed, i, empty)) for i in range(1, n + 1)]
    results: dict[int, tuple[str, int]] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc="synth", unit="img")
    try:
        if workers == 1 or n <= 1:
            for job in jobs:
                i, style, count = _write_one(job)
                results[i] = (style, count)
                if bar:
                    bar.update(1)
        else:
            # never plain fork: a forked child of a process whose OpenCV thread pool is running can deadlock
            method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
            ctx = mp.get_context(method)
            with ctx.Pool(workers, initializer=_init_worker) as pool:
                for i, style, count in pool.imap_unordered(_write_one, jobs, chunksize=1):
                    results[i] = (style, count)
                    if bar:
                        bar.update(1)
    finally:
        if bar:
            bar.close()

    counts = [results[i][1] for i in range(1, n + 1)]
    meta = {
        "generator": "crowdwatch synth",
        "renderer_version": RENDERER_VERSION,
        "seed": int(seed),
        "n": int(n),
        "width": int(width),
        "height": int(height),
        "size": f"{width}x{height}",
        "styles": styles,
        "scenes": kinds,
        "empty_share": float(empty),
        "count_range": list(cr),
        "formats": list(fmts),
        "image_seed": "numpy SeedSequence([seed, i]).generate_state(1, uint64)",
        "total_heads": int(sum(counts)),
        "empty_images": sum(j.empty for j in jobs),
        "images": [{"image": f"IMG_{j.i}.jpg", "style": results[j.i][0], "scene": j.kind, "empty": j.empty,
                    "count": results[j.i][1]} for j in jobs],
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


# -- contact sheet ----------------------------------------------------------------------


def contact_sheet(seed: int, width: int, height: int, styles: Sequence[str], count_range: tuple[int, int],
                  k: int = 16, cols: int = 4, thumb_scale: float = 0.5, points: bool = False,
                  kinds: Sequence[str] = ("street",), empty: float = EMPTY_SHARE) -> np.ndarray:
    """A grid (RGB uint8) of the first k images of the dataset (seed, ...), captioned with kind, style and count."""
    tw, th = max(1, int(round(width * thumb_scale))), max(1, int(round(height * thumb_scale)))
    rows = -(-k // cols)
    sheet = np.full((rows * th, cols * tw, 3), 255, np.uint8)
    for j in range(k):
        i = j + 1
        style = image_style(seed, i, list(styles))
        kind = image_kind(seed, i, list(kinds))
        r = render_sample(image_seed(seed, i), width, height, style, count_range, kind, image_empty(seed, i, empty))
        im = r.image.copy()
        if points:
            for (x, y), s in zip(r.points, r.head_sizes):
                cv2.circle(im, (int(round(x)), int(round(y))), max(2, int(s / 2)), (255, 40, 40), 1, cv2.LINE_AA)
        im = cv2.resize(im, (tw, th), interpolation=cv2.INTER_AREA)
        text = f"{kind} {style}  {r.count}"
        cv2.putText(im, text, (5, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(im, text, (5, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
        y, x = (j // cols) * th, (j % cols) * tw
        sheet[y:y + th, x:x + tw] = im
    return sheet
