"""The zero-copy (UVA) gather time model, in one place (profiles.UvaProfile documents it).

The simulator's cost (sim/costs.uva_gather_time), the fit (profiles/fit.py) and the
calibration's check of its fit all compute the time here. `uva` is anything with the
UvaProfile numbers as attributes (a UvaProfile, or a fit of one).
"""

from __future__ import annotations

import numpy as np

from vocab.units import GiB


def units_touched(rows, footprint_bytes, unit_bytes):
    """Expected distinct translation units hit by `rows` uniform rows."""
    units = np.maximum(np.asarray(footprint_bytes, float) / unit_bytes, 1.0)
    return units * -np.expm1(-np.asarray(rows, float) / units)


def miss_fraction(footprint_bytes, reach_bytes, exponent):
    """Chance that a unit's translation is not cached: 1 - (reach / footprint) ** exponent, in [0, 1]."""
    return np.clip(1.0 - (reach_bytes / np.asarray(footprint_bytes, float)) ** exponent, 0.0, 1.0)


def page_walks(rows, footprint_bytes, unit_kib, reach_gib, exponent):
    """Expected translations walked (not cached) by a gather of `rows` uniform sorted rows (arrays too)."""
    return units_touched(rows, footprint_bytes, unit_kib * 1024) * miss_fraction(footprint_bytes, reach_gib * GiB,
                                                                                 exponent)


def uva_translation_time(uva, rows: int, row_bytes: int, footprint_bytes: float, warm_fraction: float = 0.0,
                         distinct_rows: int | None = None) -> float:
    """Seconds of the gather's body when address translation limits it.

    distinct_rows (default: rows): a step that fetches repeated rows walks the translations of its distinct rows."""
    walked = rows if distinct_rows is None else min(distinct_rows, rows)
    walks = float(page_walks(walked, footprint_bytes, uva.translation_unit_kib, uva.tlb_reach_gib, uva.miss_exponent))
    nbytes = rows * row_bytes
    return (rows * uva.row_ns * 1e-9 + nbytes * uva.byte_ps * 1e-12
            + walks * (1.0 - warm_fraction) * uva.walk_ns * 1e-9)


def uva_payload_time(uva, rows: int, row_bytes: int) -> float:
    """Seconds of the gather's body when the payload rate limits it."""
    return rows * row_bytes / (uva.max_gbps * 1e9)


def uva_time(uva, rows: int, row_bytes: int, footprint_bytes: float,
             warm_fraction: float = 0.0, distinct_rows: int | None = None,
             concurrency: float = 1.0) -> tuple[float, float]:
    """(fixed seconds, body seconds) of a zero-copy gather of sorted unique rows.

    The body is limited by address translation or by the payload rate, whichever is slower.
    warm_fraction: the part of the step's translation units still cached from recent steps.
    concurrency: thread blocks in flight against those of the grid the model was fitted with; translation is
    latency-bound, so fewer blocks (a bounded grid) walk proportionally slower."""
    if rows <= 0:
        return 0.0, 0.0
    translation = uva_translation_time(uva, rows, row_bytes, footprint_bytes, warm_fraction, distinct_rows)
    return uva.fixed_us * 1e-6, max(translation / concurrency, uva_payload_time(uva, rows, row_bytes))


def gather_block_share(ctas: int, sm_count: int, blocks_per_sm: int) -> float:
    """Share of the GPU's thread-block slots a zero-copy gather of `ctas` programs holds:
    min(1, ctas / (sm_count x blocks_per_sm)). The layers it overlaps run at
    1 - uva_interference x this share (profiles.GpuProfile)."""
    return min(1.0, ctas / (sm_count * blocks_per_sm))
