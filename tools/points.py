"""The long format every validation set reports in: one point per measured figure, and targets."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

POINT_COLUMNS = ["set", "name", "measured", "predicted", "error", "unit", "baseline", "note"]
TARGET_COLUMNS = ["set", "target", "figure", "limit", "unit", "result"]


def point(set_name, name, measured, predicted, error, unit, baseline, note) -> dict:
    return dict(zip(POINT_COLUMNS, (set_name, name, measured, predicted, error, unit, baseline, note)))


def target_rows(set_name: str, rows) -> pd.DataFrame:
    """(target, figure, limit, unit) tuples as TARGET_COLUMNS rows; a missing (NaN) figure fails."""
    return pd.DataFrame([{"set": set_name, "target": t, "figure": f, "limit": lim, "unit": u,
                          "result": "pass" if f <= lim else "FAIL"} for t, f, lim, u in rows],
                        columns=TARGET_COLUMNS)


def abs_stat(values: pd.Series, how: str) -> float:
    v = values.abs().dropna()
    return float(getattr(np, how)(v)) if len(v) else math.nan


def join_notes(*notes: str) -> str:
    return "; ".join(n for n in notes if n)
