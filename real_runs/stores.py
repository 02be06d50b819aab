"""Table stores: one per placement that holds a table (vocab.placements), one interface.

    handle = store.prefetch(row_ids)   # int64 ids in lookup order; dedup + sort, bounds check, start the fetch
    rows = store.wait(handle)          # [n_lookups, values_per_row] on the device, in lookup order

`prefetch` checks every id against the table BEFORE any read (ValueError naming
the id and the table size); `wait` expands the unique rows back to the lookups.
On a GPU, `prefetch` runs on the caller's thread with the fetch stream current
(the runner's worker thread) and `wait` makes the current (compute) stream wait
on the fetch's CUDA event. On CPU the fetch is done when `prefetch` returns.

- hbm        the table on the device; the row ids go up, `index_select` gathers.
- host_dma   the table in pinned host memory; Numba threads gather the unique
             rows into double-buffered pinned staging chunks, each chunk copied
             H2D asynchronously on the fetch stream (on CPU: a memcpy).
- host_uva   the table in pinned host memory, read by a GPU kernel through its
             device pointer (real_runs/cuda_gather.py; grid: placement.uva_ctas). Needs
             a CUDA GPU, or TRITON_INTERPRET=1 to run the same kernel on the CPU (tests).
- hbm_cache  hot rows in a device cache (static top-k by frequency, or LRU);
             misses through host_dma or host_uva.
- none       has no store: the backbone runs without Engram.

Tables are filled deterministically from (seed, element index), so every store
built from the same seed returns identical rows. Host tables are mmap'ed
(MADV_HUGEPAGE) and, with CUDA, pinned by cudaHostRegister.
"""

from __future__ import annotations

# real_runs modules are imported only to run or time real things, so torch (their own dependency, the
# 'real' extra) is imported at the top like numpy; the simulator never imports them.
import time

import numba
import numpy as np
import torch

from real_runs.cuda_gather import (
    UVA_NEEDS_GPU,
    interpreting,
    uva_gather,
    uva_unavailable_reason,
)
from real_runs.ssd_store import SsdStore, SsdTable

# The tables and the store interface live in real_runs/tables.py; they are named here too, where callers look.
from real_runs.tables import (  # noqa: F401
    TORCH_DTYPES,
    Fetch,
    GatheringStore,
    HostTable,
    TableStore,
    dedup,
    gather_rows,
)
from vocab.placements import ENGRAM_PLACEMENTS, HBM, HBM_CACHE, HOST_DMA, HOST_PATHS, HOST_UVA, NONE, SSD
from vocab.records import CPU_GATHER, H2D_LINK, UVA_GATHER


class HBMStore(TableStore):
    """The table in device memory; only the row ids travel, the Engram layer gathers."""

    kind = HBM

    def __init__(self, table: HostTable, device="cpu", stream=None, timeline=None, name: str = "table"):
        super().__init__(table, device, stream, timeline, name)
        self.device_table = table.tensor.to(self.device) if self.cuda else table.tensor

    def _start(self, f, ids, uniq, inv):
        m0 = self._mark()
        (f.tensors["ids"],) = self._upload(ids)
        f.events.append((H2D_LINK, "row ids", m0, self._mark()))

    def _finish(self, f):
        return self.device_table.index_select(0, f.tensors["ids"])


class HostDMAStore(GatheringStore):
    """CPU gather into double-buffered (pinned) staging, chunk by chunk, each chunk copied H2D async."""

    kind = HOST_DMA

    def __init__(self, table: HostTable, device="cpu", stream=None, timeline=None, name: str = "table",
                 chunk_mib: float = 4.0, buffers: int = 2, threads: int | None = None):
        super().__init__(table, device, stream, timeline, name)
        if self.cuda and not table.pinned:
            table.pin()
        self.chunk_rows = max(1, int(chunk_mib * (1 << 20)) // self.row_bytes)
        self.threads = threads
        word = table.words.dtype
        wpr = table.words.shape[1]
        self.staging = []
        for _ in range(max(1, buffers)):
            t = torch.empty(self.chunk_rows * self.row_bytes, dtype=torch.uint8, pin_memory=self.cuda)
            self.staging.append((t, t.numpy().view(word).reshape(self.chunk_rows, wpr)))
        self.staging_free = [None] * len(self.staging)   # CUDA event: the buffer's last copy has finished

    def gather_into(self, f: Fetch, uniq: np.ndarray, dst: torch.Tensor) -> None:
        """Rows uniq -> dst [len(uniq), values_per_row] on the device, through staging."""
        if self.threads:
            numba.set_num_threads(min(self.threads, numba.config.NUMBA_NUM_THREADS))
        dst_bytes = dst.view(torch.uint8).view(-1, self.row_bytes) if dst.numel() else None
        for c, r0 in enumerate(range(0, uniq.size, self.chunk_rows)):
            r1 = min(uniq.size, r0 + self.chunk_rows)
            slot = c % len(self.staging)
            buf_t, buf_words = self.staging[slot]
            if self.staging_free[slot] is not None:
                self.staging_free[slot].synchronize()   # the copy that last read this buffer is done
            g0 = time.perf_counter_ns()
            gather_rows(self.table.words, uniq[r0:r1], buf_words[:r1 - r0])
            f.events.append((CPU_GATHER, f"gather {self.name}", g0, time.perf_counter_ns()))
            c0 = self._mark()
            dst_bytes[r0:r1].view(-1).copy_(buf_t[:(r1 - r0) * self.row_bytes], non_blocking=self.cuda)
            c1 = self._mark()
            f.events.append((H2D_LINK, f"copy {self.name}", c0, c1))
            if self.cuda:
                self.staging_free[slot] = c1

class HostUVAStore(TableStore):
    """A GPU kernel reads the unique rows straight from the pinned host table (zero-copy)."""

    kind = HOST_UVA

    def __init__(self, table: HostTable, device="cuda", stream=None, timeline=None, name: str = "table",
                 ctas: int | None = None):
        reason = uva_unavailable_reason()
        on_cuda = torch.device(device).type == "cuda"
        if reason or on_cuda == interpreting():
            raise RuntimeError(reason or (f"{UVA_NEEDS_GPU} (device is {device!r})" if not on_cuda else
                                          "under TRITON_INTERPRET=1 host_uva runs on the CPU: use device 'cpu'"))
        super().__init__(table, device, stream, timeline, name)
        self.ctas = ctas          # the kernel's grid: None grows with the rows, a number bounds it
        if self.cuda and not table.pinned:
            table.pin()

    def gather_into(self, f: Fetch, uniq_dev: torch.Tensor, dst: torch.Tensor) -> None:
        m0 = self._mark()
        uva_gather(self.table, self.row_bytes, uniq_dev, dst, ctas=self.ctas)
        f.events.append((UVA_GATHER, f"gather {self.name}", m0, self._mark()))

    def _start(self, f, ids, uniq, inv):
        uniq_dev, inv_dev = self._upload(uniq, inv)
        dst = torch.empty((uniq.size, self.values_per_row), dtype=self.dtype, device=self.device)
        self.gather_into(f, uniq_dev, dst)
        f.host_rows = int(uniq.size)
        f.tensors.update(rows=dst, inv=inv_dev, uniq=uniq_dev)

    def _finish(self, f):
        return f.tensors["rows"].index_select(0, f.tensors["inv"])


class HBMCacheStore(TableStore):
    """Hot rows in a device cache; misses through host_dma or host_uva.

    policy "static_topk": the cache holds `hot_rows[:capacity]` (ids by falling frequency) for the
    whole run. policy "lru": misses replace the least recently used slots (filled by `wait`, on the
    compute stream, so stream order keeps every step's reads consistent); slots touched by the last
    `protect` prefetches are never evicted, so prefetching ahead cannot evict rows still to be read.
    """

    kind = HBM_CACHE

    def __init__(self, table: HostTable, device="cpu", stream=None, timeline=None, name: str = "table",
                 capacity: int = 0, policy: str = "static_topk", miss_path: str = HOST_DMA,
                 hot_rows=None, protect: int = 2, chunk_mib: float = 4.0, buffers: int = 2,
                 threads: int | None = None, uva_ctas: int | None = None, miss: TableStore | None = None):
        super().__init__(table, device, stream, timeline, name)
        if policy not in ("static_topk", "lru"):
            raise ValueError(f"cache policy {policy!r}: this store implements 'static_topk' and 'lru'")
        if miss is not None:    # e.g. an SsdStore: the misses come from a drive
            self.miss = miss
        elif miss_path == HOST_UVA:
            self.miss = HostUVAStore(table, device, self.stream, timeline, name, ctas=uva_ctas)
        elif miss_path == HOST_DMA:
            self.miss = HostDMAStore(table, device, self.stream, timeline, name, chunk_mib, buffers, threads)
        else:
            raise ValueError(f"miss_path {miss_path!r} is not one of {list(HOST_PATHS)}")
        self.policy, self.protect = policy, max(1, protect)
        self.capacity = int(min(max(0, capacity), table.rows))
        self.slot_of = np.full(table.rows, -1, dtype=np.int64)
        self.slot_row = np.full(self.capacity, -1, dtype=np.int64)
        self.last_used = np.full(self.capacity, -(1 << 62), dtype=np.int64)
        self.tick = 0
        hot = np.zeros(0, np.int64)
        if hot_rows is not None:
            hot = np.asarray(hot_rows, dtype=np.int64).reshape(-1)
            _, first = np.unique(hot, return_index=True)
            hot = hot[np.sort(first)][:self.capacity]       # distinct, in the given (frequency) order
            dedup(hot, self.rows, name)                       # bounds check
        self.cache = torch.empty((max(1, self.capacity), self.values_per_row), dtype=self.dtype, device=self.device)
        if hot.size:
            slots = np.arange(hot.size)
            self.slot_of[hot] = slots
            self.slot_row[:hot.size] = hot
            self.cache[:hot.size] = table.row_values(hot).to(self.device)

    def _start(self, f, ids, uniq, inv):
        self.tick += 1
        slots = self.slot_of[uniq]
        hit = slots >= 0
        hit_pos, miss_pos = np.flatnonzero(hit), np.flatnonzero(~hit)
        hit_slots, miss_ids = slots[hit], uniq[~hit]
        fill_slots = np.zeros(0, np.int64)
        if self.policy == "lru" and self.capacity:
            self.last_used[hit_slots] = self.tick
            free = np.flatnonzero(self.last_used < self.tick - self.protect + 1)
            k = min(miss_ids.size, free.size)
            if k:
                victims = free[np.argpartition(self.last_used[free], k - 1)[:k]] if k < free.size else free
                old = self.slot_row[victims]
                self.slot_of[old[old >= 0]] = -1
                self.slot_row[victims] = miss_ids[:k]
                self.slot_of[miss_ids[:k]] = victims
                self.last_used[victims] = self.tick
                fill_slots = victims
        hit_pos_d, hit_slots_d, miss_pos_d, inv_d, fill_d = self._upload(hit_pos, hit_slots, miss_pos, inv,
                                                                         fill_slots)
        miss_rows = torch.empty((miss_ids.size, self.values_per_row), dtype=self.dtype, device=self.device)
        if miss_ids.size:
            if isinstance(self.miss, HostUVAStore):
                (miss_dev,) = self._upload(miss_ids)
                f.tensors["miss_ids"] = miss_dev
                self.miss.gather_into(f, miss_dev, miss_rows)
            else:
                self.miss.gather_into(f, miss_ids, miss_rows)
        f.host_rows, f.cache_hits = int(miss_ids.size), int(hit_pos.size)
        f.tensors.update(hit_pos=hit_pos_d, hit_slots=hit_slots_d, miss_pos=miss_pos_d, inv=inv_d,
                         fill=fill_d, miss_rows=miss_rows)

    def _finish(self, f):
        t = f.tensors
        out = torch.empty((f.unique_rows, self.values_per_row), dtype=self.dtype, device=self.device)
        if t["hit_pos"].numel():
            out.index_copy_(0, t["hit_pos"], self.cache.index_select(0, t["hit_slots"]))
        if t["miss_pos"].numel():
            out.index_copy_(0, t["miss_pos"], t["miss_rows"])
        if t["fill"].numel():
            self.cache.index_copy_(0, t["fill"], t["miss_rows"][:t["fill"].numel()])
        return out.index_select(0, t["inv"])

    def close(self) -> None:
        self.miss.close()


STORES = {HBM: HBMStore, HOST_DMA: HostDMAStore, HOST_UVA: HostUVAStore, HBM_CACHE: HBMCacheStore, SSD: SsdStore}
assert set(STORES) == set(ENGRAM_PLACEMENTS), "one store per placement that holds a table"


def make_store(kind: str, table: HostTable, device="cpu", *, stream=None, timeline=None, name: str = "table",
               placement=None, cache_rows: int = 0, hot_rows=None, protect: int = 2,
               dram_cache_rows: int = 0) -> TableStore:
    """A store of `kind` over `table` (ssd: an SsdTable), with the staging/cache settings of a
    vocab.config.PlacementConfig."""
    if kind == NONE:
        raise ValueError(f"placement {NONE!r} has no table store: the backbone runs without Engram")
    if kind not in STORES:
        raise ValueError(f"placement {kind!r} is not one of {sorted(STORES)}")
    p = placement
    dma = {} if p is None else {"chunk_mib": p.staging_chunk_mib, "buffers": p.staging_buffers,
                                "threads": p.gather_threads}
    ctas = None if p is None else p.uva_ctas
    policy = "static_topk" if p is None or p.cache_policy == "static_topk" else "lru"   # lfu is run as lru
    if kind == SSD:
        if not isinstance(table, SsdTable):
            raise ValueError(f"placement {SSD!r} reads its rows from a file: give an SsdTable, not {type(table).__name__}")
        miss = _ssd_store(table, device, stream, timeline, name, p, dram_cache_rows,
                          hot_rows if policy != "static_topk" or hot_rows is None else hot_rows[cache_rows:])
        if not cache_rows:
            return miss
        return HBMCacheStore(table, device, miss.stream, timeline, name, capacity=cache_rows, policy=policy,
                             hot_rows=hot_rows, protect=protect, miss=miss)
    if kind == HBM_CACHE:
        return HBMCacheStore(table, device, stream, timeline, name, capacity=cache_rows, policy=policy,
                             miss_path=HOST_DMA if p is None else p.misses_via, hot_rows=hot_rows, protect=protect,
                             uva_ctas=ctas, **dma)
    extra = dma if kind == HOST_DMA else {"ctas": ctas} if kind == HOST_UVA else {}
    return STORES[kind](table, device, stream, timeline, name, **extra)


def _ssd_store(table, device, stream, timeline, name, p, dram_cache_rows: int, hot_rows) -> SsdStore:
    """The drive-reading store (behind an HBM cache, the DRAM cache sees only the HBM cache's misses: a static
    DRAM cache holds the hot rows after the HBM cache's)."""
    if p is None:
        return SsdStore(table, device, stream, timeline, name, dram_cache_rows=dram_cache_rows, hot_rows=hot_rows)
    return SsdStore(table, device, stream, timeline, name, threads=p.ssd_threads, queue_depth=p.ssd_queue_depth,
                    dram_cache_rows=dram_cache_rows, dram_cache_policy=p.dram_cache_policy, hot_rows=hot_rows,
                    reads=p.ssd_reads)
