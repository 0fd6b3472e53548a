"""Label a few frames of one camera by clicking heads, for the gate's MAE check.

``crowdwatch label``; the label set and its page are adapt/selfsup/labelling.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adapt.data.datasets import DatasetError
from adapt.selfsup.adaptation import AdaptError, collect_frames
from adapt.selfsup.labelling import LabelError, LabelSet, serve, spread
from adapt.selfsup.settings import adaptation_config
from adapt.store.locations import labels_dir
from adapt.store.names import InvalidCameraName, validate_camera_name
from crowdwatch.config import CONFIG_HELP, Config, command_config
from crowdwatch.httpbase import DEFAULT_TOKEN_ENV, Access


def source_frames(args, config: Config | None) -> list[Path]:
    """The frames to pick from: --frames, else the camera's buffer (with its configured [buffer] settings)."""
    return collect_frames(adaptation_config(config, args.camera, frames=args.frames, buffer_root=args.buffer))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="crowdwatch label", description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=None, metavar="PATH", help=CONFIG_HELP)
    p.add_argument("--camera", required=True)
    p.add_argument("--frames", type=Path, help="folder of images or a video file (default: the camera's buffer)")
    p.add_argument("--buffer", type=Path, default=None, help="adapter buffer root (default: <[paths] var>/buffer of the config, else var/buffer)")
    p.add_argument("--out", type=Path, default=None,
                   help="labelling folder (default: the camera's adapt.labels, else <[paths] labels>/CAMERA, labels/CAMERA without a config)")
    p.add_argument("--n", type=int, default=8, help="frames to label, spread over the source (default: 8)")
    p.add_argument("--host", default="127.0.0.1", help="beyond localhost the page needs the token in $CROWDWATCH_TOKEN ([server] auth_token_env)")
    p.add_argument("--port", type=int, default=8090, help="0 picks a free port")
    args = p.parse_args(argv)
    config = command_config("crowdwatch label", args.config)
    try:
        camera = validate_camera_name(args.camera)
        labels = LabelSet(args.out or labels_dir(config, camera))
        added = 0
        if len(labels.frames) < args.n:  # a second run goes on with the frames it has
            new = [path for path in source_frames(args, config) if path.stem not in labels.frames]
            added = labels.add(spread(new, args.n - len(labels.frames)))
        if not labels.frames:
            raise LabelError("no frames to label")
        env = config.server.auth_token_env if config is not None else DEFAULT_TOKEN_ENV
        server = serve(labels, args.host, args.port, Access.for_bind(args.host, env))
    except (AdaptError, InvalidCameraName, LabelError, DatasetError, OSError, ValueError) as exc:
        print(f"crowdwatch label: {exc}", file=sys.stderr)
        return 1
    host, port = server.server_address[:2]
    print(f"{camera}: {len(labels.frames)} frames in {labels.root} ({added} new); label them at http://{host}:{port}/ "
          f"(Ctrl-C to stop), then: crowdwatch adapt --camera {camera} --labels {labels.root}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
