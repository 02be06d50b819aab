"""Fit profile curves to raw measured points (NumPy only).

Used to seed the shipped profiles from published measurements and by
`engram-sim calibrate` on a user's machine. Each fit returns plain numbers;
the raw points are kept in the profile beside them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from profiles import UvaProfile, UvaTranslation
from profiles.uva import page_walks, uva_payload_time, uva_time, uva_translation_time
from vocab.units import GiB


@dataclass
class CopyFit:
    fixed_us: float
    peak_gbps: float


def _line(x: np.ndarray, t: np.ndarray, nonneg: bool) -> tuple[np.ndarray, np.ndarray]:
    """(fixed, per x) of t = fixed + x * per, least squares on relative error (weights 1/t); and the weights."""
    w = 1.0 / t
    a = np.stack([np.ones_like(x), x], 1) * w[:, None]
    coef = _nonneg_lstsq(a, t * w) if nonneg else np.linalg.lstsq(a, t * w, rcond=None)[0]
    return coef, w


def fit_copy(sizes_bytes, gbps) -> CopyFit:
    """time = fixed + bytes / peak, fitted on times (weighted by 1/time)."""
    sizes = np.asarray(sizes_bytes, float)
    t = sizes / (np.asarray(gbps, float) * 1e9)
    (fixed, per_byte), w = _line(sizes, t, nonneg=False)
    # Two parameters cannot follow the whole curve; never claim a peak above
    # what was measured, and refit the fixed cost under that peak.
    peak = min(1e-9 / per_byte, float(np.max(gbps)))
    fixed = float(np.sum((t - sizes / (peak * 1e9)) * w * w) / np.sum(w * w))
    return CopyFit(fixed_us=max(0.0, fixed) * 1e6, peak_gbps=peak)


@dataclass
class UvaFit(UvaTranslation):
    max_rel_error: float


def fit_uva(table_gib, row_bytes, rows, us,
            unit_kib_grid=(4, 16, 64, 256, 1024, 2048),
            reach_gib_grid=(0.25, 0.5, 1, 2, 4, 8),
            exponent_grid=(0.5, 1.0)) -> UvaFit:
    """Fit the zero-copy gather model's translation part (profiles/uva.py) to fresh-id points.

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
        walks = page_walks(n, footprint, unit_kib, reach_gib, exponent)
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
    coef, _ = _line(np.asarray(items, float), np.asarray(us, float) * 1e-6, nonneg=True)
    return LinearFit(fixed_us=coef[0] * 1e6, per_item_ns=coef[1] * 1e9)


def fit_interference(shares, losses) -> float:
    """uva_interference from contention points: the share of block slots a zero-copy gather held
    (profiles.uva.gather_block_share) and the share of its rate the overlapped layer lost (1 - alone / with).
    Least squares of loss = interference x share through the origin, clipped to [0, 1]."""
    s, loss = np.asarray(shares, float), np.asarray(losses, float)
    den = float(np.sum(s * s))
    return float(np.clip(np.sum(s * loss) / den, 0.0, 1.0)) if den > 0 else 0.0


def fraction_curve(xs, rates, peak: float) -> list[dict]:
    """[{x, y}] with y = rate / peak (at most 1), sorted by x, one point per x (the best), for the profile's
    matmul_curve and memory_curve."""
    best: dict = {}
    for x, r in zip(xs, rates):
        best[x] = max(best.get(x, 0.0), float(r))
    return [{"x": x, "y": min(1.0, best[x] / peak)} for x in sorted(best)]


def best_per_core(rates_by_threads: dict) -> tuple[float, int]:
    """(rate / threads at the thread count with the highest rate, that thread count)."""
    best_t = max(rates_by_threads, key=lambda t: (rates_by_threads[t], -t))
    return rates_by_threads[best_t] / best_t, int(best_t)


def fit_gather_curve(gbps: dict, within: float = 0.95) -> tuple[list[dict], int]:
    """CPU gather points {(row_bytes, threads): GB/s} -> (per-thread curve [{x: row bytes, y: GB/s}], max threads).

    max threads: the fewest threads at which every row size reaches, on average,
    `within` of its best rate (more threads add nothing); the per-thread rate of a
    row size is its best rate divided by that count, so the simulator's
    per_thread x min(threads, max_threads) gives the best rate from there on.
    """
    sizes = sorted({rb for rb, _ in gbps})
    threads = sorted({t for _, t in gbps})
    best = {rb: max(v for (r, _), v in gbps.items() if r == rb) for rb in sizes}
    mean_share = {t: float(np.mean([gbps.get((rb, t), 0.0) / best[rb] for rb in sizes])) for t in threads}
    max_threads = min(t for t in threads if mean_share[t] >= within) if any(
        v >= within for v in mean_share.values()) else threads[-1]
    return [{"x": rb, "y": best[rb] / max_threads} for rb in sizes], int(max_threads)


def copy_engines_from(h2d_gbps: float, d2h_gbps: float, both_gbps: float) -> int:
    """2 when copying both directions at once moves clearly more than either alone, else 1."""
    return 2 if both_gbps > 1.3 * max(h2d_gbps, d2h_gbps) else 1


def _point_rate_gbps(p: dict) -> float:
    return p["rows"] * p["row_bytes"] / (p["us"] * 1e-6) / 1e9


def fit_uva_points(points: list[dict], iterations: int = 10):
    """Fit the whole zero-copy model, payload limit included, to measured points
    ({table_gib, row_bytes, rows, us} each).

    fit_uva fits the translation part only, so the points limited by the payload
    rate must be left out of it, and which ones those are depends on the fit:
    start from the points below 80 % of the best payload rate, then alternate (fit the
    translation part; max_gbps = best bytes / (us - fixed); keep the points whose
    predicted translation time is at least their payload time) until the set settles.
    Returns (UvaFit, max_gbps, points used, max relative error of the whole model over
    all points), from the iteration with the smallest such error.
    """
    best_rate = max(_point_rate_gbps(p) for p in points)
    keep = [p for p in points if _point_rate_gbps(p) < 0.8 * best_rate]
    if len(keep) < 4:
        keep = list(points)
    best = None
    for _ in range(iterations):
        fit = fit_uva([p["table_gib"] for p in keep], [p["row_bytes"] for p in keep], [p["rows"] for p in keep],
                      [p["us"] for p in keep])
        max_gbps = max(p["rows"] * p["row_bytes"] / max(p["us"] - fit.fixed_us, 0.02 * p["us"]) * 1e-3
                       for p in points)
        model = UvaProfile(fit.fixed_us, fit.row_ns, fit.byte_ps, fit.walk_ns, fit.translation_unit_kib,
                           fit.tlb_reach_gib, fit.miss_exponent, max_gbps)
        err = max(abs(sum(uva_time(model, p["rows"], p["row_bytes"], p["table_gib"] * GiB)) * 1e6 - p["us"]) / p["us"]
                  for p in points)
        if best is None or err < best[3]:
            best = (fit, max_gbps, list(keep), err)
        new = [p for p in points if uva_translation_time(model, p["rows"], p["row_bytes"], p["table_gib"] * GiB)
               >= uva_payload_time(model, p["rows"], p["row_bytes"])]
        if len(new) < 4 or new == keep:
            break
        keep = new
    return best
