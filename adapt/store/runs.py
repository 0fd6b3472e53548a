"""The per-camera log of adaptation runs: ``<var>/adapt/<camera>/runs.jsonl``.

One JSON object per line (``time``, ``result``, ``reason``, ``detail``). A run
is recorded by whoever saw it end: ``crowdwatch adapt --record`` (what the
scheduler and the CronJob run), or the scheduler for a run it skipped or that
died before it could record. :func:`record_run` also announces it to the
camera's inference worker (an ``AdaptationRun`` on its frames socket), which exports
``crowd_adaptation_runs_total`` and the last success time; infer reads this file
once when it starts, for the runs it was not running to hear.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from adapt.store.names import validate_camera_name

if TYPE_CHECKING:
    from crowdwatch.config import Config

log = logging.getLogger(__name__)


def run_log_path(var: Path, camera: str) -> Path:
    return Path(var) / "adapt" / validate_camera_name(camera) / "runs.jsonl"


def append_run(var: Path, camera: str, record: dict) -> None:
    path = run_log_path(var, camera)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def record_run(var: Path, camera: str, result: str, *, reason: str, detail: str, at: float | None = None,
               config: Config | None = None) -> None:  # fmt: skip
    """Append a finished run, and announce it to the camera's inference worker when ``config`` names the camera.

    Raises OSError if the record cannot be written; an announcement that fails
    is logged, never raised: the record is what counts, and the worker reads it
    when it next starts.
    """
    record = {"time": time.time() if at is None else at, "result": result, "reason": reason, "detail": detail[:500]}
    append_run(var, camera, record)
    if config is None or camera not in config.cameras:  # nobody serves it
        return
    from crowdwatch.wire import AdaptationRun, client_curve, encode_adaptation, send_once

    try:
        endpoint = config.endpoint("frames", config.shard_of(camera))
        send_once(endpoint, encode_adaptation(AdaptationRun(camera, record["time"], result)), client_curve(config.transport), log=log)  # type: ignore[arg-type]
    except Exception as exc:  # noqa: BLE001 - no key, a bad endpoint, a zmq error: the job's outcome stands
        log.warning("%s: the %s run is recorded but could not be announced to infer: %s", camera, result, exc)


def read_runs(var: Path, camera: str) -> list[dict]:
    """All recorded runs; a torn last line (crash mid-write) is ignored."""
    path = run_log_path(var, camera)
    out = []
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("time"), (int, float)) and isinstance(rec.get("result"), str):
            out.append(rec)
    return out
