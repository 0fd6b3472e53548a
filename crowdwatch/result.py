"""The result of one frame: what infer makes, the wire carries, and web, the exporter and the scheduler read.

One type from end to end. Its fields are declared once, here, with their bounds;
``crowdwatch.wire`` encodes the header from them (JSON, through msgspec) and the
arrays as raw zero-copy parts after it, and checks what it receives against the
same declarations.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec
import numpy as np

from crowdwatch.config.names import CAMERA_NAME_RE, ZONE_NAME_RE
from crowdwatch.fit import Fit

MAX_NS = 2**63 - 1
MAX_ZONES = 64
MAX_TIMINGS = 16

CameraName = Annotated[str, msgspec.Meta(pattern=CAMERA_NAME_RE.pattern)]
ZoneName = Annotated[str, msgspec.Meta(pattern=ZONE_NAME_RE.pattern)]
Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_NS)]  # sequence numbers and nanoseconds
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Ratio = Annotated[float, msgspec.Meta(ge=0, le=1)]
Version = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._:+-]{1,128}$")]
TimingName = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,31}$")]


class Figures(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The crowd figures of one frame. Areas and densities are per m² when ``calibrated``,
    else per input pixel (docs/METRICS.md)."""

    count: NonNegative
    zones: Annotated[dict[ZoneName, NonNegative], msgspec.Meta(max_length=MAX_ZONES)] = {}
    uncertainty: NonNegative | None = None  # std of the count across the ensemble masks; None without masks
    density_peak_per_m2: NonNegative = 0.0
    close_pairs: NonNegative = 0.0
    area_over_density_ratio: Ratio = 0.0
    calibrated: bool = False


class Result(msgspec.Struct, frozen=True, kw_only=True, eq=False, forbid_unknown_fields=True, omit_defaults=True,
             tag="result", tag_field="kind"):  # fmt: skip
    """Inference result for one frame."""

    camera: CameraName
    seq: Count
    capture_ns: Count
    model_version: Version
    figures: Figures
    fit: Fit  # how the camera frame became the model input (and `image`)
    timings: Annotated[dict[TimingName, NonNegative], msgspec.Meta(max_length=MAX_TIMINGS)] = {}  # seconds
    truth: NonNegative | None = None  # the synthetic camera's true count
    # The arrays travel as raw parts after the header, never inside it: the wire sets
    # them when it decodes the parts (a header-only decode leaves them None).
    density: np.ndarray | None = None  # (h, w) people per cell at stride 8; float16 on the wire
    uncertainty_map: np.ndarray | None = None  # (h, w) per-cell std across the masks
    image: np.ndarray | None = None  # the model input, RGB uint8, for the overlay

    ARRAYS: ClassVar[tuple[str, ...]] = ("density", "uncertainty_map", "image")
