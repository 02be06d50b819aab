"""Cost functions: how long one piece of work takes on a profile, alone.

These read the hardware profile (data) and return seconds or rates for a
single operation with nothing else running. Contention between operations
(shared link, shared DRAM, cores, copy engines) is the DES's job.
"""

from __future__ import annotations

import math

import numpy as np

from profiles import CurvePoint, HardwareProfile
from profiles.uva import units_touched, uva_time
from vocab.units import GiB


def interp_curve(points: list[CurvePoint], x: float) -> float:
    """Log-log piecewise-linear interpolation, flat beyond the ends."""
    xs = np.log([p.x for p in points])
    ys = np.log([p.y for p in points])
    return float(np.exp(np.interp(math.log(max(x, 1e-30)), xs, ys)))


def hash_time(profile: HardwareProfile, tokens: int, engram_layers: int, threads: int) -> float:
    threads = min(threads, profile.host.cpu_cores)
    return tokens * engram_layers / (profile.host.hash_tokens_per_s_per_core * threads)


def dedup_time(profile: HardwareProfile, lookups: int, threads: int) -> float:
    threads = min(threads, profile.host.cpu_cores)
    return lookups / (profile.host.dedup_rows_per_s_per_core * threads)


def cpu_gather_rate(profile: HardwareProfile, row_bytes: int, threads: int) -> float:
    """Payload bytes/s of a CPU gather into staging on `threads` threads."""
    threads = min(threads, profile.host.cpu_cores, profile.host.cpu_gather_max_threads)
    return interp_curve(profile.host.cpu_gather_per_thread, row_bytes) * 1e9 * threads


def hbm_gather_time(profile: HardwareProfile, rows: int, row_bytes: int) -> float:
    if rows <= 0:
        return 0.0
    rate = interp_curve(profile.gpu.hbm_gather, row_bytes) * 1e9
    return rows * row_bytes / rate


def copy_time(profile: HardwareProfile, nbytes: float) -> float:
    """One pinned H2D copy alone: fixed cost + bytes at the link's peak."""
    return profile.link.copy_fixed_us * 1e-6 + nbytes / (profile.link.h2d_gbps * 1e9)


def uva_warm_fraction(profile: HardwareProfile, rows: int, reused_rows: int, footprint_bytes: float) -> float:
    """Part of a step's translation units whose translation is still cached.

    Rows touched in the previous step are warm only while the units they span
    fit in the TLB's reach (H100.md: repeating 16K rows hits, 262K does not).
    """
    if rows <= 0 or reused_rows <= 0:
        return 0.0
    u = profile.uva
    touched = float(units_touched(rows, footprint_bytes, u.translation_unit_kib * 1024))
    tlb_units = u.tlb_reach_gib * GiB / (u.translation_unit_kib * 1024)
    return (reused_rows / rows) * min(1.0, tlb_units / max(touched, 1.0))


def uva_gather_time(profile: HardwareProfile, rows: int, row_bytes: int, footprint_bytes: float,
                    warm_fraction: float = 0.0) -> tuple[float, float]:
    """(fixed seconds, body seconds) of a zero-copy gather of sorted unique rows (profiles/uva.py's model)."""
    return uva_time(profile.uva, rows, row_bytes, footprint_bytes, warm_fraction)
