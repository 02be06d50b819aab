"""The zero-copy (UVA) gather time model, in one place (profiles.UvaProfile documents it).

The simulator's cost (sim/costs.uva_gather_time), the fit (profiles/fit.py) and the
calibration's check of its fit all compute the time here. `uva` is anything with the
UvaProfile numbers as attributes (a UvaProfile, or a fit of one).
"""

from __future__ import annotations

import numpy as np

from vocab.units import GiB, MiB


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


def cold_upper_lines(walks: float, footprint_bytes: float, line_mib: float) -> float:
    """Expected distinct upper-level page-table lines (each mapping line_mib of the table) that `walks` walks of
    uniformly spread translation units read: the first walk under a line reads it, the rest find it in L2."""
    return float(units_touched(walks, footprint_bytes, line_mib * MiB))


def gather_walks(uva, rows: int, footprint_bytes: float, warm_fraction: float = 0.0,
                 distinct_rows: int | None = None) -> float:
    """Expected page walks of a gather of `rows` sorted rows: those of its distinct rows (default: rows) whose
    translation is neither cached in the TLB nor warm from recent steps."""
    walked = rows if distinct_rows is None else min(distinct_rows, rows)
    walks = float(page_walks(walked, footprint_bytes, uva.translation_unit_kib, uva.tlb_reach_gib, uva.miss_exponent))
    return walks * (1.0 - warm_fraction)


def gather_cold_lines(uva, rows: int, footprint_bytes: float, warm_fraction: float = 0.0,
                      distinct_rows: int | None = None, line_mib: float | None = None) -> float:
    """Upper-level page-table lines a gather's walks read once they have been evicted from L2 (line_mib:
    the table each line maps, default uva.upper_line_mib)."""
    line_mib = uva.upper_line_mib if line_mib is None else line_mib
    return cold_upper_lines(gather_walks(uva, rows, footprint_bytes, warm_fraction, distinct_rows),
                            footprint_bytes, line_mib)


def uva_translation_time(uva, rows: int, row_bytes: int, footprint_bytes: float, warm_fraction: float = 0.0,
                         distinct_rows: int | None = None, cold_upper: float = 0.0) -> float:
    """Seconds of the gather's body when address translation limits it.

    distinct_rows (default: rows): a step that fetches repeated rows walks the translations of its distinct rows.
    cold_upper: the part of the page table's upper-level lines evicted from L2 since the last gather (0: gathers
    back to back, as fitted; 1: other work streamed more than the L2 between them); each cold line the walks
    read costs uva.cold_line_ns."""
    walks = gather_walks(uva, rows, footprint_bytes, warm_fraction, distinct_rows)
    nbytes = rows * row_bytes
    cold = 0.0
    if cold_upper > 0.0:
        cold = cold_upper * cold_upper_lines(walks, footprint_bytes, uva.upper_line_mib) * uva.cold_line_ns
    return rows * uva.row_ns * 1e-9 + nbytes * uva.byte_ps * 1e-12 + (walks * uva.walk_ns + cold) * 1e-9


def uva_payload_time(uva, rows: int, row_bytes: int) -> float:
    """Seconds of the gather's body when the payload rate limits it."""
    return rows * row_bytes / (uva.max_gbps * 1e9)


def uva_time(uva, rows: int, row_bytes: int, footprint_bytes: float,
             warm_fraction: float = 0.0, distinct_rows: int | None = None,
             concurrency: float = 1.0, cold_upper: float = 0.0) -> tuple[float, float]:
    """(fixed seconds, body seconds) of a zero-copy gather of sorted unique rows.

    The body is limited by address translation or by the payload rate, whichever is slower.
    warm_fraction: the part of the step's translation units still cached from recent steps.
    concurrency: thread blocks in flight against those of the grid the model was fitted with; translation is
    latency-bound, so fewer blocks (a bounded grid) walk proportionally slower.
    cold_upper: see uva_translation_time (0: back-to-back gathers, the fitted case)."""
    if rows <= 0:
        return 0.0, 0.0
    translation = uva_translation_time(uva, rows, row_bytes, footprint_bytes, warm_fraction, distinct_rows,
                                       cold_upper)
    return uva.fixed_us * 1e-6, max(translation / concurrency, uva_payload_time(uva, rows, row_bytes))


def gather_block_share(ctas: int, sm_count: int, blocks_per_sm: int) -> float:
    """Share of the GPU's thread-block slots a zero-copy gather of `ctas` programs holds:
    min(1, ctas / (sm_count x blocks_per_sm)). The layers it overlaps run at
    1 - uva_interference x this share (profiles.GpuProfile)."""
    return min(1.0, ctas / (sm_count * blocks_per_sm))


def fit_cold_line_ns(uva, points: list[dict], line_mib: float) -> tuple[float, list[dict]]:
    """(cold_line_ns, the points used) from gathers timed warm (back to back) and cold (an L2-flushing copy
    between them): {table_gib, row_bytes, rows, us_warm, us_cold} each, uva the fitted translation model.

    The least-squares slope through the origin of the time difference (ns) against the modelled cold lines
    (gather_cold_lines, each mapping line_mib). Only points whose warm gather is translation-bound under
    `uva` are used: at a payload-bound one the cold lines hide under the payload time, and the difference is
    not linear in them. Points with no cold line (within the TLB's reach) add nothing to the slope. A
    negative slope (noise around no effect) gives 0."""
    used, lines, diffs = [], [], []
    for p in points:
        footprint = p["table_gib"] * GiB
        if uva_translation_time(uva, p["rows"], p["row_bytes"], footprint) < uva_payload_time(uva, p["rows"],
                                                                                               p["row_bytes"]):
            continue
        used.append(p)
        lines.append(gather_cold_lines(uva, p["rows"], footprint, line_mib=line_mib))
        diffs.append((p["us_cold"] - p["us_warm"]) * 1e3)
    x, y = np.asarray(lines, float), np.asarray(diffs, float)
    if not used or float(x @ x) == 0.0:
        return 0.0, used
    return max(0.0, float(x @ y) / float(x @ x)), used
