"""``crowdwatch synth``: render a labelled synthetic crowd dataset (and/or a contact sheet)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adapt.synth.styles import STYLES
from crowdwatch.config import CONFIG_HELP, command_config

PROG = "crowdwatch synth"


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one clear line instead of usage + message
        raise _UsageError(message)


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 640x480, found {text!r}") from None
    if not (32 <= w <= 8192 and 32 <= h <= 8192):
        raise argparse.ArgumentTypeError(f"size must be between 32 and 8192 pixels a side, found {text!r}")
    return w, h


def _count(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"count must look like 0:300, found {text!r}") from None
    if lo < 0 or hi < lo:
        raise argparse.ArgumentTypeError(f"count must satisfy 0 <= lo <= hi, found {text!r}")
    return lo, hi


def _names(text: str, known, label: str) -> list[str]:
    """A comma list whose every name is one of `known`."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names or any(s not in known for s in names):
        raise argparse.ArgumentTypeError(f"{label} must be among {', '.join(known)}, found {text!r}")
    return names


def _styles(text: str) -> list[str]:
    return _names(text, STYLES, "style(s)")


def _kinds(text: str) -> list[str]:
    from adapt.synth.kinds import KINDS

    return _names(text, KINDS, "scene kind(s)")


def _formats(text: str) -> list[str]:
    from adapt.synth.writers import FORMATS

    return _names(text, FORMATS, "format")


def _number(text: str, cast, lo: float, hi: float, expected: str):
    try:
        v = cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, found {text!r}") from None
    if not lo <= v <= hi:
        raise argparse.ArgumentTypeError(f"expected {expected}, found {text!r}")
    return v


def _share(text: str) -> float:
    return _number(text, float, 0.0, 1.0, "a share between 0 and 1")


def _positive(text: str) -> int:
    return _number(text, int, 1, float("inf"), "a positive integer")


def _non_negative(text: str) -> int:
    return _number(text, int, 0, float("inf"), "an integer >= 0")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Render labelled synthetic crowd images (ShanghaiTech .mat and JSON points).")
    p.add_argument("--config", type=Path, default=None, metavar="PATH", help=CONFIG_HELP + "; checked, nothing in it changes a render")
    p.add_argument("--out", type=Path, help="output directory (must be empty unless --overwrite)")
    p.add_argument("--n", type=_non_negative, default=100, help="number of images (default 100)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed; image i uses a seed derived from (seed, i)")
    p.add_argument("--size", type=_size, default=(640, 480), help="WIDTHxHEIGHT (default 640x480)")
    p.add_argument("--styles", type=_styles, default=["day"], help=f"comma list from: {', '.join(STYLES)} (default day)")
    p.add_argument("--count", type=_count, default=(0, 300), help="people per image, LO:HI (default 0:300)")
    p.add_argument("--scenes", type=_kinds, default=["street"], dest="kinds",
                   help="comma list of scene kinds from: street, packed, tribune (default street)")
    p.add_argument("--empty", type=_share, default=None, metavar="SHARE",
                   help="share of images without people, hard negatives (default 0.1)")
    p.add_argument("--format", type=_formats, default=["shanghaitech", "json"], dest="formats",
                   help="comma list from: shanghaitech, json (default both)")
    p.add_argument("--workers", type=_positive, default=1, help="processes (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace a previous dataset in --out")
    p.add_argument("--contact-sheet", type=Path, metavar="PNG", help="also write a grid of the first images to PNG")
    p.add_argument("--sheet-images", type=_positive, default=16, help="images on the contact sheet (default 16)")
    p.add_argument("--sheet-scale", type=float, default=0.5, help="thumbnail size relative to --size (default 0.5)")
    p.add_argument("--sheet-points", action="store_true", help="circle the labelled heads on the contact sheet")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except _UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    command_config(PROG, args.config)
    if args.out is None and args.contact_sheet is None:
        print(f"{PROG}: error: nothing to do: give --out DIR and/or --contact-sheet PNG", file=sys.stderr)
        return 2
    if not 0.05 <= args.sheet_scale <= 1.0:
        print(f"{PROG}: error: --sheet-scale must be between 0.05 and 1, found {args.sheet_scale}", file=sys.stderr)
        return 2
    if args.contact_sheet is not None and args.contact_sheet.suffix.lower() != ".png":
        print(f"{PROG}: error: --contact-sheet must name a .png file, found {str(args.contact_sheet)!r}", file=sys.stderr)
        return 2

    from adapt.synth.writers import EMPTY_SHARE, check_count, contact_sheet, write_dataset

    w, h = args.size
    empty = EMPTY_SHARE if args.empty is None else args.empty
    try:
        check_count(args.kinds, args.styles, w, h, args.count[1])
        if args.out is not None:
            meta = write_dataset(args.out, args.n, args.seed, w, h, args.styles, args.count, args.formats,
                                 workers=args.workers, progress=not args.quiet, overwrite=args.overwrite,
                                 kinds=args.kinds, empty=empty)
            if not args.quiet:
                print(f"wrote {meta['n']} images ({meta['total_heads']} heads, {meta['empty_images']} empty) to {args.out}")
        if args.contact_sheet is not None:
            import cv2

            sheet = contact_sheet(args.seed, w, h, args.styles, args.count, k=args.sheet_images,
                                  thumb_scale=args.sheet_scale, points=args.sheet_points, kinds=args.kinds, empty=empty)
            args.contact_sheet.parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(args.contact_sheet), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_PNG_COMPRESSION, 9]):
                raise OSError(f"could not write {args.contact_sheet}")
            if not args.quiet:
                print(f"wrote contact sheet {args.contact_sheet}")
    except (ValueError, FileExistsError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
