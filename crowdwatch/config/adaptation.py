"""[cameras.X.adapt]: when a camera adapts, and the settings `crowdwatch adapt` runs with.

The gate and training options (``keep_count``, ``labels``, the gate's count
ratios, ``per_person_uncertainty``) are declared here once, with their
defaults; ``crowdwatch adapt --config C --camera X`` reads them from the
camera's config (``adapt.selfsup.settings.adaptation_config``), and the
pipeline's own dataclasses take their defaults from these models.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, model_validator

from .base import Flag, Integer, Number, OptionalPath, Section
from .errors import fail
from .units import Duration

DAILY_EXPECTED = 'a local time "HH:MM" (00:00 to 23:59)'


def _daily(value: object) -> tuple[int, int] | None:
    if value is None:
        return None
    m = re.fullmatch(r"([01]\d|2[0-3]):([0-5]\d)", value) if isinstance(value, str) else None
    if not m:
        raise fail(DAILY_EXPECTED, value)
    return int(m.group(1)), int(m.group(2))


# "HH:MM" in TOML, (hour, minute) once loaded.
DailyTime = Annotated[tuple[int, int] | None, BeforeValidator(_daily, json_schema_input_type=str)]


class UncertaintyTrigger(Section):
    enabled: Flag = Field(False, description="adapt early when the count uncertainty stays above threshold")
    threshold: Number = Field(10.0, ge=0, description="std of the count (people)")
    for_s: Duration = Field(3600.0, ge=1, alias="for", description="how long the uncertainty must stay above threshold")


class GateSettings(Section):
    """The label-free gate (adapt.selfsup.gate.GateConfig takes its defaults from here)."""

    min_count_ratio: Number = Field(
        0.67, ge=0, le=1, description="lowest accepted ratio of the candidate's mean count over the parent's, on held-out frames"
    )
    max_count_ratio: Number = Field(1.5, ge=1, description="highest accepted count ratio; a bigger move needs labels")
    per_person_uncertainty: Flag = Field(
        False, description="also ask the count std per counted person to drop (stricter; refuses right corrections of an overcount)"
    )


class AdaptConfig(Section):
    """Adaptation schedule: exactly one of ``interval`` or ``daily`` (local time)."""

    enabled: Flag = Field(True, description="schedule adaptation runs for this camera")
    interval_s: Duration | None = Field(86400.0, ge=60, alias="interval", description="adapt this often (exclusive with daily)")
    daily: DailyTime = Field(None, description='adapt once a day at this local time "HH:MM" (exclusive with interval)')
    uncertainty_trigger: UncertaintyTrigger = Field(default_factory=UncertaintyTrigger, description="adapt early when the model stays unsure")
    timeout_s: Duration = Field(
        6 * 3600.0, ge=60, le=7 * 86400, alias="timeout",
        description="an adaptation job still running after this long is stopped and recorded as failed",
    )  # fmt: skip
    time_budget_s: Duration = Field(
        25 * 60.0, ge=120, le=7 * 86400, alias="time_budget",
        description="wall time one adaptation may take: on a slower machine or with larger frames its stages run fewer "
        "steps to fit (the report says how many); must be shorter than timeout",
    )  # fmt: skip
    max_age_s: Duration = Field(3 * 86400.0, ge=60, alias="max_age", description="last successful adaptation older than this -> alert")
    max_failures_per_day: Integer = Field(0, ge=0, le=1000, description="more failed runs than this within a day -> alert")
    labels: OptionalPath = Field(None, description="a few JSON-points frames of this camera (crowdwatch label): MAE on them decides the gate")
    keep_count: Flag = Field(
        True, description="without a usable scene model, hold the parent's mean count and refine where people are counted; "
        "false lets adaptation move the level too"
    )
    scene: Flag = Field(
        True, description="build the camera's scene model (empty scene, motion, people's sizes) and adapt with it: "
        "composites on its empty scene, empty static cells, moving people as labels, the empty-scene gate"
    )
    gate: GateSettings = Field(default_factory=GateSettings, description="the label-free gate")

    @model_validator(mode="after")
    def _budget_within_timeout(self) -> AdaptConfig:
        if self.time_budget_s >= self.timeout_s:
            raise fail(f"a time budget shorter than adapt.timeout ({self.timeout_s:.0f} s), which stops the job",
                       f"{self.time_budget_s:.0f} s", key="time_budget")
        return self

    @model_validator(mode="before")
    @classmethod
    def _one_schedule(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("daily") is not None:
            if "interval" in data:
                raise fail("either adapt.interval or adapt.daily, not both", data["daily"], key="daily")
            return {**data, "interval": None}
        return data

    # The gate's settings, flat, as `crowdwatch adapt` names its flags.
    @property
    def min_count_ratio(self) -> float:
        return self.gate.min_count_ratio

    @property
    def max_count_ratio(self) -> float:
        return self.gate.max_count_ratio

    @property
    def per_person_uncertainty(self) -> bool:
        return self.gate.per_person_uncertainty
