"""The per-camera log of adaptation runs: ``<var>/adapt/<camera>/runs.jsonl``.

One JSON object per line (``time``, ``result``, ``reason``, ``detail``). The
scheduler and ``crowdwatch adapt --record`` append to it; the inference stage
reads it to export ``crowd_adaptation_runs_total`` and the last success time.
"""

from __future__ import annotations

import json
from pathlib import Path

from adapt.store.names import validate_camera_name

RESULTS = ("succeeded", "failed", "rejected", "skipped")


def run_log_path(var: Path, camera: str) -> Path:
    return Path(var) / "adapt" / validate_camera_name(camera) / "runs.jsonl"


def append_run(var: Path, camera: str, record: dict) -> None:
    path = run_log_path(var, camera)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


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
