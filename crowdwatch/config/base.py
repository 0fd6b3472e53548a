"""The base model and the scalar types every section uses.

Scalars are strict: TOML ``fps = "1"`` or ``loop = "yes"`` is an error, not a
coercion. Paths are resolved against the config file's folder, which the
loader passes in the validation context.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

from pydantic import AllowInfNan, BaseModel, BeforeValidator, ConfigDict, Strict, ValidationInfo

from .errors import fail

Number = Annotated[float, Strict(), AllowInfNan(False)]
Integer = Annotated[int, Strict()]
Flag = Annotated[bool, Strict()]
Text = Annotated[str, Strict()]
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


class Section(BaseModel):
    """A config table: unknown keys are errors, values are read-only once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in type(self).model_fields:
            raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}: the configuration is read-only")
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        if name in type(self).model_fields:
            raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}: the configuration is read-only")
        super().__delattr__(name)


def base_dir(info: ValidationInfo) -> Path:
    """The folder relative paths are anchored to (the config file's; cwd without a context)."""
    ctx = info.context or {}
    return Path(ctx.get("base_dir") or Path.cwd())


def resolve_path(value: object, info: ValidationInfo) -> Path:
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise fail("a non-empty path", value)
    p = Path(value).expanduser()
    return p if p.is_absolute() else base_dir(info) / p


def _optional_path(value: object, info: ValidationInfo) -> Path | None:
    return None if value is None or value == "" else resolve_path(value, info)


# A file or folder; relative to the config file's folder.
ConfigPath = Annotated[Path, BeforeValidator(resolve_path, json_schema_input_type=str)]
# The same, where "" (or leaving the key out) means none.
OptionalPath = Annotated[Path | None, BeforeValidator(_optional_path, json_schema_input_type=str)]
