"""Hardware profiles: the machine described as data.

A profile is a TOML file in this folder (shipped) or anywhere (measured by
`engram-sim calibrate`). It says where its numbers came from (`provenance`),
and for each fitted curve it keeps the raw points the fit came from. The cost
functions that read these numbers live in `sim/costs.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

from vocab.errors import ProfileError
from vocab.schema import build, read_toml, require, require_each, to_dict

# A read call's fixed or per-thread cost beyond this (microseconds) is a measurement gone wrong: 0.1 s.
MAX_READ_CALL_US = 1e5


@dataclass
class Provenance:
    source: Literal["measured", "datasheet"]
    machine: str
    date: str
    method: str = ""
    notes: str = ""


@dataclass
class CurvePoint:
    """One raw (x, y) point behind a fitted curve."""
    x: float
    y: float


@dataclass
class GpuProfile:
    name: str
    hbm_gib: float
    # Memory the run cannot use: CUDA context, allocator slack, workspace.
    hbm_reserved_gib: float
    # Achieved streaming bandwidth of HBM (a large device-to-device copy, read + write).
    hbm_gbps: float
    # Achieved dense bf16 matrix rate on a large GEMM, and the fraction of it
    # that a transformer layer's real shapes reach.
    bf16_tflops: float
    matmul_efficiency: float
    memory_efficiency: float
    kernel_launch_us: float
    # Kernels a transformer layer launches (norms, projections, attention, FFN, adds).
    kernels_per_layer: int
    # Random-row gather from an HBM table: payload GB/s versus row bytes (x = bytes, y = GB/s).
    hbm_gather: list[CurvePoint]
    fp8_tflops: float = 0.0
    # Achieved fraction of bf16_tflops by a GEMM versus its rows (the step's tokens): x = rows, y = fraction.
    # Empty: matmul_efficiency at every size.
    matmul_curve: list[CurvePoint] = field(default_factory=list)
    # Achieved fraction of hbm_gbps by a memory-bound kernel versus the bytes it moves: x = bytes, y = fraction.
    # Empty: memory_efficiency at every size.
    memory_curve: list[CurvePoint] = field(default_factory=list)
    # CUDA graphs (workload.launch = "cuda_graphs"): host cost of one graph launch, and the GPU's gap
    # between kernels inside a graph (in place of kernel_launch_us per kernel).
    graph_launch_us: float = 10.0
    graph_kernel_gap_us: float = 1.0
    # Streaming multiprocessors, and how many thread blocks of the zero-copy gather kernel one SM holds.
    sm_count: int = 132
    uva_blocks_per_sm: int = 2
    # Rows one zero-copy gather block reads (the kernel's block size in rows).
    uva_rows_per_cta: int = 32
    # Share of an SM's throughput that the layers lose while gather blocks sit resident on it, waiting
    # on host reads (0: none; 1: all of it). The compute stream runs at 1 - uva_interference x the
    # share of the GPU's block slots the gather holds.
    uva_interference: float = 0.0
    # L2 cache (MiB, datasheet). Work that streams more than this between two zero-copy gathers evicts the
    # page table's upper levels (uva.cold_line_ns); 0, unknown: treated as always evicted, the conservative
    # reading (a gather never predicted faster than the end-to-end steps measured).
    l2_mib: float = 0.0

    def validate(self, path: str) -> None:
        require_each(self, path, ("hbm_gib", "hbm_gbps", "bf16_tflops", "matmul_efficiency", "memory_efficiency"),
                     ProfileError)
        require_each(self, path, ("l2_mib",), ProfileError, strict=False, fix="use the datasheet's MiB, or 0")
        require(self.hbm_reserved_gib < self.hbm_gib, ProfileError, f"{path}.hbm_reserved_gib",
                "is not below hbm_gib", "reserve less")
        require(self.matmul_efficiency <= 1 and self.memory_efficiency <= 1, ProfileError,
                f"{path}.matmul_efficiency", "efficiencies must be <= 1", "use a fraction")
        _check_curve(self.hbm_gather, f"{path}.hbm_gather")
        for name in ("matmul_curve", "memory_curve"):
            if getattr(self, name):
                _check_curve(getattr(self, name), f"{path}.{name}")
                require(all(p.y <= 1 for p in getattr(self, name)), ProfileError, f"{path}.{name}",
                        "has a fraction above 1", "give achieved fractions of the peak, at most 1")
        require_each(self, path, ("sm_count", "uva_blocks_per_sm", "uva_rows_per_cta"), ProfileError, minimum=1,
                     strict=False, fix="use a whole number >= 1")
        require(0 <= self.uva_interference <= 1, ProfileError, f"{path}.uva_interference",
                f"{self.uva_interference} is outside [0, 1]", "use a fraction")


@dataclass
class LinkProfile:
    """The host link (PCIe or NVLink-C2C), each direction separately."""
    kind: str
    h2d_gbps: float
    d2h_gbps: float
    # Fixed cost of one copy call (launch, DMA setup), paid even for tiny copies.
    copy_fixed_us: float
    copy_engines: int
    pageable_h2d_gbps: float
    # Raw H2D pinned copy points: x = bytes per copy, y = GB/s.
    h2d_points: list[CurvePoint] = field(default_factory=list)

    def validate(self, path: str) -> None:
        require_each(self, path, ("h2d_gbps", "d2h_gbps", "pageable_h2d_gbps"), ProfileError, fix="use GB/s")
        require(self.copy_fixed_us >= 0, ProfileError, f"{path}.copy_fixed_us", "must be >= 0", "use microseconds")
        require(self.copy_engines >= 1, ProfileError, f"{path}.copy_engines", "must be >= 1", "use e.g. 2")


@dataclass
class UvaPoint:
    """One measured zero-copy step fetch (sorted, deduplicated, fresh ids)."""
    table_gib: float
    row_bytes: int
    rows: int
    us: float


@dataclass
class UvaTranslation:
    """The address-translation part of the zero-copy gather model (UvaProfile; fitted by profiles.fit)."""
    fixed_us: float
    row_ns: float
    byte_ps: float
    walk_ns: float
    translation_unit_kib: float
    tlb_reach_gib: float
    miss_exponent: float


@dataclass
class UvaProfile(UvaTranslation):
    """Zero-copy gather (a GPU kernel reading pinned host memory).

    time = fixed + max(rows * row_ns + bytes * byte_ps
                       + units_touched * miss(footprint) * (1 - warm) * walk_ns,
                       bytes / max_gbps)
    Rows are fetched sorted. units_touched is the expected number of distinct
    translation units (translation_unit_kib each) that `rows` uniform rows hit;
    miss(F) = max(0, 1 - (tlb_reach / F) ** miss_exponent) is the chance a
    unit's translation is not cached; warm is the part of the step's units that
    were touched recently and still fit in the TLB's reach. profiles/uva.py
    computes it.

    Where other work runs between two gathers (every simulated step: the
    backbone's layers stream GBs through an L2 of tens of MiB), the walks also
    read the page table's upper levels cold: the body gains
    cold_lines * cold_line_ns, cold_lines being the expected distinct lines of
    upper-level entries (each line mapping upper_line_mib of the table) that
    the step's walks read. Back-to-back gathers (the fitted points) keep them
    in L2 and pay nothing.
    """
    max_gbps: float
    points: list[UvaPoint] = field(default_factory=list)
    # Cost of one cold upper-level page-table line read by a gather's walks (amortised over the walks in flight,
    # like walk_ns); 0: the upper levels never cost anything (the fit's back-to-back case everywhere).
    cold_line_ns: float = 0.0
    # Table footprint mapped by one cache line of upper-level page-table entries (MiB).
    upper_line_mib: float = 16.0

    def validate(self, path: str) -> None:
        require_each(self, path, ("translation_unit_kib", "tlb_reach_gib", "max_gbps", "miss_exponent",
                                  "upper_line_mib"), ProfileError)
        require_each(self, path, ("fixed_us", "row_ns", "byte_ps", "walk_ns", "cold_line_ns"), ProfileError,
                     strict=False, fix="use 0 or more")


@dataclass
class HostProfile:
    cpu: str
    cpu_cores: int
    memory_gib: float
    # Host DRAM bandwidth shared by CPU gathers (read + write) and DMA reads.
    dram_gbps: float
    # N-gram hashing, one Engram layer (all orders and heads), per core.
    hash_tokens_per_s_per_core: float
    # Sorting/deduplicating row ids, per core.
    dedup_rows_per_s_per_core: float
    cpu_gather_fixed_us: float
    # CPU gather into pinned staging, per thread: x = row bytes, y = GB/s of payload.
    cpu_gather_per_thread: list[CurvePoint]
    # Threads beyond this add nothing to gathers (memory-level parallelism runs out).
    cpu_gather_max_threads: int = 16
    # Dedup rows/s by the lookups one call deduplicates (x: lookups, y: rows/s on one core): a sort's cost per row
    # grows with its size (n log n, and caches it outgrows). Empty: dedup_rows_per_s_per_core at any size.
    dedup_curve: list[CurvePoint] = field(default_factory=list)
    # The engine's own work per step before it can launch the step (scheduling, inputs, the previous
    # step's read-back): fixed plus per sequence in the batch. It sits on the step's critical path.
    engine_step_fixed_us: float = 0.0
    engine_step_per_seq_us: float = 0.0
    # The same for a serving engine's step (workload.phase = "serve": forming the step from the requests,
    # packing its chunks, finishing it), where measured on this host; unset: engine_step_*.
    serve_step_fixed_us: float | None = None
    serve_step_per_seq_us: float | None = None
    # Hashing on the critical path (placement.hash_on = "critical_path"): a harness's one host thread
    # hashing in NumPy, per Engram layer: a fixed cost (a pass per order and head) plus a cost per token.
    # Defaults: the NumPy reference (workloads/hashing.py) timed on one core of a 2-core Xeon VM.
    critical_hash_fixed_us: float = 17.0
    critical_hash_ns_per_token: float = 76.0
    # Sorting a step's row ids on one host thread (np.sort; critical path, before a zero-copy gather).
    sort_rows_per_s: float = 2.5e8
    # The fetch worker's whole hash call of one Engram layer (its window put together, the kernel, the valid
    # tokens' rows picked out, the head offsets added), by the step's tokens: x = tokens per call, y = tokens/s
    # on one thread (more threads divide it). Empty: hash_tokens_per_s_per_core, the kernel alone.
    hash_call_curve: list[CurvePoint] = field(default_factory=list)
    # The OS's time slice: how long a running thread keeps its core while another runnable one waits (the
    # run length of two CPU-bound processes on one core). Default: Linux at 250 ticks a second, where a
    # waiting thread gets in at the first tick after the running one's base slice (4 ms; ASSUMED where not
    # measured: calibrate measures it).
    sched_slice_us: float = 4000.0
    # How long after a step's fetch is submitted the runner's fetch worker starts it (its thread woken, and the
    # engine's Python before it lets go of the interpreter's lock). Default 0: not measured (calibrate
    # --device cpu measures it on a CPU run).
    fetch_pickup_us: float = 0.0
    # How late a sleeping helper thread joins a parallel call (placement.helper_threads = "sleep": woken by
    # the call, on an idle core). Default 0: not measured (calibrate measures it: a two-thread gather with
    # OpenMP's passive wait against the same with its spinning one).
    thread_wake_us: float = 0.0

    def validate(self, path: str) -> None:
        require(self.cpu_cores >= 1, ProfileError, f"{path}.cpu_cores", "must be >= 1", "use the core count")
        require_each(self, path, ("memory_gib", "dram_gbps", "hash_tokens_per_s_per_core", "dedup_rows_per_s_per_core"),
                     ProfileError)
        require_each(self, path, ("sched_slice_us",), ProfileError, fix="use the OS's time slice in microseconds")
        require_each(self, path, ("fetch_pickup_us", "thread_wake_us"), ProfileError, strict=False,
                     fix="use microseconds >= 0")
        _check_curve(self.cpu_gather_per_thread, f"{path}.cpu_gather_per_thread")
        for name in ("dedup_curve", "hash_call_curve"):
            if getattr(self, name):
                _check_curve(getattr(self, name), f"{path}.{name}")
        for name in ("serve_step_fixed_us", "serve_step_per_seq_us"):
            value = getattr(self, name)
            require(value is None or (math.isfinite(value) and value >= 0), ProfileError, f"{path}.{name}",
                    f"got {value}", "use microseconds >= 0, or leave it out to use engine_step_*")


@dataclass
class SsdProfile:
    """An NVMe drive holding the table file (the ssd placement), read with O_DIRECT (no page cache).

    Reads are whole blocks of read_block_bytes: a 160 B row costs a 4 KiB read (read amplification).
    random_read_iops gives block reads per second against the reads in flight (x = queue depth: the
    submitting threads times each one's depth); the latency of one read at that depth follows from
    Little's law (depth / IOPS), and random_read_latency_us keeps the measured latencies beside it.
    Each read also costs its submitting host thread read_cpu_us (the system call and completion, with the
    reader threads all in flight: where the cores bind the rate, at most cores / read_cpu_us reads a second).
    A read call (one layer's fetch: its blocks split into contiguous shares, one per reader thread) also
    costs read_call_fixed_us once, and read_handoff_us for each thread it hands a share to: what a call of
    few reads pays that the IOPS curve, measured with many reads a call, amortises.
    """
    name: str
    # Space the table file may take on the drive.
    capacity_gib: float
    # 4 KiB random reads: x = reads in flight, y = reads per second.
    random_read_iops: list[CurvePoint]
    # Large sequential reads, GB/s: the drive's ceiling on bytes, whatever the block size.
    seq_read_gbps: float
    # Microseconds a read call costs whatever its size (submission and collection of its shares), and
    # microseconds per reader thread handed a share (waking it, its result); no default: every drive says.
    read_call_fixed_us: float
    read_handoff_us: float
    read_block_bytes: int = 4096
    # Measured mean latency of one random read (x = reads in flight, y = microseconds); informative.
    random_read_latency_us: list[CurvePoint] = field(default_factory=list)
    read_cpu_us: float = 0.0
    # The store's own CPU work per call on the fetch thread, beside its reads and copies (the DRAM cache's
    # lookups and update, the block list, the rows picked out of their blocks): fixed + per unique row, and
    # with a DRAM cache more a call (its lookup, update and fill calls) and more a row. Default 0: not
    # measured (calibrate --ssd-path measures them).
    store_call_fixed_us: float = 0.0
    store_row_ns: float = 0.0
    store_cache_call_us: float = 0.0
    store_cache_row_ns: float = 0.0
    # GPUDirect Storage: reads land straight in HBM (placement.ssd_reads = "gds").
    gds: bool = False

    def validate(self, path: str) -> None:
        require_each(self, path, ("capacity_gib", "seq_read_gbps"), ProfileError)
        require(self.read_block_bytes >= 512 and self.read_block_bytes & (self.read_block_bytes - 1) == 0,
                ProfileError, f"{path}.read_block_bytes", f"{self.read_block_bytes} is not a power of two >= 512",
                "use the drive's logical block size, e.g. 4096")
        _check_curve(self.random_read_iops, f"{path}.random_read_iops")
        if self.random_read_latency_us:
            _check_curve(self.random_read_latency_us, f"{path}.random_read_latency_us")
        require(self.read_cpu_us >= 0, ProfileError, f"{path}.read_cpu_us", "must be >= 0", "use microseconds")
        require_each(self, path, ("store_call_fixed_us", "store_row_ns", "store_cache_call_us", "store_cache_row_ns"),
                     ProfileError,
                     strict=False, fix="use 0 or more (calibrate --ssd-path measures them)")
        for name in ("read_call_fixed_us", "read_handoff_us"):
            value = getattr(self, name)
            require(math.isfinite(value) and 0 <= value <= MAX_READ_CALL_US, ProfileError, f"{path}.{name}",
                    f"{value:g} is not within 0-{MAX_READ_CALL_US:g}", "give microseconds (calibrate --ssd-path "
                    "measures them)")


@dataclass
class NumaNode:
    """One socket's memory and cores, and the GPUs whose PCIe root ports it owns."""
    cores: int
    dram_gbps: float
    memory_gib: float
    gpus: list[int]

    def validate(self, path: str) -> None:
        require(self.cores >= 1, ProfileError, f"{path}.cores", "must be >= 1", "use the node's core count")
        require_each(self, path, ("dram_gbps", "memory_gib"), ProfileError)


@dataclass
class PcieSwitch:
    """GPUs behind one PCIe switch share its uplink to the host (their own x16 links are [link])."""
    gpus: list[int]
    uplink_gbps: float

    def validate(self, path: str) -> None:
        require_each(self, path, ("uplink_gbps",), ProfileError, fix="use GB/s, host to device")


@dataclass
class ServerProfile:
    """A server of several GPUs: which GPU hangs off which NUMA node and PCIe switch, and what links them.

    [gpu], [link], [uva] and [ssd] describe ONE GPU, its own x16 link and its own drive; [host] the whole
    host (its cpu_cores, memory_gib and dram_gbps are the sums over `numa`)."""
    gpus: int
    numa: list[NumaNode]
    # Absent: every GPU has its link to the host to itself.
    switches: list[PcieSwitch] = field(default_factory=list)
    # NVLink (NVSwitch) bandwidth per GPU per direction, GB/s (0: no NVLink), and one collective's fixed cost.
    nvlink_gbps: float = 0.0
    nvlink_latency_us: float = 0.0
    # The socket-to-socket link (UPI), per direction, GB/s; needed with more than one NUMA node.
    cross_socket_gbps: float = 0.0

    def validate(self, path: str) -> None:
        require(self.gpus >= 1, ProfileError, f"{path}.gpus", "must be >= 1", "use the server's GPU count")
        require(len(self.numa) >= 1, ProfileError, f"{path}.numa", "has no node", "give at least one NUMA node")
        _check_cover([n.gpus for n in self.numa], self.gpus, f"{path}.numa")
        if self.switches:
            _check_cover([s.gpus for s in self.switches], self.gpus, f"{path}.switches")
        require_each(self, path, ("nvlink_gbps", "nvlink_latency_us", "cross_socket_gbps"), ProfileError,
                     strict=False, fix="use 0 or more")
        require(len(self.numa) == 1 or self.cross_socket_gbps > 0, ProfileError, f"{path}.cross_socket_gbps",
                f"must be > 0 with {len(self.numa)} NUMA nodes", "give the socket link's GB/s per direction")

    def node_of(self, gpu: int) -> int:
        return next(k for k, n in enumerate(self.numa) if gpu in n.gpus)

    def switch_of(self, gpu: int) -> PcieSwitch | None:
        return next((s for s in self.switches if gpu in s.gpus), None)


@dataclass
class HardwareProfile:
    name: str
    description: str
    provenance: Provenance
    gpu: GpuProfile
    link: LinkProfile
    uva: UvaProfile
    host: HostProfile
    # The drive for the ssd placement (None: the profile describes none; ssd runs are refused).
    ssd: SsdProfile | None = None
    # Several GPUs sharing the host (None: one GPU whose host is [host]).
    server: ServerProfile | None = None

    def validate(self, path: str) -> None:
        if self.server is None:
            return
        h = self.host
        for name, field_name in (("cores", "cpu_cores"), ("memory_gib", "memory_gib"), ("dram_gbps", "dram_gbps")):
            total = sum(getattr(n, name) for n in self.server.numa)
            require(math.isclose(total, getattr(h, field_name), rel_tol=1e-9), ProfileError,
                    f"host.{field_name}", f"is {getattr(h, field_name):g} but server.numa's {name} sum to {total:g}",
                    "make [host] describe the whole host: the sums over server.numa")

    def to_dict(self) -> dict:
        return to_dict(self)


def server_topology(profile: HardwareProfile) -> ServerProfile:
    """The profile's [server], or the one-GPU server it describes without one: one NUMA node that is [host]."""
    if profile.server is not None:
        return profile.server
    h = profile.host
    return ServerProfile(gpus=1, numa=[NumaNode(h.cpu_cores, h.dram_gbps, h.memory_gib, [0])])


def _check_curve(points: list[CurvePoint], path: str) -> None:
    require(len(points) >= 1, ProfileError, path, "has no points", "give at least one {x, y} point")
    xs = [p.x for p in points]
    require(xs == sorted(xs) and len(set(xs)) == len(xs), ProfileError, path,
            "x values are not strictly increasing", "sort the points by x")
    require(all(p.y > 0 for p in points), ProfileError, path, "has a y <= 0", "use positive rates")


def _check_cover(groups: list[list[int]], gpus: int, path: str) -> None:
    """The groups' GPU ids name each of 0..gpus-1 exactly once."""
    ids = sorted(g for group in groups for g in group)
    require(ids == list(range(gpus)), ProfileError, f"{path}[].gpus",
            f"list GPUs {ids}, not each of 0..{gpus - 1} exactly once", "put every GPU in exactly one of them")


def shipped_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("profiles").iterdir() if p.name.endswith(".toml"))


def shipped_path(name: str) -> Path:
    return Path(str(resources.files("profiles").joinpath(f"{name}.toml")))


def load_profile(name_or_path: str | Path) -> HardwareProfile:
    """A shipped profile by name, or any profile TOML by path."""
    p = Path(name_or_path)
    if not p.is_file():
        if str(name_or_path) not in shipped_names():
            raise ProfileError("profile", f"no profile named or at {str(name_or_path)!r}",
                               f"use a path or one of: {', '.join(shipped_names())}")
        p = shipped_path(str(name_or_path))
    data = read_toml(p, ProfileError)
    return build(HardwareProfile, data, "", ProfileError)
