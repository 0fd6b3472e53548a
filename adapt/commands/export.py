"""ONNX export per the DESIGN model contract (``crowdwatch export``).

The command; the export itself is adapt/model/export.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adapt.model.checkpoint import CheckpointError, load_checkpoint
from adapt.model.export import export_onnx
from adapt.store.locations import registry_root
from crowdwatch.config import CONFIG_HELP, command_config


def main(argv: list[str] | None = None) -> int:
    from adapt.store.registry import RegistryError, default_base_checkpoint

    p = argparse.ArgumentParser(prog="crowdwatch export", description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=None, metavar="PATH", help=CONFIG_HELP + "; its [model] registry holds the base model")
    p.add_argument("--model", type=Path, default=None, help="checkpoint (.pt); default: the base model of the registry")
    p.add_argument("--out", type=Path, default=None, help="ONNX path; default: model.onnx beside the checkpoint")
    args = p.parse_args(argv)
    config = command_config("crowdwatch export", args.config)
    try:
        ckpt_path = args.model or default_base_checkpoint(registry_root(config))
        ckpt = load_checkpoint(ckpt_path)
        model = ckpt.build()
        out = export_onnx(model, args.out or Path(ckpt_path).with_name("model.onnx"), ckpt.meta)
    except (CheckpointError, RegistryError, ValueError) as exc:
        print(f"crowdwatch export: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
