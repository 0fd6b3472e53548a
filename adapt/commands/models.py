"""``crowdwatch models list|rollback``: per-camera model versions (adapt/store/registry.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adapt.store.locations import registry_root
from adapt.store.names import InvalidCameraName
from adapt.store.registry import Registry, RegistryError
from crowdwatch.config import CONFIG_HELP, ConfigError, load_command_config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="crowdwatch models", description="List or roll back per-camera model versions.")
    p.add_argument("--config", type=Path, default=None, metavar="PATH", help=CONFIG_HELP)
    p.add_argument("--root", type=Path, default=None,
                   help="registry directory (default: [model] registry of the config, else $CROWDWATCH_MODELS or models/)")
    sub = p.add_subparsers(dest="action", required=True)
    ls = sub.add_parser("list", help="versions per camera; * marks the serving one")
    ls.add_argument("camera", nargs="?")
    rb = sub.add_parser("rollback", help="point a camera back at its parent (or --to VERSION)")
    rb.add_argument("camera")
    rb.add_argument("--to", default=None)
    args = p.parse_args(argv)
    try:
        config = load_command_config(args.config)
    except (ConfigError, OSError) as exc:
        print(f"crowdwatch models: {exc}", file=sys.stderr)
        return 2
    reg = Registry(args.root or registry_root(config))
    try:
        if args.action == "list":
            for cam in [args.camera] if args.camera else reg.cameras():
                cur = reg.current(cam)
                print(f"{cam}:" + ("" if cur else "  (no own version: served by base)"))
                for v in reversed(reg.versions(cam)):
                    card = v.card()
                    verdict = card.get("validation", {}).get("verdict", "")
                    mark = "*" if cur and cur.version == v.version else " "
                    print(f"  {mark} {v.version}  parent={card.get('parent') or '-'}  {verdict}")
        else:
            v = reg.rollback(args.camera, args.to)
            print(f"{args.camera}: current is now {v.version}")
    except (RegistryError, InvalidCameraName) as exc:
        print(f"crowdwatch models: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
