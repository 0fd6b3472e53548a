"""``crowdwatch calibrate``: fit one camera's count scale on its labelled frames (adapt/selfsup/calibration.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from adapt.selfsup.calibration import calibrate_camera
from adapt.store.locations import labels_dir, registry_root
from crowdwatch.config import CONFIG_HELP, command_config


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="crowdwatch calibrate", description="Fit one camera's count scale on a few labelled frames (crowdwatch label).")
    p.add_argument("--config", type=Path, default=None, metavar="PATH", help=CONFIG_HELP)
    p.add_argument("--camera", required=True)
    p.add_argument("--labels", type=Path, default=None,
                   help="JSON-points frames of this camera (default: where crowdwatch label writes: the camera's adapt.labels, "
                        "else <[paths] labels>/CAMERA, labels/CAMERA without a config)")
    p.add_argument("--base", type=Path, default=None, help="model to calibrate (default: the camera's current model, else base)")
    p.add_argument("--models", type=Path, default=None, help="registry directory (default: [model] registry of the config, else models/)")
    p.add_argument("--max-side", type=int, default=1024)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path, default=None, help="write the report (factor, per-frame counts, verdict) here")
    p.add_argument("--no-publish", action="store_true", help="fit and judge only")
    return p


def main(argv: list[str] | None = None) -> int:
    from adapt.data.datasets import DatasetError
    from adapt.model.checkpoint import CheckpointError
    from adapt.store.names import InvalidCameraName, validate_camera_name
    from adapt.store.registry import RegistryError

    args = build_parser().parse_args(argv)
    config = command_config("crowdwatch calibrate", args.config)
    try:
        camera = validate_camera_name(args.camera)  # before it becomes a path
        labels = args.labels or labels_dir(config, camera)
        models = args.models or registry_root(config)
        report = calibrate_camera(camera, labels, models, args.base, args.max_side, args.device, publish=not args.no_publish)
    except (CheckpointError, DatasetError, RegistryError, InvalidCameraName, ValueError) as exc:
        print(f"crowdwatch calibrate: {exc}; nothing was published", file=sys.stderr)
        return 1
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    c, v = report["calibration"], report["validation"]
    print(f"{report['camera']}: {c['frames']} labelled frames, {c['true_total']:.0f} people, predicted {c['predicted_total']:.1f}; "
          f"factor {c['scale']:.3f}; MAE {c['mae_before']:.2f} -> {c['mae_leave_one_out']:.2f} (leave-one-out)")
    print(f"{report['camera']}: {v['verdict']}" + (f" ({'; '.join(v['reasons'])})" if v["reasons"] else "")
          + (f"; published {report['published']}" if report["published"] else "; nothing published"))
    return 0 if v["verdict"] == "accept" else 3


if __name__ == "__main__":
    sys.exit(main())
