"""[cameras.X.buffer]: the frames kept for adaptation; ``adapt.store.buffer.FrameBuffer`` takes this model itself.

docs/BUFFER.md says why the defaults are what they are.
"""

from __future__ import annotations

from pydantic import Field

from .base import Integer, Number, Section
from .units import Duration, Size


class BufferSettings(Section):
    max_frames: Integer = Field(2000, ge=1, le=10_000_000, description="keep at most this many frames (oldest go first)")
    max_bytes: Size = Field(2 * 1024**3, ge=1024**2, description='keep at most this many bytes of frames (bytes or e.g. "2GiB")')
    min_interval_s: Duration = Field(30.0, ge=0, description="at most one frame this often (seconds or a duration string)")
    # Mean absolute difference of 64x36 grayscale thumbnails, 0..255 scale, below
    # which a frame is a duplicate of the last stored one. Static-scene noise sits
    # well under it (JPEG q90 ~0.2, sensor noise sigma 15 ~1.3); people moving for
    # 1 s in PETS S2L1 sit above it (5th percentile 2.5). Measured: docs/BUFFER.md.
    dedup_threshold: Number = Field(
        2.0, ge=0, le=255,
        description="skip frames this close to the last kept one (mean abs diff of 64x36 grey thumbnails, 0..255)",
    )  # fmt: skip
    retention_days: Number = Field(7.0, gt=0, description="frames older than this many days are deleted")
    jpeg_quality: Integer = Field(90, ge=1, le=100, description="JPEG quality of stored frames")
    min_free_bytes: Size = Field(512 * 1024**2, ge=0, description="pause buffering when the disk has less free space than this")
