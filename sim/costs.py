"""Cost functions: how long one piece of work takes on a profile, alone.

These read the hardware profile (data) and return seconds or rates for a
single operation with nothing else running. Contention between operations
(shared link, shared DRAM, cores, copy engines) is the DES's job.
"""

from __future__ import annotations

import math

import numpy as np

from profiles import CurvePoint, HardwareProfile
from profiles.uva import gather_block_share, units_touched, uva_time
from vocab.config import RunConfig
from vocab.geometry import expected_distinct_blocks, ssd_blocks_per_row, ssd_rows_per_block
from vocab.memory import kv_cache_bytes, parameter_counts
from vocab.units import DTYPE_BYTES, GiB, MiB


def interp_curve(points: list[CurvePoint], x: float) -> float:
    """Log-log piecewise-linear interpolation, flat beyond the ends."""
    xs = np.log([p.x for p in points])
    ys = np.log([p.y for p in points])
    return float(np.exp(np.interp(math.log(max(x, 1e-30)), xs, ys)))


def hash_time(profile: HardwareProfile, tokens: int, engram_layers: int, threads: int) -> float:
    """Seconds of the worker threads' hashing of a step's `tokens` for every Engram layer (one call per layer):
    at the measured rate of the fetch worker's whole call of that size (host.hash_call_curve), else at the
    kernel's rate."""
    threads = min(threads, profile.host.cpu_cores)
    h = profile.host
    rate = interp_curve(h.hash_call_curve, tokens) if h.hash_call_curve else h.hash_tokens_per_s_per_core
    return tokens * engram_layers / (rate * threads)


def dedup_time(profile: HardwareProfile, lookups: int, threads: int) -> float:
    """Seconds to deduplicate one call's `lookups` row ids (one Engram layer's), at the rate of a call that size."""
    h = profile.host
    threads = min(threads, h.cpu_cores)
    rate = interp_curve(h.dedup_curve, lookups) if h.dedup_curve else h.dedup_rows_per_s_per_core
    return lookups / (rate * threads)


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
                    warm_fraction: float = 0.0, distinct_rows: int | None = None,
                    ctas: int | None = None, work_between: bool = True) -> tuple[float, float]:
    """(fixed seconds, body seconds) of a zero-copy gather of sorted rows (profiles/uva.py's model).

    ctas: a bounded grid of that many thread blocks (None: one block per gpu.uva_rows_per_cta rows, the grid
    the model describes); fewer blocks in flight walk translations proportionally slower.
    work_between: other kernels run between two gathers of the table, as in every simulated step (the
    backbone's layers stream their weights and KV cache, GBs, through an L2 of tens of MiB), so the walks read
    the page table's upper levels cold (uva.cold_line_ns per line); False: gathers back to back, as the
    per-step fetch benchmark times them and as the model was fitted."""
    full = min(uva_grid(profile, rows, None), uva_block_slots(profile))
    concurrency = min(uva_grid(profile, rows, ctas), uva_block_slots(profile)) / full if ctas is not None else 1.0
    return uva_time(profile.uva, rows, row_bytes, footprint_bytes, warm_fraction, distinct_rows, concurrency,
                    cold_upper=1.0 if work_between else 0.0)


def streamed_between_gathers(cfg: RunConfig) -> float:
    """HBM bytes the layers stream through L2 between two zero-copy gathers of one Engram layer's table (one
    step apart: the whole step runs between them), as a proxy from the config alone: the weights the layers
    read (every layer's attention and FFN, the norms, the LM head where there is one; not the embedding, of
    which only the looked-up rows are read; MoE: every expert, an upper bound) and the KV cache that
    `sequences` contexts of lengths.low tokens fill (the least a decode step's attention reads)."""
    b = cfg.backbone
    counts = parameter_counts(b)
    weights = (counts["attention"] + counts["dense_ffn"] + counts["moe_ffn"] + counts["norms"]
               + (counts["lm_head"] if b.lm_head else 0))
    w = cfg.workload
    return float(weights * DTYPE_BYTES[b.dtype] + kv_cache_bytes(b, w.sequences * w.lengths.low))


def upper_levels_cold(profile: HardwareProfile, streamed_bytes: float) -> bool:
    """Whether a gather's walks find the page table's upper levels evicted from L2: the work between two
    gathers streamed more than the L2 (gpu.l2_mib; 0, unknown: always, the conservative reading)."""
    l2 = profile.gpu.l2_mib
    return l2 <= 0 or streamed_bytes > l2 * MiB


def uva_grid(profile: HardwareProfile, rows: int, ctas: int | None) -> int:
    """Thread blocks of a zero-copy gather of `rows` rows: the bounded grid, or one per uva_rows_per_cta rows."""
    return int(ctas) if ctas is not None else max(1, math.ceil(rows / profile.gpu.uva_rows_per_cta))


def uva_block_slots(profile: HardwareProfile) -> int:
    """Gather blocks the whole GPU holds at once."""
    return profile.gpu.sm_count * profile.gpu.uva_blocks_per_sm


def uva_sm_share(profile: HardwareProfile, rows: int, ctas: int | None) -> float:
    """Share of the compute stream's throughput lost while the gather's blocks are resident."""
    g = profile.gpu
    return g.uva_interference * gather_block_share(uva_grid(profile, rows, ctas), g.sm_count, g.uva_blocks_per_sm)


def engine_step_time(profile: HardwareProfile, sequences: int, cuda_graphs: bool, serving: bool = False) -> float:
    """The engine's own host work before a step can launch (and the first graph launch with CUDA graphs);
    a serving engine's where the profile measured one (host.serve_step_*)."""
    h = profile.host
    fixed, per_seq = h.engine_step_fixed_us, h.engine_step_per_seq_us
    if serving:
        fixed = fixed if h.serve_step_fixed_us is None else h.serve_step_fixed_us
        per_seq = per_seq if h.serve_step_per_seq_us is None else h.serve_step_per_seq_us
    t = (fixed + per_seq * sequences) * 1e-6
    return t + (profile.gpu.graph_launch_us * 1e-6 if cuda_graphs else 0.0)


def critical_hash_time(profile: HardwareProfile, tokens: int, engram_layers: int) -> float:
    """Hashing on the host's critical path: one thread, per Engram layer a fixed cost and a cost per token."""
    h = profile.host
    return engram_layers * (h.critical_hash_fixed_us * 1e-6 + h.critical_hash_ns_per_token * 1e-9 * tokens)


def sort_time(profile: HardwareProfile, rows: int) -> float:
    """Sorting `rows` row ids on one host thread."""
    return rows / profile.host.sort_rows_per_s


# -- the drive (ssd placement) ------------------------------------------------------------------------

def ssd_reads_for_rows(rows: float, layer_rows: int, row_bytes: int, block_bytes: int) -> int:
    """Block reads for `rows` distinct rows of a layer's table file: rows spread uniformly over its blocks,
    and rows that share a block share its read (vocab.geometry's layout)."""
    per_block = ssd_rows_per_block(row_bytes, block_bytes)
    blocks = -(-layer_rows // per_block)
    return int(round(expected_distinct_blocks(rows, blocks))) * ssd_blocks_per_row(row_bytes, block_bytes)


def ssd_depth(threads: int, queue_depth: int, reads: int) -> int:
    """Reads in flight: each submitting thread keeps queue_depth; never more than there are reads."""
    return max(1, min(threads * queue_depth, reads))


def ssd_read_rate(profile: HardwareProfile, depth: int, threads: int) -> float:
    """Block reads per second at `depth` reads in flight, by the drive's curve, and at most what the
    submitting threads' CPU time per read allows on the cores they can use."""
    s = profile.ssd
    rate = interp_curve(s.random_read_iops, depth)
    if s.read_cpu_us > 0:
        rate = min(rate, min(threads, profile.host.cpu_cores) / (s.read_cpu_us * 1e-6))
    return rate


def ssd_drive_bytes_per_s(profile: HardwareProfile) -> float:
    """The drive's ceiling on block bytes per second, shared by every read in flight."""
    s = profile.ssd
    return min(max(p.y for p in s.random_read_iops) * s.read_block_bytes, s.seq_read_gbps * 1e9)


def ssd_call_time(profile: HardwareProfile, depth: int) -> float:
    """Seconds one read call costs beyond its reads: its fixed cost, and a hand-off to each of the `depth`
    reader threads it splits its blocks among (the store's DirectReader: one share per thread in flight)."""
    s = profile.ssd
    return (s.read_call_fixed_us + s.read_handoff_us * depth) * 1e-6


def ssd_read_time(profile: HardwareProfile, reads: int, threads: int, queue_depth: int) -> float:
    """Seconds for one call of `reads` block reads alone: the call's own cost, one round at the depth's latency
    (Little's law: depth / rate), then the rest at the depth's rate, within the drive's byte ceiling."""
    if reads <= 0:
        return 0.0
    depth = ssd_depth(threads, queue_depth, reads)
    rate = ssd_read_rate(profile, depth, threads)
    rest_bytes = (reads - depth) * profile.ssd.read_block_bytes
    return (ssd_call_time(profile, depth) + depth / rate
            + rest_bytes / min(rate * profile.ssd.read_block_bytes, ssd_drive_bytes_per_s(profile)))
