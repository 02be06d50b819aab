"""How much calibrate measures (Sizes: FULL, QUICK) and what each side measures on this machine (the plans)."""

from __future__ import annotations

import dataclasses

from real_runs.cuda_gather import uva_unavailable_reason
from real_runs.instrument import available_gib, numba_max_threads
from real_runs.timing import thread_counts
from tools.calibrate.shapes import preset_shapes
from vocab.units import GiB, KiB, MiB

# Zero-copy gathers are also timed with the same ids in random order (sorted is what the stores do).
UVA_RANDOM_ROWS = 16384
# The copy that evicts the L2 between two cold zero-copy gathers: this many times the L2, at least L2_FLUSH_MIN.
L2_FLUSH_FACTOR = 4
L2_FLUSH_MIN = 256 * MiB
# The contention probe's zero-copy grids, as multiples of the SM count (None: one program per row block).
CONTENTION_GRIDS = (0.25, 0.5, 1, 2, None)


@dataclasses.dataclass
class Sizes:
    """How much each measurement does. FULL and QUICK below; tests shrink them."""
    warmup: int
    repeats: int
    # CPU side
    hash_tokens: int
    gather_table_bytes: int           # capped by the machine's available memory
    gather_row_bytes: tuple
    gather_payload_bytes: int         # bytes gathered per timed call
    gather_fixed_rows: tuple          # row counts of the fixed-cost fit (256 B rows, all threads)
    dedup_lookups: int
    memcpy_bytes: int
    all_thread_counts: bool           # every power of two up to the cores (else 1 and all)
    critical_batches: tuple           # decode batches: NumPy hash of one layer's windows, np.sort of their ids
    # GPU side
    copy_sizes: tuple
    pageable_sizes: tuple
    bidir_bytes: int                  # per direction
    d2d_bytes: int
    hbm_table_bytes: int
    hbm_row_bytes: tuple
    hbm_payload_bytes: int
    uva_table_gib: tuple              # footprints, capped by host memory
    uva_row_bytes: tuple
    uva_rows: tuple
    gemm_n: int
    launch_kernels: int
    pin_bytes: int
    # GPU side: compute-rate ladders, SM sharing, CUDA graphs, the engine's step
    matmul_rows: tuple                # GEMM rows (tokens) of the matmul_curve ladder
    kv_ladder: tuple                  # (batch, context) of decode attention: the memory_curve ladder
    contention_rows: int              # zero-copy rows first timed alone, then repeated to cover the window
    contention_layers: int            # decode layers per timed window of the contention probe
    graph_kernels: tuple              # tiny kernels per captured CUDA graph
    engine_batches: tuple             # batch sizes of the engine-step runs (the tiny preset, no Engram)
    engine_steps: int
    # drive (--ssd-path): the test file, reads in flight, and how much each timed call reads
    ssd_file_bytes: int = 2 * GiB
    ssd_depths: tuple = (1, 2, 4, 8, 16, 32, 64)   # reader threads, one read in flight each
    ssd_reads_per_thread: int = 64                 # random block reads per thread per timed call
    ssd_seq_block_bytes: int = MiB
    ssd_seq_threads: int = 4
    ssd_seq_call_bytes: int = 256 * MiB            # contiguous bytes per timed call of sequential reads
    ssd_cpu_reads: int = 2048                      # reads per timed batch of the CPU cost a read (16 threads)
    ssd_stop_when_flat: bool = False               # skip the deeper depths once IOPS stops rising
    # zero-copy gathers warm and after an L2 flush (uva.cold_line_ns): footprints (those the pinned table
    # holds), the row bytes and row counts of the e2e experiment's step (512 x 16 rows of 160 B) and more
    uva_cold_table_gib: tuple = (1, 4, 16, 64)
    uva_cold_row_bytes: int = 160
    uva_cold_rows: tuple = (8192, 65536)


FULL = Sizes(
    warmup=2, repeats=7,
    hash_tokens=1 << 21, gather_table_bytes=2 * GiB, gather_row_bytes=(64, 128, 256, 512, 1024, 2048, 4096),
    gather_payload_bytes=64 * MiB, gather_fixed_rows=(64, 256, 1024, 4096, 16384, 65536),
    dedup_lookups=1 << 22, memcpy_bytes=512 * MiB, all_thread_counts=True,
    critical_batches=(1, 4, 16, 64, 256, 1024, 4096),
    copy_sizes=(4 * KiB, 64 * KiB, 256 * KiB, MiB, 4 * MiB, 16 * MiB, 64 * MiB, 256 * MiB, GiB),
    pageable_sizes=(16 * MiB, 256 * MiB), bidir_bytes=512 * MiB, d2d_bytes=GiB,
    hbm_table_bytes=8 * GiB, hbm_row_bytes=(64, 128, 256, 512, 1024, 2048, 4096), hbm_payload_bytes=256 * MiB,
    uva_table_gib=(1, 4, 16, 64), uva_row_bytes=(64, 256, 1024, 4096), uva_rows=(4096, 16384, 65536, 262144),
    gemm_n=8192, launch_kernels=2000, pin_bytes=GiB,
    matmul_rows=(1, 8, 32, 128, 512, 2048, 8192), kv_ladder=((1, 64), (1, 512), (8, 512), (64, 512), (64, 2048)),
    contention_rows=65536, contention_layers=8, graph_kernels=(16, 64, 256, 1024), engine_batches=(8, 64, 256),
    engine_steps=12,
)

QUICK = Sizes(
    warmup=1, repeats=5,
    hash_tokens=1 << 19, gather_table_bytes=256 * MiB, gather_row_bytes=(64, 256, 1024, 4096),
    gather_payload_bytes=16 * MiB, gather_fixed_rows=(64, 1024, 16384),
    dedup_lookups=1 << 20, memcpy_bytes=128 * MiB, all_thread_counts=False,
    critical_batches=(1, 16, 256, 4096),
    copy_sizes=(4 * KiB, 64 * KiB, MiB, 16 * MiB, 256 * MiB, GiB),
    pageable_sizes=(256 * MiB,), bidir_bytes=256 * MiB, d2d_bytes=512 * MiB,
    hbm_table_bytes=2 * GiB, hbm_row_bytes=(64, 256, 1024, 4096), hbm_payload_bytes=64 * MiB,
    uva_table_gib=(1, 8), uva_row_bytes=(256, 1024), uva_rows=(4096, 16384, 262144),
    gemm_n=8192, launch_kernels=1000, pin_bytes=256 * MiB,
    matmul_rows=(1, 8, 32, 128, 512, 2048, 8192), kv_ladder=((1, 64), (8, 512), (64, 2048)),
    contention_rows=65536, contention_layers=4, graph_kernels=(16, 256, 1024), engine_batches=(8, 256),
    engine_steps=8,
    ssd_file_bytes=GiB, ssd_reads_per_thread=32, ssd_seq_call_bytes=64 * MiB, ssd_cpu_reads=512,
    ssd_stop_when_flat=True, uva_cold_table_gib=(1, 8), uva_cold_rows=(8192,),
)


def sizes_for(quick: bool) -> Sizes:
    """QUICK or FULL, looked up when called (tests replace them)."""
    return QUICK if quick else FULL


# measure_cpu.measure_hash_call times the worker's hash call at these prompt chunks (sequences x tokens, a
# quarter of each left as padding, as chunks of ragged prompts leave) and decode batches.
HASH_CALL_PREFILL = ((8, 128), (32, 128), (64, 128))
HASH_CALL_DECODE = (1, 4, 64, 512)
HASH_CALL_STEPS = len(HASH_CALL_PREFILL) + len(HASH_CALL_DECODE)


def cpu_plan(sizes: Sizes) -> dict:
    """Thread counts, the gather table's size (a quarter of available memory at most), measurement count."""
    max_t = numba_max_threads()
    threads = thread_counts(max_t, sizes.all_thread_counts)
    table_bytes = int(min(sizes.gather_table_bytes, max(64 * MiB, available_gib() * GiB / 4)))
    table_bytes -= table_bytes % max(sizes.gather_row_bytes)
    return {"threads": threads, "max_threads": max_t, "table_bytes": table_bytes,
            "count": (len(threads) + len(sizes.gather_row_bytes) * len(threads) + len(sizes.gather_fixed_rows)
                      + 1 + len(threads) + 2 * len(sizes.critical_batches)
                      + HASH_CALL_STEPS + 2)}


def gpu_plan(sizes: Sizes) -> dict:
    """The sizes that fit this GPU and host, the zero-copy points (or why there are none), measurement count."""
    import torch  # optional heavy dependency: only with a CUDA GPU

    free, total = torch.cuda.mem_get_info()
    host_cap_gib = min(64.0, available_gib() * 0.6)
    uva_reason = uva_unavailable_reason()
    footprints = [g for g in sizes.uva_table_gib if g <= host_cap_gib]
    if not uva_reason and not footprints:
        uva_reason = f"host memory too small for a {min(sizes.uva_table_gib)} GiB pinned table"
    uva_points = [] if uva_reason else [
        (g, rb, n) for rb in sizes.uva_row_bytes for g in footprints for n in sizes.uva_rows
        if n <= (g * GiB // rb) // 2]
    uva_cold_points = [] if uva_reason else [
        (g, sizes.uva_cold_row_bytes, n) for g in sizes.uva_cold_table_gib if g <= max(footprints, default=0)
        for n in sizes.uva_cold_rows if n <= (g * GiB // sizes.uva_cold_row_bytes) // 2]
    l2_bytes = int(getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "L2_cache_size", 0))
    copy_max = int(min(max(sizes.copy_sizes), free * 0.25, available_gib() * GiB * 0.25))
    copy_sizes = [s for s in sizes.copy_sizes if s <= copy_max]
    pageable = [s for s in sizes.pageable_sizes if s <= copy_max] or [copy_sizes[-1]]
    # gemm 1, layer shapes, moe + prefill attention 2, decode attention + projection 2, launch 1, pinning 1
    compute_count = 1 + len(preset_shapes().layer_gemms) + 2 + 2 + 1 + 1
    mechanism_count = (len(sizes.matmul_rows) + len(sizes.kv_ladder) + len(sizes.graph_kernels)
                       + len(sizes.engine_batches) + (0 if uva_reason else 2 + len(CONTENTION_GRIDS)))
    return {
        "free": free, "total": total, "uva_reason": uva_reason, "uva_points": uva_points,
        "uva_cold_points": uva_cold_points, "l2_bytes": l2_bytes,
        "l2_flush_bytes": int(min(max(L2_FLUSH_FACTOR * l2_bytes, L2_FLUSH_MIN), free * 0.1)),
        "uva_table_gib": max(footprints) if footprints else 0,
        "copy_sizes": copy_sizes, "pageable_sizes": pageable,
        "bidir_bytes": int(min(sizes.bidir_bytes, copy_max // 2)),
        "d2d_bytes": int(min(sizes.d2d_bytes, free * 0.2)),
        "hbm_table_bytes": int(min(sizes.hbm_table_bytes, free * 0.4)),
        "count": (2 * len(copy_sizes) + 2 * len(pageable) + 1 + 1 + len(sizes.hbm_row_bytes) + len(uva_points)
                  + sum(n == UVA_RANDOM_ROWS for _, _, n in uva_points) + len(uva_cold_points) + compute_count
                  + mechanism_count),
    }
