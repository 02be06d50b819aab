"""Build typed dataclasses from TOML tables, with one-line errors.

Shared by the run configuration (vocab/config.py) and the hardware profiles
(profiles/__init__.py), so both report bad input the same way: the dotted
path of the field, what is wrong, and how to fix it.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from vocab.errors import UserError


def read_toml(path: str | Path, error: type[UserError]) -> dict:
    p = Path(path)
    if not p.is_file():
        raise error(str(path), "file not found", "give the path of an existing TOML file")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(str(path), f"is not UTF-8 text (byte {e.start})", "save the file as UTF-8") from None
    except OSError as e:
        raise error(str(path), f"cannot be read ({e.strerror})", "give a readable TOML file") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise error(str(path), f"not valid TOML ({e})", "fix the syntax at that line") from None


# Whole numbers must fit a signed 64-bit integer (NumPy's and torch's) before any range check.
INT_LIMIT = 2**63


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (list, tuple):
        (inner, *_) = get_args(tp) or (Any,)
        return f"a list of {_type_name(inner)}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None))
    if dataclasses.is_dataclass(tp):
        return "a table"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, path: str, error: type[UserError]) -> Any:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        if len(args) == 1:  # X | None: X's own error says what is wrong
            return _convert(value, args[0], path, error)
        errors = []
        for a in args:
            try:
                return _convert(value, a, path, error)
            except UserError as e:
                errors.append((a, e))
        # A value of the right kind (a table for a table) failed inside: that error names the field.
        for a, e in errors:
            if _same_kind(value, a) and e.field != path:
                raise e
        raise error(path, f"got {value!r}", f"use {_type_name(tp)}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise error(path, f"unknown value {value!r}", f"use one of {', '.join(map(repr, choices))}")
        return value
    if origin is list:
        (inner,) = get_args(tp)
        if not isinstance(value, list):
            raise error(path, f"got {value!r}", f"use {_type_name(tp)}")
        return [_convert(v, inner, f"{path}[{i}]", error) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise error(path, f"got {value!r}", "use a table")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise error(path, f"got {value!r}", "use a table")
        return build(tp, value, path, error)
    if tp is bool:
        if not isinstance(value, bool):
            raise error(path, f"got {value!r}", "use true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise error(path, f"got {value!r}", "use a whole number")
        if isinstance(value, float) and not value.is_integer():
            raise error(path, f"got {value!r}", "use a whole number")
        if not -INT_LIMIT < value < INT_LIMIT:
            raise error(path, f"{value:g} is far too large", "use a whole number in the field's range")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise error(path, f"got {value!r}", "use a number")
        if not math.isfinite(value):
            raise error(path, f"got {value!r}", "use a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise error(path, f"got {value!r}", "use a string")
        return value
    return value


def _same_kind(value: Any, tp: Any) -> bool:
    if dataclasses.is_dataclass(tp):
        return isinstance(value, dict)
    return get_origin(tp) is list and isinstance(value, list)


# A class's hints never change, and resolving them is most of a config edit's time (sweeps and plans edit
# configs by the thousand).
_type_hints = functools.cache(typing.get_type_hints)


def build(cls: type, data: dict, path: str, error: type[UserError]):
    """Instantiate dataclass `cls` from `data`, checking names and types."""
    hints = _type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known fields: {', '.join(fields)}"
            raise error(f"{path}.{key}" if path else key, "unknown field", hint)
    kwargs = {}
    for name, f in fields.items():
        sub = f"{path}.{name}" if path else name
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], sub, error)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise error(sub, "missing", f"add {name} ({_type_name(hints[name])})")
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if check is not None:
        check(path)
    return obj


def to_dict(obj) -> dict:
    """Dataclass to a plain dict (TOML/JSON-ready), dropping None values."""
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if v is None:
            continue
        if dataclasses.is_dataclass(v):
            v = to_dict(v)
        out[f.name] = v
    return out


def require(cond: bool, error: type[UserError], field: str, problem: str, fix: str) -> None:
    if not cond:
        raise error(field, problem, fix)


def check_ranges(obj, path: str, ranges: dict, error: type[UserError]) -> None:
    """Each field named in `ranges` ({name: (low, high, unit)}) lies in low..high (None: not set, unchecked)."""
    for name, (low, high, unit) in ranges.items():
        value = getattr(obj, name)
        values = value if isinstance(value, list) else [value]
        for i, v in enumerate(values):
            if v is not None and not low <= v <= high:
                field = f"{path}.{name}" if path else name
                field += f"[{i}]" if isinstance(value, list) else ""
                bound = f">= {_number(low)}" if v < low else f"<= {_number(high)}"
                raise error(field, f"must be {bound} {unit} (got {_number(v)})",
                            f"use at least {_number(low)}" if v < low else f"use at most {_number(high)}")


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e7 else f"{x:.4g}"


def require_each(obj, path: str, names, error: type[UserError], minimum: float = 0.0, strict: bool = True,
                 fix: str = "use a positive number") -> None:
    """Each named field of obj is above `minimum` (at or above when not strict)."""
    for name in names:
        value = getattr(obj, name)
        ok = value > minimum if strict else value >= minimum
        require(ok, error, f"{path}.{name}", f"must be {'>' if strict else '>='} {minimum:g}", fix)
