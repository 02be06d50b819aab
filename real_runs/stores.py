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
import mmap
import time
from dataclasses import dataclass, field

import numba
import numpy as np
import torch
from numba import njit, prange

from real_runs.cuda_gather import (
    UVA_NEEDS_GPU,
    interpreting,
    uva_gather,
    uva_unavailable_reason,
)
from vocab.placements import ENGRAM_PLACEMENTS, HBM, HBM_CACHE, HOST_DMA, HOST_PATHS, HOST_UVA, NONE
from vocab.records import CPU_GATHER, H2D_LINK, UVA_GATHER

TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
                "fp8": getattr(torch, "float8_e4m3fn", torch.uint8), "int8": torch.int8}
_WORD = {8: np.uint64, 4: np.uint32, 2: np.uint16, 1: np.uint8}
HUGEPAGE_MIN_BYTES = 64 << 20
cudaHostRegisterPortable, cudaHostRegisterMapped = 0x01, 0x02


# -- deterministic table contents ------------------------------------------------------------------

@njit(inline="always")
def _mix(x):
    # splitmix64 finaliser
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@njit(parallel=True, nogil=True, cache=True)
def _fill(out, first_row, seed, kind):
    """out[r, c] = bits of a finite value in +-[2^-7, 1), from (seed, (first_row + r) * cols + c).

    kind: 0 bf16, 1 fp16, 2 fp32, 3 fp8 e4m3, 4 int8 (out's word size matches)."""
    rows, cols = out.shape
    s = np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
    for r in prange(rows):
        base = np.uint64(first_row + r) * np.uint64(cols)
        for c in range(cols):
            h = _mix(s + base + np.uint64(c))
            sign = h & np.uint64(1)
            e = (h >> np.uint64(1)) % np.uint64(7)          # 7 binades below 1
            m = h >> np.uint64(8)
            if kind == 0:
                out[r, c] = (sign << np.uint64(15)) | ((np.uint64(120) + e) << np.uint64(7)) | (m & np.uint64(0x7F))
            elif kind == 1:
                out[r, c] = (sign << np.uint64(15)) | ((np.uint64(8) + e) << np.uint64(10)) | (m & np.uint64(0x3FF))
            elif kind == 2:
                out[r, c] = ((sign << np.uint64(31)) | ((np.uint64(120) + e) << np.uint64(23))
                             | (m & np.uint64(0x7FFFFF)))
            elif kind == 3:
                out[r, c] = (sign << np.uint64(7)) | ((np.uint64(1) + e % np.uint64(6)) << np.uint64(3)) \
                    | (m & np.uint64(0x7))
            else:
                out[r, c] = m & np.uint64(0xFF)


_FILL_KIND = {"bf16": (0, np.uint16), "fp16": (1, np.uint16), "fp32": (2, np.uint32), "fp8": (3, np.uint8),
              "int8": (4, np.uint8)}


@njit(parallel=True, nogil=True, cache=True)
def gather_rows(table, idx, out):
    """out[i] = table[idx[i]] (word arrays), rows in parallel."""
    words = table.shape[1]
    for i in prange(idx.shape[0]):
        r = idx[i]
        for j in range(words):
            out[i, j] = table[r, j]


def _word_size(row_bytes: int) -> int:
    return next(w for w in (8, 4, 2, 1) if row_bytes % w == 0)


# -- tables ----------------------------------------------------------------------------------------

class HostTable:
    """A table in host memory: `rows` x `values_per_row` values of `dtype`, filled from `seed`.

    Memory is an anonymous mmap (MADV_HUGEPAGE when large); with `pin`, registered with CUDA
    (cudaHostRegister, portable + mapped) so copies are DMA and a kernel can read it (UVA).
    Views: .bytes [rows, row_bytes] uint8, .words (widest word dividing a row; for Numba),
    .tensor [rows, values_per_row] torch (shares the memory).
    """

    def __init__(self, rows: int, values_per_row: int, dtype: str = "bf16", seed: int = 0, pin: bool = False,
                 fill: bool = True):
        if rows < 1 or values_per_row < 1:
            raise ValueError(f"a table needs rows >= 1 and values_per_row >= 1 (got {rows}, {values_per_row})")
        if dtype not in TORCH_DTYPES:
            raise ValueError(f"table dtype {dtype!r} is not one of {sorted(TORCH_DTYPES)}")
        self.rows, self.values_per_row, self.dtype_name, self.seed = rows, values_per_row, dtype, seed
        kind, word = _FILL_KIND[dtype]
        self.value_bytes = np.dtype(word).itemsize
        self.row_bytes = values_per_row * self.value_bytes
        self.nbytes = rows * self.row_bytes
        self._mm = mmap.mmap(-1, self.nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if self.nbytes >= HUGEPAGE_MIN_BYTES and hasattr(mmap, "MADV_HUGEPAGE"):
            try:
                self._mm.madvise(mmap.MADV_HUGEPAGE)
            except OSError:
                pass  # THP disabled: fine, only slower to pin
        self.bytes = np.frombuffer(self._mm, dtype=np.uint8).reshape(rows, self.row_bytes)
        t0 = time.perf_counter()
        values = self.bytes.view(word)
        step = max(1, (256 << 20) // self.row_bytes)
        for r0 in range(0, rows if fill else 0, step):  # chunks keep first-touch page faults spread over threads
            _fill(values[r0:r0 + step], r0, seed, kind)
        self.filled = fill   # False: zeros (timing only; pages are touched when pinned or read)
        self.fill_s = time.perf_counter() - t0
        self.words = self.bytes.view(_WORD[_word_size(self.row_bytes)])
        self.tensor = torch.from_numpy(self.bytes).view(TORCH_DTYPES[dtype])
        self.ptr = self.bytes.ctypes.data
        self.pinned = False
        self.pin_s = 0.0
        if pin:
            self.pin()

    def pin(self) -> None:
        if self.pinned:
            return
        if not torch.cuda.is_available():
            raise RuntimeError("pinning a host table needs CUDA")
        t0 = time.perf_counter()
        err = torch.cuda.cudart().cudaHostRegister(self.ptr, self.nbytes,
                                                   cudaHostRegisterPortable | cudaHostRegisterMapped)
        if int(err) != 0:
            raise RuntimeError(f"cudaHostRegister of {self.nbytes} B failed: error {int(err)}")
        self.pinned = True
        self.pin_s = time.perf_counter() - t0

    def close(self) -> None:
        if self.pinned:
            torch.cuda.cudart().cudaHostUnregister(self.ptr)
            self.pinned = False
        self.bytes = self.words = self.tensor = None
        try:
            self._mm.close()
        except BufferError:
            pass  # a view is still alive somewhere: the memory goes with the last reference

    def row_values(self, ids) -> torch.Tensor:
        """Reference read (host, no checks beyond numpy's): rows [len(ids), values_per_row]."""
        return self.tensor[torch.as_tensor(np.asarray(ids, dtype=np.int64))]


# -- fetch handles ---------------------------------------------------------------------------------

@dataclass
class Fetch:
    """One prefetch: what was asked, and what the store needs to finish it."""
    lookups: int
    unique_rows: int
    host_rows: int = 0
    cache_hits: int = 0
    start_ns: int = 0
    issued_ns: int = 0          # host time the fetch was fully issued (CPU: done)
    ready: object = None        # torch.cuda.Event on the fetch stream (GPU)
    tensors: dict = field(default_factory=dict)
    events: list = field(default_factory=list)   # (actor, name, start mark, end mark)
    tag: object = None


def dedup(row_ids, rows: int, table: str = "table") -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique ids and inverse indices; ValueError for any id outside [0, rows), before any read."""
    ids = np.asarray(row_ids)
    if ids.dtype.kind not in "iu":
        raise ValueError(f"row ids must be integers, got dtype {ids.dtype}")
    ids = ids.reshape(-1)
    if ids.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    uniq, inv = np.unique(ids, return_inverse=True)
    if uniq[0] < 0 or uniq[-1] >= rows:
        bad = uniq[0] if uniq[0] < 0 else uniq[-1]
        raise ValueError(f"row id {int(bad)} is outside the {table} of {rows} rows (valid: 0..{rows - 1})")
    return uniq.astype(np.int64, copy=False), inv.reshape(-1).astype(np.int64, copy=False)


class TableStore:
    """Base class: dedup, bounds check, the fetch stream and the timeline hooks."""

    kind = "base"

    def __init__(self, table: HostTable, device="cpu", stream=None, timeline=None, name: str = "table"):
        self.table = table
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.stream = stream if stream is not None or not self.cuda else torch.cuda.Stream(self.device)
        self.timeline = timeline
        self.name = name
        self.rows, self.values_per_row, self.row_bytes = table.rows, table.values_per_row, table.row_bytes
        self.dtype = TORCH_DTYPES[table.dtype_name]

    # marks: CUDA events on the fetch stream, or host ns
    def _mark(self):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record(self.stream)
            return ev
        return time.perf_counter_ns()

    def _upload(self, *arrays: np.ndarray) -> list[torch.Tensor]:
        """Host int64 arrays -> device tensors (one pinned buffer, one async copy on the fetch stream)."""
        sizes = [a.size for a in arrays]
        if not self.cuda:
            return [torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)) for a in arrays]
        host = torch.empty(max(1, sum(sizes)), dtype=torch.int64, pin_memory=True)
        hv = host.numpy()
        off = 0
        for a in arrays:
            hv[off:off + a.size] = a
            off += a.size
        dev = host.to(self.device, non_blocking=True)
        return list(dev[:sum(sizes)].split(sizes))

    def prefetch(self, row_ids, tag=None) -> Fetch:
        start = time.perf_counter_ns()
        uniq, inv = dedup(row_ids, self.rows, self.name)
        f = Fetch(lookups=int(inv.size), unique_rows=int(uniq.size), start_ns=start, tag=tag)
        if self.cuda:
            with torch.cuda.stream(self.stream):
                self._start(f, np.asarray(row_ids).reshape(-1), uniq, inv)
                f.ready = torch.cuda.Event(enable_timing=True)
                f.ready.record(self.stream)
        else:
            self._start(f, np.asarray(row_ids).reshape(-1), uniq, inv)
        f.issued_ns = time.perf_counter_ns()
        return f

    def wait(self, f: Fetch) -> torch.Tensor:
        """The rows [n_lookups, values_per_row] in lookup order, on the current stream."""
        self.wait_ready(f)
        return self.finish(f)

    def wait_ready(self, f: Fetch) -> None:
        """Make the current (compute) stream wait until the fetch's rows are on the device."""
        if self.cuda:
            cur = torch.cuda.current_stream(self.device)
            cur.wait_event(f.ready)
            for t in f.tensors.values():
                if isinstance(t, torch.Tensor) and t.is_cuda:
                    t.record_stream(cur)

    def finish(self, f: Fetch) -> torch.Tensor:
        """After wait_ready: gather/expand to lookup order (device work on the current stream)."""
        return self._finish(f)

    def _start(self, f: Fetch, ids: np.ndarray, uniq: np.ndarray, inv: np.ndarray) -> None:
        raise NotImplementedError

    def _finish(self, f: Fetch) -> torch.Tensor:
        raise NotImplementedError

    def close(self) -> None:
        pass


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


class HostDMAStore(TableStore):
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

    def _start(self, f, ids, uniq, inv):
        dst = torch.empty((uniq.size, self.values_per_row), dtype=self.dtype, device=self.device)
        (inv_dev,) = self._upload(inv)
        self.gather_into(f, uniq, dst)
        f.host_rows = int(uniq.size)
        f.tensors.update(rows=dst, inv=inv_dev)

    def _finish(self, f):
        return f.tensors["rows"].index_select(0, f.tensors["inv"])


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
                 threads: int | None = None, uva_ctas: int | None = None):
        super().__init__(table, device, stream, timeline, name)
        if policy not in ("static_topk", "lru"):
            raise ValueError(f"cache policy {policy!r}: this store implements 'static_topk' and 'lru'")
        if miss_path == HOST_UVA:
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
            self.cache[:hot.size] = table.tensor[torch.from_numpy(hot)].to(self.device)

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


STORES = {HBM: HBMStore, HOST_DMA: HostDMAStore, HOST_UVA: HostUVAStore, HBM_CACHE: HBMCacheStore}
assert set(STORES) == set(ENGRAM_PLACEMENTS), "one store per placement that holds a table"


def make_store(kind: str, table: HostTable, device="cpu", *, stream=None, timeline=None, name: str = "table",
               placement=None, cache_rows: int = 0, hot_rows=None, protect: int = 2) -> TableStore:
    """A store of `kind` over `table`, with the staging/cache settings of a vocab.config.PlacementConfig."""
    if kind == NONE:
        raise ValueError(f"placement {NONE!r} has no table store: the backbone runs without Engram")
    if kind not in STORES:
        raise ValueError(f"placement {kind!r} is not one of {sorted(STORES)}")
    p = placement
    dma = {} if p is None else {"chunk_mib": p.staging_chunk_mib, "buffers": p.staging_buffers,
                                "threads": p.gather_threads}
    ctas = None if p is None else p.uva_ctas
    if kind == HBM_CACHE:
        policy = "static_topk" if p is None or p.cache_policy == "static_topk" else "lru"   # lfu is run as lru
        return HBMCacheStore(table, device, stream, timeline, name, capacity=cache_rows, policy=policy,
                             miss_path=HOST_DMA if p is None else p.misses_via, hot_rows=hot_rows, protect=protect,
                             uva_ctas=ctas, **dma)
    extra = dma if kind == HOST_DMA else {"ctas": ctas} if kind == HOST_UVA else {}
    return STORES[kind](table, device, stream, timeline, name, **extra)
