"""A camera's configuration -> the adaptation pipeline's run config (one place).

``crowdwatch adapt`` and ``crowdwatch label`` build their
:class:`~adapt.selfsup.adaptation.AdaptConfig` here, from ``--config``: the
camera's ``[cameras.X.adapt]`` (labels, keep_count, gate) and
``[cameras.X.buffer]`` after the ``[defaults]`` merge, the registry from
``[model]`` and the buffer, scene and synthetic-source folders under
``[paths] var``. Flags override.
"""

from __future__ import annotations

from typing import Any

from adapt.selfsup.adaptation import AdaptConfig
from adapt.selfsup.gate import GateConfig
from crowdwatch.config import CameraSettings, Config

# run overrides that belong to the gate (flags of `crowdwatch adapt`)
GATE_KEYS = ("min_count_ratio", "max_count_ratio", "per_person_uncertainty")


def camera_settings(config: Config | None, camera: str) -> CameraSettings:
    """The camera's settings; [defaults] for a camera the config does not name; built-in defaults without a config."""
    if config is None:
        return CameraSettings()
    return config.cameras.get(camera, config.defaults)


def adaptation_config(config: Config | None, camera: str, **overrides: Any) -> AdaptConfig:
    """The run config of ``camera``: its configured settings, then ``overrides`` (AdaptConfig fields or GATE_KEYS).

    An override of None is ignored (an option that was not given).
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    settings = camera_settings(config, camera)
    adapt = settings.adapt
    gate = GateConfig.from_settings(adapt.gate, **{k: overrides.pop(k) for k in GATE_KEYS if k in overrides})
    fields: dict[str, Any] = {"camera": camera, "labels": adapt.labels, "keep_count": adapt.keep_count, "scene": adapt.scene, "gate": gate, "buffer": settings.buffer,
                           "time_budget_s": adapt.time_budget_s}
    if settings.calibration is not None:
        fields["calibration"] = (settings.calibration.image, settings.calibration.ground)
    if config is not None:
        var = config.paths.var
        fields |= {
            "registry_root": config.model.registry, "buffer_root": var / "buffer",
            "scene_root": var / "scene", "synthetic": var / "synth-source",
        }  # fmt: skip
    return AdaptConfig(**(fields | overrides))
