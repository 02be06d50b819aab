"""What each placement means to the simulator: one class per vocab.placements name.

A placement says
- which of a step's rows cross the host link (`cache_hits`, `host_rows`);
- how one Engram layer's rows reach HBM in the DES (`fetch_layer`, a SimPy
  generator on the SharedResources that concurrent fetches contend for);
- how long that takes with nothing else running (`fetch_alone`, the closed form);
- what memory it needs (`memory_needs`, fed to vocab.memory.MemoryBudget).

    none       the backbone alone: no Engram layers, nothing hashed or fetched;
    hbm        row ids uploaded, rows gathered from HBM by the Engram layer;
    host_dma   CPU threads gather rows into pinned staging chunks, each chunk
               copied to HBM by a copy engine (double-buffered staging);
    host_uva   a GPU kernel reads the rows from pinned host memory, limited by
               address translation (costs.uva_gather_time) and the link;
    hbm_cache  hits come from HBM, misses through a HostDMA or HostUVA path;
    ssd        the table in a file on a drive: HBM cache, DRAM cache, then block
               reads into staging (or HBM, with GPUDirect Storage).

A new placement is one new class here (and its name in vocab.placements).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from profiles import HardwareProfile
from sim import costs
from sim.resources import (
    PCIE_H2D,
    SSD_DRIVE,
    STAGING_CPU,
    STAGING_GPU,
    TABLE_CPU,
    TABLE_GPU,
    SharedResources,
)
from vocab import placements as names
from vocab.config import RunConfig
from vocab.errors import ConfigError, ProfileError
from vocab.geometry import ssd_file_bytes
from vocab.memory import (
    cache_bytes,
    cache_rows_per_layer,
    dram_cache_bytes,
    dram_cache_rows_per_layer,
    landed_bytes,
)
from vocab.records import CPU_GATHER, H2D_LINK, SSD_READ, UVA_GATHER

ROW_ID_BYTES = 8  # an int64 row id


class MemoryNeeds(NamedTuple):
    """The placement's share of vocab.memory.MemoryBudget."""
    table_hbm_bytes: int      # the table (hbm) or the cache (hbm_cache)
    staging_hbm_bytes: int    # rows landed for the current and prefetched steps
    table_host_bytes: int     # the table (host_dma, host_uva, hbm_cache) or ssd's DRAM cache
    table_ssd_bytes: int = 0  # ssd: the table file on the drive


class Placement:
    """Base: an Engram placement over the config's Engram layers, in layer order."""
    kind: str
    holds_table = True  # the layers run the Engram module on rows of a table
    sorts_row_ids = False  # a harness sorts the ids it fetches (a zero-copy gather reads them in order)

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        e = cfg.engram
        # Indices into cfg.engram.layer_ids (and the trace's per-layer columns), in layer order.
        self.layer_order = np.argsort(e.layer_ids) if self.holds_table else np.zeros(0, dtype=np.int64)
        self.layer_ids = [e.layer_ids[i] for i in self.layer_order]
        self.footprints = [e.layer_table_bytes(layer) for layer in self.layer_ids]

    # -- rows ----------------------------------------------------------------------------------
    def trace_cache_rows(self) -> int | None:
        """Rows per layer of the HBM cache the token trace must replay (None: no cache)."""
        return None

    def trace_dram_rows(self) -> int | None:
        """Rows per layer of a DRAM cache behind the HBM cache that the trace must replay (None: none)."""
        return None

    def check_profile(self, profile: HardwareProfile) -> None:
        """ProfileError if the profile lacks what this placement needs."""

    def dram_hits(self, trace_dram: np.ndarray, unique: np.ndarray, hits: np.ndarray) -> np.ndarray:
        """Of a step's rows past the HBM cache, those a DRAM cache serves (ssd)."""
        return np.zeros(len(unique), dtype=np.int64)

    def drive_reads(self, profile: HardwareProfile, host: np.ndarray, dram: np.ndarray) -> np.ndarray:
        """Block reads from the drive per layer (ssd)."""
        return np.zeros(len(host), dtype=np.int64)

    def cache_hits(self, trace_hits: np.ndarray, unique: np.ndarray) -> np.ndarray:
        """Of a step's unique rows per layer, those already in HBM's cache."""
        return np.zeros(len(unique), dtype=np.int64)

    def host_rows(self, unique: np.ndarray, hits: np.ndarray) -> np.ndarray:
        """Of a step's unique rows per layer, those that cross the host link."""
        raise NotImplementedError

    # -- time ----------------------------------------------------------------------------------
    def fetch_layer(self, res: SharedResources, step: int, k: int, plan):
        """DES process: Engram layer k's rows of `plan` (a sim.plan.StepPlan) reach HBM."""
        raise NotImplementedError

    def fetch_alone(self, profile: HardwareProfile, plan, k: int) -> float:
        """Seconds for Engram layer k's rows to reach HBM with nothing else running."""
        raise NotImplementedError

    def sm_hold(self, profile: HardwareProfile, plan, k: int) -> tuple[float, float]:
        """(share of the compute stream's throughput the fetch takes, seconds at its end that it lasts)."""
        return 0.0, 0.0

    # -- memory --------------------------------------------------------------------------------
    def memory_needs(self, max_unique_rows: int, profile: HardwareProfile | None = None) -> MemoryNeeds:
        raise NotImplementedError

    def _landed_bytes(self, max_unique_rows: int) -> int:
        return landed_bytes(self.cfg, max_unique_rows)

    # -- the row-id upload every Engram placement makes when no table rows travel ------------------
    def _send_row_ids(self, res: SharedResources, step: int, k: int, plan):
        # Only the row ids go up (a small copy); the Engram layer gathers from HBM.
        t = res.env.now
        with res.copy_engines.request() as engine:
            yield engine
            yield res.env.timeout(res.profile.link.copy_fixed_us * 1e-6)
            yield res.transfer(plan.lookups[k] * ROW_ID_BYTES, {PCIE_H2D: 1.0})
        res.log(H2D_LINK, "row ids", t, step, self.layer_ids[k])

    def _row_ids_alone(self, profile: HardwareProfile, plan, k: int) -> float:
        return costs.copy_time(profile, plan.lookups[k] * ROW_ID_BYTES)


class NoEngram(Placement):
    """The backbone alone (the paper's baseline): no Engram module, table, hashing or fetch."""
    kind = names.NONE
    holds_table = False

    def host_rows(self, unique, hits):
        return np.zeros(len(unique), dtype=np.int64)

    def fetch_layer(self, res, step, k, plan):
        raise RuntimeError("placement none has no Engram layer to fetch")

    def fetch_alone(self, profile, plan, k):
        raise RuntimeError("placement none has no Engram layer to fetch")

    def memory_needs(self, max_unique_rows, profile=None):
        return MemoryNeeds(0, 0, 0)


class HBM(Placement):
    """The table in GPU memory; only row ids travel."""
    kind = names.HBM

    def host_rows(self, unique, hits):
        return np.zeros(len(unique), dtype=np.int64)

    def fetch_layer(self, res, step, k, plan):
        yield from self._send_row_ids(res, step, k, plan)

    def fetch_alone(self, profile, plan, k):
        return self._row_ids_alone(profile, plan, k)

    def memory_needs(self, max_unique_rows, profile=None):
        return MemoryNeeds(self.cfg.engram.total_table_bytes, 0, 0)


class OverHostLink(Placement):
    """Base of the placements whose rows (some or all) come from the host table over `path`."""

    @property
    def path(self) -> HostDMA | HostUVA:
        return self

    def host_rows(self, unique, hits):
        return unique

    def fetch_layer(self, res, step, k, plan):
        rows = int(plan.host_rows[k])
        if rows == 0:
            yield from self._send_row_ids(res, step, k, plan)
        else:
            yield from self.path.fetch_rows(res, step, k, rows, plan)

    def fetch_alone(self, profile, plan, k):
        rows = int(plan.host_rows[k])
        if rows == 0:
            return self._row_ids_alone(profile, plan, k)
        return self.path.rows_alone(profile, plan, k, rows)

    def sm_hold(self, profile, plan, k) -> tuple[float, float]:
        """(share of the compute stream's throughput lost, seconds at the end of the fetch it lasts)."""
        rows = int(plan.host_rows[k])
        return self.path.rows_sm_hold(profile, plan, k, rows) if rows else (0.0, 0.0)

    @property
    def sorts_row_ids(self) -> bool:
        return self.path is not self and self.path.sorts_row_ids

    def memory_needs(self, max_unique_rows, profile=None):
        return MemoryNeeds(0, self._landed_bytes(max_unique_rows), self.cfg.engram.total_table_bytes)


class HostDMA(OverHostLink):
    """CPU threads gather rows into pinned staging chunks; copy engines move the chunks."""
    kind = names.HOST_DMA

    def _chunk_bytes(self) -> int:
        return max(self.cfg.engram.row_bytes, int(self.cfg.placement.staging_chunk_mib * (1 << 20)))

    def _gather_threads(self, profile: HardwareProfile) -> int:
        return min(self.cfg.placement.gather_threads, profile.host.cpu_cores)

    def _gather_rate(self, profile: HardwareProfile) -> float:
        return costs.cpu_gather_rate(profile, self.cfg.engram.row_bytes, self._gather_threads(profile))

    def fetch_rows(self, res: SharedResources, step: int, k: int, rows: int, plan):
        chunk_bytes = self._chunk_bytes()
        total = rows * self.cfg.engram.row_bytes
        threads = self._gather_threads(res.profile)
        rate = self._gather_rate(res.profile)
        layer = self.layer_ids[k]
        thread = res.thread()
        copies = []
        for offset in range(0, total, chunk_bytes):
            nbytes = min(chunk_bytes, total - offset)
            yield from thread.wait(res.staging.get(1))
            t = res.env.now
            yield from thread.run(res.profile.host.cpu_gather_fixed_us * 1e-6)
            # A gather reads the table and writes staging (two DRAM bytes per payload byte) on `threads`
            # threads, each on its own core while it runs (threads beyond the memory-level parallelism add no
            # rate).
            yield from thread.move(nbytes, {TABLE_CPU: 1.0, STAGING_CPU: 1.0}, rate, threads)
            res.log(CPU_GATHER, f"gather L{layer}", t, step, layer)
            copies.append(res.env.process(self._copy_chunk(res, step, layer, nbytes)))
        yield from thread.wait(res.env.all_of(copies))

    def gather_rows(self, res: SharedResources, step: int, k: int, rows: int, source: str = TABLE_CPU):
        """DES process: one CPU gather of `rows` rows from `source` into a store's own row staging (no chunks,
        no copy: the SSD store copies its DRAM-cache hits and drive rows together)."""
        threads = self._gather_threads(res.profile)
        layer = self.layer_ids[k]
        thread = res.thread()
        t = res.env.now
        yield from thread.run(res.profile.host.cpu_gather_fixed_us * 1e-6)
        uses = {source: 1.0}
        uses[STAGING_CPU] = uses.get(STAGING_CPU, 0.0) + 1.0  # reads `source`, writes the row staging
        yield from thread.move(rows * self.cfg.engram.row_bytes, uses, self._gather_rate(res.profile), threads)
        res.log(CPU_GATHER, f"gather L{layer}", t, step, layer)

    @staticmethod
    def copy_rows(res: SharedResources, step: int, layer: int, nbytes: int):
        """DES process: one copy of `nbytes` of staged rows to HBM (its fixed cost once)."""
        with res.copy_engines.request() as engine:
            yield engine
            t = res.env.now
            yield res.env.timeout(res.profile.link.copy_fixed_us * 1e-6)
            yield res.transfer(nbytes, {PCIE_H2D: 1.0, STAGING_GPU: 1.0})
            res.log(H2D_LINK, f"copy L{layer}", t, step, layer)

    @staticmethod
    def _copy_chunk(res: SharedResources, step: int, layer: int, nbytes: int):
        """DES process: a staging chunk's copy, then the chunk is free for the next gather."""
        yield from HostDMA.copy_rows(res, step, layer, nbytes)
        yield res.staging.put(1)

    def rows_sm_hold(self, profile, plan, k, rows):
        return 0.0, 0.0  # copy engines hold no SMs

    def gather_alone(self, profile: HardwareProfile, nbytes: int) -> float:
        """Seconds of the CPU gather of `nbytes` of rows into staging (one call), nothing else running."""
        return profile.host.cpu_gather_fixed_us * 1e-6 + nbytes / self._gather_rate(profile)

    def rows_alone(self, profile: HardwareProfile, plan, k: int, rows: int) -> float:
        # A two-stage pipeline (CPU gather, then copy) over staging chunks,
        # with at most `staging_buffers` chunks between gather start and copy end.
        buffers = self.cfg.placement.staging_buffers
        chunk = self._chunk_bytes()
        total = rows * self.cfg.engram.row_bytes
        sizes = [min(chunk, total - o) for o in range(0, total, chunk)]
        gather_end, copy_end = [], []
        for i, b in enumerate(sizes):
            start = max(gather_end[-1] if gather_end else 0.0,
                        copy_end[i - buffers] if i >= buffers else 0.0)
            gather_end.append(start + self.gather_alone(profile, b))
            copy_end.append(max(gather_end[-1], copy_end[-1] if copy_end else 0.0) + costs.copy_time(profile, b))
        return copy_end[-1]


class HostUVA(OverHostLink):
    """A GPU kernel reads pinned host memory directly (zero-copy); its blocks hold SMs while they wait."""
    kind = names.HOST_UVA
    sorts_row_ids = True

    def __init__(self, cfg: RunConfig):
        super().__init__(cfg)
        # What the layers stream through L2 between two gathers of a table: more than the L2, and the walks
        # read the page table's upper levels cold (costs.upper_levels_cold).
        self.streamed_between = costs.streamed_between_gathers(cfg)

    def _gather_time(self, profile: HardwareProfile, plan, k: int, rows: int) -> tuple[float, float]:
        """(fixed, body) seconds of the zero-copy gather of `rows` of layer k's step rows."""
        footprint = self.footprints[k]
        # Rows reused from the previous step, and distinct rows, in proportion among the rows gathered.
        scale = rows / max(int(plan.unique_rows[k]), 1)
        reused = int(plan.reused_rows[k] * scale)
        distinct = int(plan.distinct_rows[k] * scale)
        warm = costs.uva_warm_fraction(profile, distinct, reused, footprint)
        return costs.uva_gather_time(profile, rows, self.cfg.engram.row_bytes, footprint, warm, distinct,
                                     self.cfg.placement.uva_ctas,
                                     costs.upper_levels_cold(profile, self.streamed_between))

    def fetch_rows(self, res: SharedResources, step: int, k: int, rows: int, plan):
        # The kernel reads the row ids from GPU memory: they go up first.
        yield from self._send_row_ids(res, step, k, plan)
        fixed, body = self._gather_time(res.profile, plan, k, rows)
        share, _ = self.rows_sm_hold(res.profile, plan, k, rows)
        nbytes = rows * self.cfg.engram.row_bytes
        t = res.env.now
        res.hold_sms(share)
        yield res.env.timeout(fixed)
        # The kernel alone would move nbytes in `body`; sharing the link can only slow it.
        yield res.transfer(nbytes, {PCIE_H2D: 1.0, TABLE_GPU: 1.0}, cap=nbytes / body)
        res.hold_sms(-share)
        res.log(UVA_GATHER, f"gather L{self.layer_ids[k]}", t, step, self.layer_ids[k])

    def rows_sm_hold(self, profile, plan, k, rows):
        fixed, body = self._gather_time(profile, plan, k, rows)
        return costs.uva_sm_share(profile, rows, self.cfg.placement.uva_ctas), fixed + body

    def rows_alone(self, profile: HardwareProfile, plan, k: int, rows: int) -> float:
        fixed, body = self._gather_time(profile, plan, k, rows)
        return self._row_ids_alone(profile, plan, k) + fixed + body


class HBMCache(OverHostLink):
    """Hot rows in an HBM cache; the misses cross the link through `miss_path`'s path."""
    kind = names.HBM_CACHE

    def __init__(self, cfg: RunConfig):
        super().__init__(cfg)
        self.miss = _HOST_PATHS[cfg.placement.misses_via](cfg)

    @property
    def path(self):
        return self.miss

    def trace_cache_rows(self):
        return cache_rows_per_layer(self.cfg)

    def cache_hits(self, trace_hits, unique):
        return np.minimum(trace_hits, unique)

    def host_rows(self, unique, hits):
        return unique - hits

    def memory_needs(self, max_unique_rows, profile=None):
        return MemoryNeeds(cache_bytes(self.cfg), self._landed_bytes(max_unique_rows),
                           self.cfg.engram.total_table_bytes)


class SSD(OverHostLink):
    """The table in a file on an NVMe drive. An optional HBM cache serves hot rows; an optional DRAM cache
    serves warm ones through `misses_via`'s host path; the rest are read from the drive, whole blocks at a
    time, by host threads into pinned staging and copied like host_dma's chunks (or, with GPUDirect Storage,
    read straight into HBM). The DRAM-cache hits and the drive reads of one layer run side by side."""
    kind = names.SSD

    def __init__(self, cfg: RunConfig):
        super().__init__(cfg)
        self.miss = _HOST_PATHS[cfg.placement.misses_via](cfg)  # DRAM-cache hits
        self.staged = HostDMA(cfg)  # drive rows, from the read blocks in staging to HBM
        self.layer_rows = [cfg.engram.layer_rows(layer) for layer in self.layer_ids]

    @property
    def path(self):
        return self.miss

    def check_profile(self, profile):
        if profile.ssd is None:
            raise ProfileError(f"{profile.name}: ssd", "the profile describes no drive (no [ssd] section)",
                               "add one, or measure a drive: engram-sim calibrate --cpu-only --ssd-path FOLDER")
        if self.cfg.placement.ssd_reads == "gds" and not profile.ssd.gds:
            raise ProfileError(f"{profile.name}: ssd.gds", "is false: this machine has no GPUDirect Storage",
                               "use placement.ssd_reads = 'staging', or a profile whose drive has gds = true")

    def trace_cache_rows(self):
        return cache_rows_per_layer(self.cfg) or None

    def trace_dram_rows(self):
        return dram_cache_rows_per_layer(self.cfg) or None

    def cache_hits(self, trace_hits, unique):
        if not self.trace_cache_rows():  # no HBM cache: whatever the trace replayed is another placement's
            return np.zeros(len(unique), dtype=np.int64)
        return np.minimum(trace_hits, unique)

    def host_rows(self, unique, hits):
        return unique - hits

    def dram_hits(self, trace_dram, unique, hits):
        return np.minimum(trace_dram, unique - hits)

    def drive_reads(self, profile, host, dram):
        block = profile.ssd.read_block_bytes
        return np.array([costs.ssd_reads_for_rows(int(h - d), rows, self.cfg.engram.row_bytes, block)
                         for h, d, rows in zip(host, dram, self.layer_rows)], dtype=np.int64)

    def _tiers(self, plan, k: int) -> tuple[int, int, int]:
        """(DRAM-cache rows, drive rows, block reads) of layer k's step."""
        dram = int(plan.dram_hits[k])
        return dram, int(plan.host_rows[k]) - dram, int(plan.ssd_reads[k])

    @property
    def _one_copy(self) -> bool:
        """DRAM-cache hits gathered by the CPU land in the store's row staging beside the drive rows, and all
        of them go to HBM in one copy (real_runs/ssd_store.py); zero-copy hits are read by the GPU apart."""
        return isinstance(self.miss, HostDMA)

    def fetch_layer(self, res, step, k, plan):
        dram, drive, reads = self._tiers(plan, k)
        if dram + drive == 0:
            yield from self._send_row_ids(res, step, k, plan)
            return
        # The store's own work on the fetch thread first (cache lookups, the block list), then its tiers.
        yield from res.thread().run(self.store_time(res.profile, dram + drive))
        parts = []
        if dram:
            parts.append(res.spawn(self.miss.gather_rows(res, step, k, dram) if self._one_copy
                                   else self.miss.fetch_rows(res, step, k, dram, plan)))
        if drive:
            parts.append(res.spawn(self._from_drive(res, step, k, drive, reads)))
        yield from res.thread().wait(res.env.all_of(parts))
        if self._one_copy and self.cfg.placement.ssd_reads != "gds":
            yield from res.thread().wait(res.env.process(
                HostDMA.copy_rows(res, step, self.layer_ids[k], (dram + drive) * self.cfg.engram.row_bytes)))
        elif self._one_copy and dram:  # GDS: the drive rows are in HBM; the DRAM hits are copied alone
            yield from res.thread().wait(res.env.process(
                HostDMA.copy_rows(res, step, self.layer_ids[k], dram * self.cfg.engram.row_bytes)))

    def store_time(self, profile: HardwareProfile, rows: int) -> float:
        """Seconds of the store's own CPU work for a call of `rows` unique rows (ssd.store_*)."""
        d = profile.ssd
        if dram_cache_rows_per_layer(self.cfg) > 0:
            return (d.store_call_fixed_us + d.store_cache_call_us) * 1e-6 + rows * (d.store_row_ns + d.store_cache_row_ns) * 1e-9
        return d.store_call_fixed_us * 1e-6 + rows * d.store_row_ns * 1e-9

    def _read_settings(self, profile: HardwareProfile, reads: int) -> tuple[int, float]:
        p = self.cfg.placement
        depth = costs.ssd_depth(p.ssd_threads, p.ssd_queue_depth, reads)
        return depth, costs.ssd_read_rate(profile, depth, p.ssd_threads)

    def _from_drive(self, res: SharedResources, step: int, k: int, rows: int, reads: int):
        block = res.profile.ssd.read_block_bytes
        depth, rate = self._read_settings(res.profile, reads)
        gds = self.cfg.placement.ssd_reads == "gds"
        layer = self.layer_ids[k]
        t = res.env.now
        # The call hands its blocks to the reader threads; the first round of reads in flight takes one read's
        # latency at that depth (Little's law) ...
        yield res.env.timeout(costs.ssd_call_time(res.profile, depth) + depth / rate)
        # ... the rest stream at the depth's rate, sharing the drive with every other read in flight. Blocks land
        # in pinned staging (host DRAM), or in HBM across the link with GPUDirect Storage.
        pipes = {SSD_DRIVE: 1.0, PCIE_H2D: 1.0} if gds else {SSD_DRIVE: 1.0, STAGING_GPU: 1.0}
        yield res.transfer((reads - depth) * block, pipes, cap=rate * block)
        res.log(SSD_READ, f"read L{layer}", t, step, layer)
        if gds:
            return
        if self._one_copy:  # the rows picked out of their blocks into the row staging; fetch_layer copies
            yield from self.staged.gather_rows(res, step, k, rows, STAGING_CPU)
        else:  # the rows, picked out of their blocks, go to HBM as host_dma's chunks do
            yield from self.staged.fetch_rows(res, step, k, rows, None)

    def fetch_alone(self, profile, plan, k):
        dram, drive, reads = self._tiers(plan, k)
        if dram + drive == 0:
            return self._row_ids_alone(profile, plan, k)
        own = self.store_time(profile, dram + drive)
        row_bytes = self.cfg.engram.row_bytes
        p = self.cfg.placement
        gds = p.ssd_reads == "gds"
        if self._one_copy:
            from_dram = self.miss.gather_alone(profile, dram * row_bytes) if dram else 0.0
        else:
            from_dram = self.miss.rows_alone(profile, plan, k, dram) if dram else 0.0
        from_drive = 0.0
        if drive:
            from_drive = costs.ssd_read_time(profile, reads, p.ssd_threads, p.ssd_queue_depth)
            if not gds:
                from_drive += (self.staged.gather_alone(profile, drive * row_bytes) if self._one_copy
                               else self.staged.rows_alone(profile, plan, k, drive))
        copied = (dram + (0 if gds else drive)) if self._one_copy else 0
        return own + max(from_dram, from_drive) + (costs.copy_time(profile, copied * row_bytes) if copied else 0.0)

    def sm_hold(self, profile, plan, k):
        dram = int(plan.dram_hits[k])  # only a zero-copy gather of the DRAM-cache hits holds SMs
        return self.miss.rows_sm_hold(profile, plan, k, dram) if dram else (0.0, 0.0)

    def memory_needs(self, max_unique_rows, profile=None):
        e = self.cfg.engram
        self.check_profile(profile)  # the file's size depends on the drive's read block
        block = profile.ssd.read_block_bytes
        file_bytes = sum(ssd_file_bytes(rows, e.row_bytes, block) for rows in self.layer_rows)
        # Host memory holds the DRAM cache and the staging the drive reads land in.
        staging = self.cfg.placement.staging_buffers * self.staged._chunk_bytes()
        return MemoryNeeds(cache_bytes(self.cfg), self._landed_bytes(max_unique_rows),
                           dram_cache_bytes(self.cfg) + staging, file_bytes)


_HOST_PATHS = {names.HOST_DMA: HostDMA, names.HOST_UVA: HostUVA}
# One class per vocab.placements name (tests check that none is missing).
PLACEMENT_CLASSES: dict[str, type[Placement]] = {
    cls.kind: cls for cls in (NoEngram, HBM, HostDMA, HostUVA, HBMCache, SSD)}


def placement_for(cfg: RunConfig) -> Placement:
    """The placement object of cfg.placement.kind."""
    kind = cfg.placement.kind
    if kind not in PLACEMENT_CLASSES:
        raise ConfigError("placement.kind", f"{kind!r} is not a placement", f"use one of {', '.join(names.PLACEMENTS)}")
    return PLACEMENT_CLASSES[kind](cfg)
