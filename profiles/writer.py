"""Write a profile (or any dict of TOML values) as TOML text, with comments, by tomlkit.

`engram-sim calibrate` writes its measured profiles here: header lines at the very top,
comment lines under a table's header (the raw points the schema has no field for), scalars
and arrays before sub-tables, arrays of tables as multi-line arrays of inline tables.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import tomlkit


def sig(x: float, digits: int = 4) -> float:
    """x rounded to `digits` significant digits (written profiles stay readable)."""
    x = float(x)
    if x == 0 or not math.isfinite(x):
        return x
    return float(f"{x:.{digits}g}")


def plain(value):
    """Dataclasses (also inside lists) to dicts, NumPy scalars to Python ones; None values left out."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if getattr(value, f.name) is not None}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def toml_array(values: list):
    """Scalars on one line; tables (dicts) as inline tables, one a line."""
    arr = tomlkit.array()
    for v in values:
        if isinstance(v, dict):
            item = tomlkit.inline_table()
            item.update(v)
            arr.append(item)
        else:
            arr.append(v)
    if any(isinstance(v, dict) for v in values):
        arr.multiline(True)
    return arr


def _fill(table, data: dict, name: str, comments: dict) -> None:
    for line in comments.get(name, []):
        table.add(tomlkit.comment(line))
    subtables = []
    for key, value in data.items():
        if isinstance(value, dict):
            subtables.append((key, value))
        elif isinstance(value, (list, tuple)):
            table.add(key, toml_array(list(value)))
        else:
            table.add(key, value)
    for key, value in subtables:   # after every scalar: a key below a [table] header would belong to it
        sub = tomlkit.table()
        _fill(sub, value, f"{name}.{key}" if name else key, comments)
        table.add(key, sub)


def dump_toml(data, comments: dict | None = None, header: list[str] | None = None) -> str:
    """A dict (or dataclass) as TOML text: scalars and arrays first, then [tables] (nested: [a.b]).

    comments: {table name (dotted for nested tables, "" for the top): [lines]} written under
    that table's header; header: lines at the very top."""
    doc = tomlkit.document()
    for line in header or []:
        doc.add(tomlkit.comment(line))
    _fill(doc, plain(data), "", comments or {})
    text = tomlkit.dumps(doc)
    return text if text.endswith("\n") else text + "\n"

