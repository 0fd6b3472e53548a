"""Inference workers and what each stage reads of the config.

A camera belongs to worker ``shard`` when its table says so, else to the
worker its name hashes to by rendezvous hashing: stable across restarts and
machines, and going from N to N+1 workers moves only the cameras the new
worker wins (about 1/(N+1) of them).

``stage_inputs`` is the part of the config one stage reads. ``crowdwatch run``
restarts a stage on SIGHUP only when its part changed; the generated
Kubernetes manifests carry its hash, so that ``kubectl apply`` rolls only the
pods whose part changed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import Section
    from .root import Config

ENDPOINT_KEYS = {"frames", "frames_bind", "results", "results_bind"}
# [server] keys each server reads (stall_restart and start_timeout are the supervisor's own).
INFER_SERVER = {"metrics_host", "metrics_port", "liveness_timeout_s", "auth_token_env", "max_connections", "request_timeout_s"}
WEB_SERVER = {"web_host", "web_port", "auth_token_env", "max_connections", "max_streams", "request_timeout_s"}


def rendezvous(camera: str, workers: int) -> int:
    """The worker with the highest hash of (worker, camera)."""
    return max(range(workers), key=lambda w: hashlib.sha256(f"{w}/{camera}".encode()).digest())


def worker_name(shard: int) -> str:
    """The supervisor's name for a worker: ``infer`` for worker 0 (as with one worker), ``infer:N`` beyond."""
    return f"infer:{shard}" if shard else "infer"


def _dump(section: Section, **kw: Any) -> Any:
    """A section as plain JSON values (zones are read-only mappings, paths are Paths)."""
    return json.loads(json.dumps(section.model_dump(warnings=False, **kw), default=lambda v: dict(v) if isinstance(v, Mapping) else str(v)))


def stage_inputs(config: Config, stage: str) -> dict[str, Any]:
    """What ``stage`` (``infer``, ``infer:N``, ``web`` or ``ingest:CAMERA``) reads of ``config``, as JSON values.
    The log level and format are left out: every stage gets the supervisor's (its flags)."""
    kind, _, arg = stage.partition(":")
    out: dict[str, Any] = {
        "paths": _dump(config.paths),
        "log": _dump(config.log, exclude={"level", "format"}),
        "transport": _dump(config.transport, exclude=ENDPOINT_KEYS),
    }
    if kind == "ingest":
        out["camera"] = _dump(config.cameras[arg])
        out["frames"] = config.endpoint("frames", config.shard_of(arg))
    elif kind == "infer":
        shard = int(arg or 0)
        out["cameras"] = {n: _dump(config.cameras[n]) for n in config.shard_cameras(shard)}
        out["model"] = _dump(config.model)
        out["server"] = _dump(config.server, include=INFER_SERVER)
        out["binds"] = [config.endpoint("frames_bind", shard), config.endpoint("results_bind", shard)]
    elif kind == "web":
        out["cameras"] = {n: _dump(c) for n, c in config.cameras.items()}
        out["server"] = _dump(config.server, include=WEB_SERVER)
        out["results"] = config.results_endpoints()
    else:
        raise ValueError(f"no stage {stage!r}")
    return out


def inputs_hash(*inputs: dict[str, Any]) -> str:
    """A short digest of stage inputs (a pod template annotation)."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
