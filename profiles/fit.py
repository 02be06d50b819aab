"""Fit profile curves to raw measured points (NumPy only).

Used to seed the shipped profiles from published measurements and, later, by
`engram-sim calibrate` on a user's machine. Each fit returns plain numbers;
the raw points are kept in the profile beside them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

GiB = 1 << 30


@dataclass
class CopyFit:
    fixed_us: float
    peak_gbps: float


def fit_copy(sizes_bytes, gbps) -> CopyFit:
    """time = fixed + bytes / peak, fitted on times (weighted by 1/time)."""
    sizes = np.asarray(sizes_bytes, float)
    t = sizes / (np.asarray(gbps, float) * 1e9)
    w = 1.0 / t
    a = np.stack([np.ones_like(sizes), sizes], 1) * w[:, None]
    (fixed, per_byte), *_ = np.linalg.lstsq(a, t * w, rcond=None)
    # Two parameters cannot follow the whole curve; never claim a peak above
    # what was measured, and refit the fixed cost under that peak.
    peak = min(1e-9 / per_byte, float(np.max(gbps)))
    fixed = float(np.sum((t - sizes / (peak * 1e9)) * w * w) / np.sum(w * w))
    return CopyFit(fixed_us=max(0.0, fixed) * 1e6, peak_gbps=peak)


def units_touched(rows, footprint_bytes, unit_bytes):
    """Expected distinct translation units hit by `rows` uniform rows."""
    units = np.maximum(np.asarray(footprint_bytes, float) / unit_bytes, 1.0)
    return units * -np.expm1(-np.asarray(rows, float) / units)


def miss_fraction(footprint_bytes, reach_bytes, exponent):
    return np.clip(1.0 - (reach_bytes / np.asarray(footprint_bytes, float)) ** exponent, 0.0, 1.0)


@dataclass
class UvaFit:
    fixed_us: float
    row_ns: float
    byte_ps: float
    walk_ns: float
    translation_unit_kib: float
    tlb_reach_gib: float
    miss_exponent: float
    max_rel_error: float


def fit_uva(table_gib, row_bytes, rows, us,
            unit_kib_grid=(4, 16, 64, 256, 1024, 2048),
            reach_gib_grid=(0.25, 0.5, 1, 2, 4, 8),
            exponent_grid=(0.5, 1.0)) -> UvaFit:
    """Fit the zero-copy gather model (see profiles.UvaProfile) to fresh-id points.

    The model is linear in (fixed, row, byte, walk) once the translation unit,
    TLB reach and miss exponent are chosen, so those three are searched on a
    grid and the rest solved by weighted least squares (relative error).
    """
    footprint = np.asarray(table_gib, float) * GiB
    rb = np.asarray(row_bytes, float)
    n = np.asarray(rows, float)
    t = np.asarray(us, float) * 1e-6
    w = 1.0 / t
    best = None
    for unit_kib, reach_gib, exponent in itertools.product(unit_kib_grid, reach_gib_grid, exponent_grid):
        walks = units_touched(n, footprint, unit_kib * 1024) * miss_fraction(footprint, reach_gib * GiB, exponent)
        a = np.stack([np.ones_like(n), n, n * rb, walks], 1)
        coef, *_ = np.linalg.lstsq(a * w[:, None], t * w, rcond=None)
        if (coef < 0).any():
            coef = _nonneg_lstsq(a * w[:, None], t * w)
        err = float(np.abs(a @ coef / t - 1).max())
        if best is None or err < best[0]:
            best = (err, unit_kib, reach_gib, exponent, coef)
    err, unit_kib, reach_gib, exponent, (fixed, per_row, per_byte, per_walk) = best
    return UvaFit(fixed_us=fixed * 1e6, row_ns=per_row * 1e9, byte_ps=per_byte * 1e12, walk_ns=per_walk * 1e9,
                  translation_unit_kib=float(unit_kib), tlb_reach_gib=float(reach_gib),
                  miss_exponent=float(exponent), max_rel_error=err)


def _nonneg_lstsq(a, b):
    """Least squares with coefficients >= 0 by dropping negative ones (few columns)."""
    cols = list(range(a.shape[1]))
    while True:
        coef, *_ = np.linalg.lstsq(a[:, cols], b, rcond=None)
        if (coef >= 0).all():
            out = np.zeros(a.shape[1])
            out[cols] = coef
            return out
        cols.pop(int(np.argmin(coef)))


@dataclass
class LinearFit:
    fixed_us: float
    per_item_ns: float


def fit_linear_time(items, us) -> LinearFit:
    """time = fixed + items * per_item, weighted by 1/time."""
    x = np.asarray(items, float)
    t = np.asarray(us, float) * 1e-6
    w = 1.0 / t
    coef = _nonneg_lstsq(np.stack([np.ones_like(x), x], 1) * w[:, None], t * w)
    return LinearFit(fixed_us=coef[0] * 1e6, per_item_ns=coef[1] * 1e9)
