"""What concurrent fetches contend for, and the timeline they write.

Copy engines and fetch streams are Resources, staging buffers a Container; the
PCIe H2D direction, host DRAM and the host's CPU cores are fluid pipes
(bandwidth.SharedBandwidth). Cores are shared as the operating system shares
them: runnable threads get an equal share of the cores (processor sharing), so a
hash or gather asks for core-seconds of work at most `threads` cores at a time,
and a gather's rate falls with the cores it gets as it falls with DRAM. The
GPU's SMs are shared by rate: while zero-copy gather blocks sit resident, the
compute stream runs at `compute_rate` < 1, and `rate_changed` fires when that
rate changes.

Placements name LOGICAL pipes (what a byte does: a CPU thread reads the table,
the GPU reads staging, ...); each GPU's `routes` resolve them to weighted
physical pipes. One GPU alone: the table and staging are host DRAM, so the
physical pipes are pcie_h2d, host_dram and ssd_drive. In a server (sim.server)
every GPU has its own resources over one shared set of pipes and core pools.
"""

from __future__ import annotations

import math

import simpy

from profiles import HardwareProfile
from sim import costs
from sim.bandwidth import SharedBandwidth
from vocab.config import PlacementConfig

# The logical pipes placements name. PCIE_H2D and SSD_DRIVE are also the physical pipes of one GPU alone.
PCIE_H2D = "pcie_h2d"        # the GPU's host-to-device direction (its own link, and a switch uplink if shared)
SSD_DRIVE = "ssd_drive"      # block bytes the GPU's drive delivers (a profile with an [ssd] section)
TABLE_CPU = "table_cpu"      # a CPU thread reads the table in host memory
TABLE_GPU = "table_gpu"      # the GPU reads the table in host memory over its link (zero-copy)
STAGING_CPU = "staging_cpu"  # a CPU thread writes (or reads) pinned staging
STAGING_GPU = "staging_gpu"  # a device's DMA reads or writes pinned staging (a copy engine, the drive)
NVLINK_OUT = "nvlink_out"    # bytes the GPU sends to its peers over NVLink
NVLINK_IN = "nvlink_in"      # bytes it receives from them
CPU_CORES = "cpu_cores"      # core-seconds of host CPU work by this GPU's hash and gather threads
# One GPU alone: the physical pipes (SimResult.pipe_bytes keys).
HOST_DRAM = "host_dram"
# The host's cores as a pipe (capacity: cores; its "bytes": core-seconds). Not a byte pipe: kept out of pipe_bytes.
HOST_CORES = "host_cores"
CORE_PIPE_PREFIX = "cores"   # a server's core pools (sim.topology): cores/n{k}, or cores/all
SINGLE_GPU_ROUTES = {PCIE_H2D: {PCIE_H2D: 1.0}, SSD_DRIVE: {SSD_DRIVE: 1.0}, TABLE_CPU: {HOST_DRAM: 1.0},
                     TABLE_GPU: {HOST_DRAM: 1.0}, STAGING_CPU: {HOST_DRAM: 1.0}, STAGING_GPU: {HOST_DRAM: 1.0},
                     CPU_CORES: {HOST_CORES: 1.0}}


def is_core_pipe(name: str) -> bool:
    """Whether a physical pipe carries core-seconds (a core pool), not bytes."""
    return name == HOST_CORES or name.startswith(CORE_PIPE_PREFIX + "/")


def single_gpu_pipes(profile: HardwareProfile) -> dict[str, float]:
    """Bytes/s of one GPU's physical pipes: its link, host DRAM, and its drive if it has one."""
    pipes = {PCIE_H2D: profile.link.h2d_gbps * 1e9, HOST_DRAM: profile.host.dram_gbps * 1e9,
             HOST_CORES: float(profile.host.cpu_cores)}
    if profile.ssd is not None:
        pipes[SSD_DRIVE] = costs.ssd_drive_bytes_per_s(profile)
    return pipes


def resolve(routes: dict[str, dict[str, float]], uses: dict[str, float]) -> dict[str, float]:
    """Logical pipe weights to physical ones (weights of a physical pipe on several routes add up)."""
    out: dict[str, float] = {}
    for name, w in uses.items():
        for pipe, share in routes[name].items():
            out[pipe] = out.get(pipe, 0.0) + w * share
    return out


class SharedResources:
    def __init__(self, env: simpy.Environment, profile: HardwareProfile, placement: PlacementConfig,
                 record_events: bool = False, *, net: SharedBandwidth | None = None,
                 routes: dict[str, dict[str, float]] | None = None):
        """One GPU's resources. net, routes: a server's shared pipes (its core pools among them) and this GPU's
        routes over them (None: one GPU alone, its own pipes and the host's cores)."""
        self.env = env
        self.profile = profile
        self.copy_engines = simpy.Resource(env, capacity=profile.link.copy_engines)
        self.fetch_streams = simpy.Resource(env, capacity=placement.fetch_streams)
        buffers = placement.staging_buffers * placement.fetch_streams
        self.staging = simpy.Container(env, capacity=buffers, init=buffers)
        self.routes = routes or SINGLE_GPU_ROUTES
        # A shared net counts every GPU's bytes; this GPU's own are counted here as its transfers start.
        self.own_bytes = None if net is None else {}
        self.net = net or SharedBandwidth(env, single_gpu_pipes(profile))
        self._resolved: dict[tuple, dict[str, float]] = {}
        self.sm_share = 0.0        # compute throughput lost to resident gather blocks (summed, at most 1)
        self.rate_changed = env.event()
        self.record_events = record_events
        # (actor, name, start_s, end_s, step, layer), as vocab.records.EVENT_COLUMNS.
        self.events: list[tuple] = []

    def transfer(self, nbytes: float, uses: dict[str, float], cap: float = math.inf) -> simpy.Event:
        """bandwidth.SharedBandwidth.transfer over the logical pipes `uses`, on this GPU's routes."""
        key = tuple(uses.items())
        route = self._resolved.get(key)
        if route is None:
            route = self._resolved[key] = resolve(self.routes, uses)
        if self.own_bytes is not None and nbytes > 0:
            for pipe, w in route.items():
                self.own_bytes[pipe] = self.own_bytes.get(pipe, 0.0) + nbytes * w
        return self.net.transfer(nbytes, route, cap)

    def run_on_cores(self, core_seconds: float, threads: int) -> simpy.Event:
        """`core_seconds` of CPU work on at most `threads` cores at once, sharing the cores with every other
        runnable thread (processor sharing); alone it takes core_seconds / threads."""
        return self.transfer(core_seconds, {CPU_CORES: 1.0}, cap=float(threads))

    def pipe_bytes(self) -> dict[str, float]:
        """Bytes that crossed each physical byte pipe: all of them (one GPU alone), or this GPU's in a server."""
        moved = self.net.bytes_moved if self.own_bytes is None else self.own_bytes
        return {name: v for name, v in moved.items() if not is_core_pipe(name)}

    @property
    def compute_rate(self) -> float:
        return 1.0 - min(1.0, self.sm_share)

    def hold_sms(self, share: float) -> None:
        """A gather's blocks take (share > 0) or give back (share < 0) compute throughput."""
        if share == 0.0:
            return
        self.sm_share = max(0.0, self.sm_share + share)
        if self.sm_share < 1e-12:
            self.sm_share = 0.0
        changed, self.rate_changed = self.rate_changed, self.env.event()
        changed.succeed()

    def log(self, actor: str, name: str, start: float, step: int, layer: int = -1) -> None:
        """An interval on `actor` from `start` to now."""
        if self.record_events:
            self.events.append((actor, name, start, self.env.now, step, layer))
