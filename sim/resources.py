"""What concurrent fetches contend for, and the timeline they write.

Copy engines and fetch streams are Resources, staging buffers a Container; the
PCIe H2D direction, host DRAM and the host's CPU cores are fluid pipes
(bandwidth.SharedBandwidth). Cores are handed out as the operating system's
scheduler hands them out (CorePool): a runnable thread takes a free core, first
come first served, and keeps it until it blocks, or until it has run a time
slice (host.sched_slice_us) while others wait; each CPU thread of the model
(CpuThread: a fetch's own thread, and the extra threads of a parallel hash or
gather) is one such thread, so more threads than cores queue instead of
sharing. Their core-seconds still cross the core pool as a pipe (its use). The
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


class CorePool:
    """A host's cores (one NUMA node's, or all of them) as the OS's scheduler hands them to threads."""

    def __init__(self, env: simpy.Environment, cores: float, slice_s: float):
        self.env = env
        self.cpus = simpy.Resource(env, capacity=max(1, int(cores)))
        self.slice_s = slice_s


class CpuThread:
    """One host thread. It takes a core when it has work (waiting, first come first served, while all are
    taken), keeps it across consecutive CPU work, gives it up when it blocks (`wait` on an event not yet
    fired, `release`), and goes to the back of the queue once it has run a whole slice while others wait.
    Linux behaves so: a woken thread does not preempt a running one before the running one's slice ends
    (measured here as the run length of two CPU-bound processes on one core: host.sched_slice_us)."""

    def __init__(self, res: "SharedResources"):
        self.res = res
        self.pool = res.cores
        self.request = None
        self.since = 0.0
        self.owner = None  # the DES process running on it (SharedResources.thread, spawn)

    def _core(self):
        """DES process: hold a core (kept if held and no one waits, or the slice is not used up)."""
        env, pool = self.res.env, self.pool
        if self.request is not None:
            if not pool.cpus.queue or env.now - self.since < pool.slice_s:
                return
            self.release()  # the slice is used up and others wait: to the back of the queue
        self.request = pool.cpus.request()
        yield self.request
        self.since = env.now

    def _slice_left(self) -> float:
        """Seconds of its time slice this thread has left on the core it holds (a sliver at least)."""
        return max(self.pool.slice_s - (self.res.env.now - self.since), 1e-9)

    def release(self) -> None:
        if self.request is not None:
            self.pool.cpus.release(self.request)
            self.request = None

    def wait(self, event: simpy.Event):
        """DES process: block on `event` (the core goes to others unless it has fired already: a request
        granted at once; a timeout is triggered when made, but fires later)."""
        if not event.triggered or isinstance(event, simpy.Timeout):
            self.release()
        yield event

    def run(self, core_seconds: float):
        """DES process: CPU work on this thread alone, a slice at a time (others may run between slices)."""
        remaining = core_seconds
        while remaining > 1e-12:
            yield from self._core()
            piece = min(remaining, self._slice_left())
            yield self.res.transfer(piece, {CPU_CORES: 1.0}, cap=1.0)
            remaining -= piece

    def run_parallel(self, core_seconds: float, threads: int):
        """DES process: CPU work split evenly over this thread and threads - 1 more (a parallel region: the
        others are woken, each takes a core when one is free; this thread then waits for the last of them)."""
        remaining = core_seconds
        others = yield from self._all_cores(threads)
        if others is not None:
            # Every thread got a core at once: they run in step, a slice at a time, as one (fewer events); if
            # others wait when a slice ends, the threads go on one by one as below.
            try:
                while remaining > 1e-12:
                    piece = min(remaining, threads * self._slice_left())
                    yield self.res.transfer(piece, {CPU_CORES: 1.0}, cap=float(threads))
                    remaining -= piece
                    if self.pool.cpus.queue:
                        break
            finally:
                self._give_back(others)
            if remaining <= 1e-12:
                return
        yield from self._split(threads, lambda t: t.run(remaining / threads))

    def move(self, nbytes: float, uses: dict[str, float], rate: float, threads: int):
        """DES process: a parallel CPU copy of `nbytes` over the logical pipes `uses` at `rate` bytes/s on
        `threads` threads (each a share at rate / threads, on its own core while it runs)."""
        others = yield from self._all_cores(threads)
        if others is not None:
            # Every thread got a core at once and they run in step: one transfer for all (the same times as a
            # transfer per thread, with fewer events).
            try:
                yield self.res.transfer(nbytes, {**uses, CPU_CORES: threads / rate}, cap=rate)
            finally:
                self._give_back(others)
            return
        share, per = nbytes / threads, rate / threads
        uses = {**uses, CPU_CORES: 1.0 / per}

        def one(t: CpuThread):
            yield from t._core()
            yield self.res.transfer(share, uses, cap=per)
        yield from self._split(threads, one)

    def _all_cores(self, threads: int):
        """DES process: where a parallel call's helpers are awake and a core is free for each of its threads,
        take them all now (this thread's included) and return the helpers' requests; else None."""
        pool = self.pool.cpus
        free = pool.capacity - pool.count + (1 if self.request is not None else 0)
        if threads < 2 or self.res.helper_wake_s > 0 or pool.queue or free < threads:
            return None
        yield from self._core()
        return [pool.request() for _ in range(threads - 1)]   # granted at once: the cores are free

    def _give_back(self, requests) -> None:
        for r in requests:
            self.pool.cpus.release(r)

    def _split(self, threads: int, work):
        others = []
        wake = self.res.helper_wake_s
        for _ in range(threads - 1):
            def helper(t=CpuThread(self.res)):
                if wake > 0:  # a sleeping helper is woken by the call and joins it late
                    yield self.res.env.timeout(wake)
                yield from work(t)
                t.release()
            others.append(self.res.env.process(helper()))
        yield from work(self)
        if others:
            yield from self.wait(self.res.env.all_of(others))


class SharedResources:
    def __init__(self, env: simpy.Environment, profile: HardwareProfile, placement: PlacementConfig,
                 record_events: bool = False, *, net: SharedBandwidth | None = None,
                 routes: dict[str, dict[str, float]] | None = None):
        """One GPU's resources. net, routes: a server's shared pipes (its core pools among them) and this GPU's
        routes over them (None: one GPU alone, its own pipes and the host's cores). The GPUs whose threads
        run on one core pool share its CorePool (kept on the net)."""
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
        (pool_pipe,) = self.routes[CPU_CORES]
        pools = self.net.core_pools
        if pool_pipe not in pools:
            pools[pool_pipe] = CorePool(env, self.net.capacities[pool_pipe], profile.host.sched_slice_us * 1e-6)
        self.cores: CorePool = pools[pool_pipe]
        # How late the helper threads of a parallel call join it (0 where they spin between calls).
        self.helper_wake_s = profile.host.thread_wake_us * 1e-6 if placement.helper_threads == "sleep" else 0.0
        self._threads: dict = {}
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

    def thread(self) -> CpuThread:
        """The CPU thread of the running DES process (a new one for a process that has none yet)."""
        proc = self.env.active_process
        t = self._threads.get(proc)
        if t is None:
            t = self._threads[proc] = CpuThread(self)
            t.owner = proc
        return t

    def spawn(self, generator, thread: CpuThread | None = None) -> simpy.Process:
        """A DES process on its own CPU thread (or on `thread`, handed over), which gives up its core at the
        end."""
        def body():
            try:
                yield from generator
            finally:
                t = self._threads.pop(proc, None)
                if t is not None and t.owner is proc:  # not handed on to another process
                    t.release()
        proc = self.env.process(body())
        if thread is not None:
            self._threads[proc] = thread
            thread.owner = proc
        return proc

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
