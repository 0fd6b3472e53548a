"""``crowdwatch models list|rollback``: per-camera model versions (adapt/store/registry.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adapt.store.locations import registry_root
from adapt.store.names import InvalidCameraName
from adapt.store.registry import BASE, Registry, RegistryError
from adapt.store.serving import read_serving
from crowdwatch.config import CONFIG_HELP, command_config


def list_camera(reg: Registry, var: Path, cam: str) -> None:
    """One camera's versions: ``*`` what infer reports serving, ``>`` the ``current`` pointer when it differs."""
    try:
        cur, bad = reg.current(cam), None
    except RegistryError as exc:
        cur, bad = None, str(exc)
    rec = read_serving(var, cam)
    serving = rec["version"] if rec is not None and rec.get("model") == cam else None
    if rec is None:
        note = "  (no serving record: infer has not run here; * is the current pointer)"
        serving = cur.version if cur else None
    elif rec.get("model") != cam:
        note = f"  (served by {rec.get('model')}/{rec['version']})"
    else:
        note = ""
    if rec is not None and rec.get("fallback"):
        note += f"  FALLBACK: its current cannot be used: {rec.get('error') or '?'}"
    if bad:
        note += f"  DANGLING current: {bad} (crowdwatch models rollback {cam} repairs it)"
    elif cur is None and rec is None:
        note += "  (no current version: cameras without their own model cannot be served)" if cam == BASE else "  (no own version: served by base)"
    print(f"{cam}:{note}")
    for v in reversed(reg.versions(cam)):
        card = v.card()
        verdict = card.get("validation", {}).get("verdict", "")
        mark = "*" if serving == v.version else (">" if cur and cur.version == v.version else " ")
        print(f"  {mark} {v.version}  parent={card.get('parent') or '-'}  {verdict}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="crowdwatch models", description="List or roll back per-camera model versions.")
    p.add_argument("--config", type=Path, default=None, metavar="PATH", help=CONFIG_HELP)
    p.add_argument("--root", type=Path, default=None,
                   help="registry directory (default: [model] registry of the config, else $CROWDWATCH_MODELS or models/)")
    sub = p.add_subparsers(dest="action", required=True)
    ls = sub.add_parser("list", help="versions per camera; * marks the one serving (as the inference stage reports it), > the current pointer")
    ls.add_argument("camera", nargs="?")
    ls.add_argument("--var", type=Path, default=None, help="where the inference stage writes its serving records (default: [paths] var)")
    rb = sub.add_parser("rollback", help="point a camera (or base, the model of cameras without their own) back at its parent "
                                         "or the version before (or --to VERSION)")
    rb.add_argument("camera")
    rb.add_argument("--to", default=None)
    args = p.parse_args(argv)
    config = command_config("crowdwatch models", args.config)
    reg = Registry(args.root or registry_root(config))
    try:
        if args.action == "list":
            var = args.var or (config.paths.var if config is not None else Path("var"))
            for cam in [args.camera] if args.camera else reg.cameras():
                list_camera(reg, var, cam)
        else:
            v = reg.rollback(args.camera, args.to)
            print(f"{args.camera}: current is now {v.version}" if v else
                  f"{args.camera}: no version left; current removed, served by base")
    except (RegistryError, InvalidCameraName) as exc:
        print(f"crowdwatch models: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
