"""ConfigError, and how a pydantic ValidationError becomes one.

Every problem is reported as ``SOURCE: dotted.key: expected WHAT, found WHAT``;
problems of the machine rather than the file are :class:`ConfigWarning`.
The converter reads the failing field's declaration (bounds, type, the
:class:`Expect` marker) so that a bound violation says the whole range, e.g.
``cameras.lobby.fps: expected a number in (0, 60], found 0``.
"""

from __future__ import annotations

import difflib
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

import annotated_types
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

ERROR_TYPE = "crowdwatch_config"


class ConfigError(ValueError):
    """A bad config: ``path`` is the dotted key, e.g. ``cameras.lobby.fps``."""

    def __init__(self, path: str, expected: str, found: object, source: str = "") -> None:
        self.path, self.expected, self.found, self.source = path, expected, found, source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{path or '<top level>'}: expected {expected}, found {show(found)}")


# The stages a ConfigWarning can stop, by the names crowdwatch.config.load_stage_config knows them
# ("supervisor" is `crowdwatch run`), and the stages a `serving` one stops.
STAGES = ("supervisor", "infer", "ingest", "web")
SERVING = frozenset({"supervisor", "infer"})


class ConfigWarning(ConfigError):
    """A problem of this machine rather than of the file, found at load: a missing camera file or
    registry, CUDA-only providers without a GPU, CURVE keys missing from the environment.

    ``crowdwatch config check`` prints it and succeeds (the file may be meant for
    another machine, a container or a GPU node). The stages in ``stops`` refuse to start
    with it, at load: they could not work with it. A ``serving`` one stops ``crowdwatch run``
    and ``infer``.
    """

    def __init__(self, path: str, expected: str, found: object, source: str = "", *, serving: bool = False,
                 stops: frozenset[str] | set[str] | tuple[str, ...] = ()) -> None:  # fmt: skip
        super().__init__(path, expected, found, source)
        unknown = set(stops) - set(STAGES)
        if unknown:
            raise ValueError(f"stops must name stages from {STAGES}, found {sorted(unknown)}")
        self.stops = frozenset(stops) | (SERVING if serving else frozenset())

    @property
    def serving(self) -> bool:
        """It stops ``crowdwatch run`` and ``infer``."""
        return SERVING <= self.stops

    def stops_text(self) -> str:
        """The commands that refuse to start with it, e.g. "crowdwatch run and infer"; "" when none."""
        names = [("run" if s == "supervisor" else s) for s in STAGES if s in self.stops]
        if not names:
            return ""
        return "crowdwatch " + (names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1])


class Found:
    """A pre-formatted 'found' text (e.g. the unexpanded string, to keep secrets out of errors)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


class Expect:
    """Annotated marker: the 'expected' text for any error on this field, e.g. ``Expect("a host name")``."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:  # shows in reprs of FieldInfo metadata
        return f"Expect({self.text!r})"


class Kind:
    """Annotated marker naming a value kind ("duration", "size", ...) for error texts."""

    def __init__(self, name: str, unit: str = "") -> None:
        self.name, self.unit = name, unit

    def __repr__(self) -> str:
        return f"Kind({self.name!r})"


def show(value: object) -> str:
    if isinstance(value, Found):
        return value.text
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def fail(expected: str, found: object = ..., key: str | tuple[str | int, ...] = ()) -> PydanticCustomError:
    """An error for a validator to raise: ``key`` names a sub-key of the value being validated."""
    ctx: dict[str, Any] = {"expected": expected, "key": (key,) if isinstance(key, str) else tuple(key)}
    if found is not ...:
        ctx["found"] = found if isinstance(found, Found) else Found(show(found))
    return PydanticCustomError(ERROR_TYPE, "expected {expected}", ctx)


def join_path(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith("["):
            out += part
        else:
            out += f".{part}" if out else part
    return out


def fmt_number(v: float) -> str:
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return str(int(v)) if float(v).is_integer() else str(v)


# --------------------------------------------------------------------------- walking the schema


def _strip(tp: Any) -> Any:
    """The payload type of Optional[...] / Annotated[...]."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _metadata(tp: Any) -> list[Any]:
    out: list[Any] = []
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp, *meta = typing.get_args(tp)
            out += meta
        elif origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return out
            tp = args[0]
        else:
            return out


def _model_field(model: type[BaseModel], key: str) -> tuple[str, FieldInfo] | None:
    for name, info in model.model_fields.items():
        if (info.alias or name) == key:
            return name, info
    return None


def _allowed_keys(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def resolve(root: type[BaseModel], loc: tuple[str | int, ...]) -> tuple[Any, list[Any], type[BaseModel] | None]:
    """Walk ``loc`` from ``root``: (type at loc, its metadata, the model that holds loc's last key)."""
    tp: Any = root
    meta: list[Any] = []
    parent: type[BaseModel] | None = None
    for part in loc:
        base = _strip(tp)
        if isinstance(part, str) and part == "[key]":
            return None, [], None
        if isinstance(base, type) and issubclass(base, BaseModel) and isinstance(part, str):
            parent = base
            found = _model_field(base, part)
            if found is None:
                return None, [], parent
            info = found[1]
            tp, meta = info.annotation, [*info.metadata, *_metadata(info.annotation)]
            continue
        origin = typing.get_origin(base)
        args = typing.get_args(base)
        parent = None
        if origin in (dict, Mapping, typing.Mapping) or (isinstance(origin, type) and issubclass(origin, Mapping)):
            tp = args[1] if len(args) == 2 else Any
        elif origin in (tuple, list) and args:
            fixed = origin is tuple and not (len(args) == 2 and args[1] is Ellipsis)
            tp = args[min(part, len(args) - 1)] if fixed and isinstance(part, int) else args[0]
        else:
            return None, [], None
        meta = _metadata(tp)
    return tp, meta, parent


def _bounds(meta: list[Any]) -> tuple[str, str]:
    lo, hi, lo_open, hi_open = -math.inf, math.inf, False, False
    for m in meta:
        if isinstance(m, annotated_types.Ge):
            lo = m.ge
        elif isinstance(m, annotated_types.Gt):
            lo, lo_open = m.gt, True
        elif isinstance(m, annotated_types.Le):
            hi = m.le
        elif isinstance(m, annotated_types.Lt):
            hi, hi_open = m.lt, True
        elif isinstance(m, annotated_types.Interval):
            return _bounds([x for x in (annotated_types.Ge(m.ge) if m.ge is not None else None, annotated_types.Gt(m.gt) if m.gt is not None else None,
                                          annotated_types.Le(m.le) if m.le is not None else None, annotated_types.Lt(m.lt) if m.lt is not None else None) if x])
    left = f"{'(' if lo_open else '['}{fmt_number(lo)}"
    right = f"{fmt_number(hi)}{')' if hi_open else ']'}"
    return left, right


def _kind(meta: list[Any]) -> Kind | None:
    return next((m for m in meta if isinstance(m, Kind)), None)


def _expected(err: Mapping[str, Any], tp: Any, meta: list[Any]) -> str:
    kind_marker = _kind(meta)
    expect = next((m.text for m in meta if isinstance(m, Expect)), None)
    etype = err["type"]
    ctx = err.get("ctx") or {}
    base = _strip(tp)
    if etype in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        if kind_marker is not None and kind_marker.name in ("duration", "size"):
            unit = "s" if kind_marker.name == "duration" else " bytes"
            unit = kind_marker.unit or unit
            limit = next(iter(ctx.values()))
            what = "a duration" if kind_marker.name == "duration" else "a size"
            if etype == "greater_than":
                return f"{what} above {fmt_number(limit)}{unit}".replace("above 0 bytes", "above 0")
            if etype == "greater_than_equal":
                return f"{what} of at least {fmt_number(limit)}{unit}"
            return f"{what} of at most {fmt_number(limit)}{unit}"
        if expect:
            return expect
        left, right = _bounds(meta)
        noun = "an integer" if base is int else "a number"
        return f"{noun} in {left}, {right}"
    if expect:
        return expect
    if etype == "missing":
        return "this key to be set"
    if etype == "multiple_of":
        return f"a multiple of {fmt_number(ctx.get('multiple_of', 1))}"
    if etype in ("int_type", "int_parsing", "int_from_float"):
        return "an integer"
    if etype in ("float_type", "float_parsing", "finite_number"):
        return "a number"
    if etype in ("bool_type", "bool_parsing"):
        return "true or false"
    if etype in ("string_type", "string_sub_type"):
        return "a string"
    if etype in ("model_type", "model_attributes_type", "dict_type", "mapping_type"):
        return "a table"
    if etype in ("list_type", "tuple_type"):
        return "a list"
    if etype == "literal_error":
        if typing.get_origin(base) is Literal:
            return "one of " + ", ".join(str(a) for a in typing.get_args(base))
        return f"one of {ctx.get('expected')}"
    if etype == "too_short":
        return f"at least {ctx.get('min_length')} items"
    if etype == "too_long":
        return f"at most {ctx.get('max_length')} items"
    if etype == "string_pattern_mismatch":
        return f"a string matching {ctx.get('pattern')}"
    return err.get("msg", "a valid value").removeprefix("Value error, ")


def from_validation_error(
    exc: ValidationError,
    root: type[BaseModel],
    source: str = "",
    prefix: tuple[str | int, ...] = (),
    originals: Mapping[str, str] | None = None,
) -> ConfigError:
    """The first error of ``exc`` as a ConfigError; ``originals`` maps dotted paths to unexpanded strings."""
    originals = originals or {}
    err = exc.errors(include_url=False)[0]
    loc = tuple(err["loc"])
    ctx = err.get("ctx") or {}
    if err["type"] == ERROR_TYPE:
        key_loc = tuple(p for p in loc if p != "[key]")
        path = join_path(prefix + key_loc + tuple(ctx.get("key", ())))
        value_path = join_path(prefix + key_loc)
        found = ctx.get("found")
        if found is None or (not ctx.get("key") and value_path in originals):
            found = _found(err.get("input"), value_path, originals)
        return ConfigError(path, ctx["expected"], found, source)
    path = join_path(prefix + loc)
    if err["type"] == "extra_forbidden":
        _, _, parent = resolve(root, loc)
        allowed = _allowed_keys(parent) if parent is not None else []
        close = difflib.get_close_matches(str(loc[-1]), sorted(allowed), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        listed = ", ".join(sorted(allowed)) or "no keys"
        return ConfigError(path, f"one of: {listed}{hint}", Found(f"unknown key {loc[-1]!r}"), source)
    if err["type"] == "missing":
        return ConfigError(path, "this key to be set", Found("nothing"), source)
    tp, meta, _ = resolve(root, loc)
    return ConfigError(path, _expected(err, tp, meta), _found(err.get("input"), path, originals), source)


def _found(value: object, path: str, originals: Mapping[str, str]) -> object:
    if path in originals:
        return originals[path]  # the text as written: the expanded value may hold a secret
    if any(k.startswith((path + ".", path + "[")) for k in originals):
        return Found("a value built from ${VAR} expansions (not shown)")
    if isinstance(value, dict):
        return Found("a table")
    return value
