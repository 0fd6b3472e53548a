"""[log]: how every process logs (crowdwatch/logs.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import Flag, Integer, Section
from .units import Size


class LogConfig(Section):
    format: Literal["auto", "json", "text"] = Field(
        "auto", description="json: one JSON object per line (time, level, stage, camera, event, message); text: for people; "
        "auto: json unless stdout is a terminal. --log-format and $CROWDWATCH_LOG_FORMAT override it",
    )  # fmt: skip
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="least severe level logged by every stage; --log-level and $CROWDWATCH_LOG_LEVEL override it"
    )
    files: Flag = Field(True, description="each process also writes <paths.var>/log/<stage>.log (rotated); stdout always gets every line")
    file_max_bytes: Size = Field(10 * 1024**2, ge=64 * 1024, le=1024**3, description='a log file is rotated at this size (bytes or e.g. "10MiB")')
    file_backups: Integer = Field(3, ge=1, le=50, description="rotated log files kept per process")
