"""Physical bounds of every figure calibrate measures, as data: a figure outside its bounds (or whose repeats
spread too widely) is re-measured, and flagged in the profile if it stays out (tools/calibrate/sanity.py).

The bounds are generous on purpose: they catch a measurement gone wrong (a busy machine, a timer that
slept), not a slow machine. Each names the measurement step that produces the figure, the one re-run.
"""

from __future__ import annotations

import dataclasses

# A measurement whose median repeat took more than this many times its fastest was disturbed for most of
# its repeats (one slow outlier does not move a median; this does).
SPREAD_LIMIT = 3.0
# Re-measurements of a step whose figures are out of bounds or too spread, before they are flagged.
MAX_REMEASURES = 2


@dataclasses.dataclass(frozen=True)
class Bound:
    field: str     # table.field in the profile; for a list of points, each point's `point` value is checked
    unit: str
    low: float
    high: float
    why: str
    step: str      # the step that produces it (measure_cpu.cpu_steps, measure_gpu.gpu_steps, measure_ssd)
    point: str = ""

    def holds(self, value: float) -> bool:
        return self.low <= value <= self.high

    def describe(self) -> str:
        return f"{self.low:g}-{self.high:g} {self.unit} ({self.why})"


_GBPS = "GB/s"
BOUNDS: dict[str, Bound] = {b.field: b for b in (
    # host (measure_cpu.py; the engine's step from measure_engine.py)
    Bound("host.dram_gbps", _GBPS, 0.1, 10_000, "a memory copy, read + write", "memcpy"),
    Bound("host.hash_tokens_per_s_per_core", "tokens/s", 1e5, 1e10, "a few multiply-xors a token and head",
          "hashing"),
    Bound("host.dedup_rows_per_s_per_core", "rows/s", 1e4, 1e10, "a sort of 64-bit ids on one core", "dedup"),
    Bound("host.dedup_curve", "rows/s", 1e4, 1e10, "a sort of 64-bit ids on one core", "dedup", "y"),
    Bound("host.cpu_gather_fixed_us", "us", 0.1, 200, "waking the gather's threads; the H100 host takes 2 us",
          "cpu_gather"),
    Bound("host.cpu_gather_max_threads", "threads", 1, 4096, "a thread count of this machine", "cpu_gather"),
    Bound("host.cpu_gather_per_thread", _GBPS, 0.1, 10_000, "one core copying rows", "cpu_gather", "y"),
    Bound("host.critical_hash_fixed_us", "us", 0.1, 20_000, "a few NumPy calls", "critical_path"),
    Bound("host.critical_hash_ns_per_token", "ns/token", 0.01, 1e6, "NumPy arithmetic on one token's n-grams",
          "critical_path"),
    Bound("host.sort_rows_per_s", "ids/s", 1e5, 1e11, "np.sort of 64-bit ids", "critical_path"),
    Bound("host.hash_call_curve", "tokens/s", 1e4, 1e10, "the worker's hash call: a kernel pass and a few NumPy ops",
          "hash_call", "y"),
    Bound("host.sched_slice_us", "us", 10, 1e6, "the OS's time slice: Linux gives 0.7-12 ms", "sched_slice"),
    Bound("host.thread_wake_us", "us", 0, 1e5, "waking a sleeping thread onto an idle core", "thread_wake"),
    Bound("host.engine_step_fixed_us", "us", 0, 1e6, "Python between two decode steps", "engine"),
    Bound("host.engine_step_per_seq_us", "us/sequence", 0, 1e4, "Python bookkeeping per sequence", "engine"),
    # gpu (measure_gpu.py, measure_rates.py, measure_sharing.py)
    Bound("gpu.hbm_gbps", _GBPS, 1, 50_000, "a device copy, read + write; HBM3e is under 10,000", "hbm"),
    Bound("gpu.bf16_tflops", "TFLOP/s", 0.1, 20_000, "a large bf16 GEMM", "compute"),
    Bound("gpu.matmul_efficiency", "fraction", 0.001, 1, "layer GEMMs over the large GEMM", "compute"),
    Bound("gpu.memory_efficiency", "fraction", 0.001, 1, "decode reads over the device copy", "compute"),
    Bound("gpu.kernel_launch_us", "us", 0.1, 1000, "one tiny kernel back to back", "compute"),
    Bound("gpu.hbm_gather", _GBPS, 0.1, 50_000, "index_select of rows in HBM", "hbm", "y"),
    Bound("gpu.matmul_curve", "fraction", 0.0001, 1, "a GEMM's rate over the peak", "matmul_ladder", "y"),
    Bound("gpu.memory_curve", "fraction", 0.0001, 1, "decode attention's read rate over hbm_gbps",
          "memory_ladder", "y"),
    Bound("gpu.graph_launch_us", "us", 0.1, 10_000, "one CUDA graph replay", "graphs"),
    Bound("gpu.graph_kernel_gap_us", "us", 0, 1000, "a kernel inside a CUDA graph", "graphs"),
    Bound("gpu.sm_count", "SMs", 1, 4096, "the device's multiprocessors", "contention"),
    Bound("gpu.uva_rows_per_cta", "rows", 1, 65_536, "the zero-copy kernel's rows a program", "contention"),
    Bound("gpu.uva_interference", "fraction", 0, 1, "the share of the layers' rate a gather costs", "contention"),
    # link (measure_gpu.measure_copies)
    Bound("link.h2d_gbps", _GBPS, 0.1, 10_000, "pinned host to device copies", "copies"),
    Bound("link.d2h_gbps", _GBPS, 0.1, 10_000, "pinned device to host copies", "copies"),
    Bound("link.copy_fixed_us", "us", 0, 1000, "starting one copy", "copies"),
    Bound("link.copy_engines", "engines", 1, 64, "copy engines working at once", "copies"),
    Bound("link.pageable_h2d_gbps", _GBPS, 0.1, 10_000, "pageable host to device copies", "copies"),
    Bound("link.h2d_points", _GBPS, 0.001, 10_000, "one pinned copy, 4 KiB and up", "copies", "y"),
    # uva (measure_gpu.measure_uva)
    Bound("uva.fixed_us", "us", 0, 1000, "starting one zero-copy gather", "uva"),
    Bound("uva.row_ns", "ns", 0, 100_000, "one row's request over the link", "uva"),
    Bound("uva.byte_ps", "ps/byte", 0, 1e5, "a byte over the link (0.01 GB/s or faster)", "uva"),
    Bound("uva.walk_ns", "ns", 0, 1e6, "one page walk", "uva"),
    Bound("uva.cold_line_ns", "ns", 0, 1e5, "one upper-level page-table line read from DRAM", "uva"),
    Bound("uva.max_gbps", _GBPS, 0.1, 10_000, "the zero-copy payload's peak", "uva"),
    Bound("uva.points", "us", 0.1, 1e7, "one zero-copy gather", "uva", "us"),
    # ssd (measure_ssd.py, with --ssd-path); a figure past the high bound means memory served the reads
    Bound("ssd.random_read_iops", "reads/s", 10, 2e7, "4 KiB O_DIRECT reads; PCIe Gen5 drives do about 3 M",
          "ssd", "y"),
    Bound("ssd.random_read_latency_us", "us", 1, 1e6, "one O_DIRECT read; NAND takes 50-100 us at depth 1",
          "ssd", "y"),
    Bound("ssd.seq_read_gbps", _GBPS, 0.01, 100, "large O_DIRECT reads; PCIe Gen5 x4 is about 14", "ssd"),
    Bound("ssd.read_cpu_us", "us", 0.1, 1000, "a preadv system call and the pool's hand-off", "ssd"),
    Bound("ssd.read_call_fixed_us", "us", 0, 1e4, "submitting and collecting one read call's shares", "ssd"),
    Bound("ssd.read_handoff_us", "us", 0, 1e4, "waking a reader thread and taking its result", "ssd"),
    Bound("ssd.store_call_fixed_us", "us", 0, 1e5, "the store's Python around one call's reads", "ssd"),
    Bound("ssd.store_row_ns", "ns/row", 0, 1e6, "looking a row up, listing its block, picking it out", "ssd"),
    Bound("ssd.store_cache_call_us", "us", 0, 1e5, "a DRAM cache's lookup, update and fill calls", "ssd"),
    Bound("ssd.store_cache_row_ns", "ns/row", 0, 1e6, "a DRAM cache's lookup, update and fill of a row", "ssd"),
)}

# Written but not measured by a timing: facts read from the machine, figures copied from the base profile,
# the fit's grid choices (uva.translation_unit_kib, tlb_reach_gib, miss_exponent pick from fixed grids).
NOT_TIMED = frozenset({
    "host.cpu", "host.cpu_cores", "host.memory_gib",
    # measured by `calibrate --device cpu` (a run on this CPU), carried from the base by the other steps
    "host.serve_step_fixed_us", "host.serve_step_per_seq_us", "host.fetch_pickup_us",
    "gpu.name", "gpu.hbm_gib", "gpu.hbm_reserved_gib", "gpu.fp8_tflops", "gpu.kernels_per_layer",
    "gpu.uva_blocks_per_sm", "gpu.l2_mib", "link.kind",
    "uva.translation_unit_kib", "uva.tlb_reach_gib", "uva.miss_exponent", "uva.upper_line_mib",
    "ssd.name", "ssd.capacity_gib", "ssd.read_block_bytes", "ssd.gds",
})

# The steps each side runs, in order (measure_cpu.cpu_steps and measure_gpu.gpu_steps use these names).
CPU_STEPS = ("hashing", "cpu_gather", "dedup", "memcpy", "critical_path", "hash_call", "sched_slice", "thread_wake")
GPU_STEPS = ("copies", "hbm", "compute", "pinning", "uva", "matmul_ladder", "memory_ladder", "graphs",
             "contention", "engine")
SSD_STEPS = ("ssd",)   # with --ssd-path (measure_ssd.ssd_steps)


def fields_of(step: str) -> list[str]:
    """The profile fields a measurement step produces."""
    return [b.field for b in BOUNDS.values() if b.step == step]
