"""Table contents, host tables and the interface every table store shares (real_runs/stores.py, ssd_store.py).

Tables are filled deterministically from (seed, element index) by `_fill`, so
every store built from the same seed (in memory or in a file on a drive)
returns identical rows.
"""

from __future__ import annotations

# real_runs modules are imported only to run or time real things, so torch (their own dependency, the
# 'real' extra) is imported at the top like numpy; the simulator never imports them.
import mmap
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from numba import njit, prange

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
    dram_hits: int = 0          # ssd: rows served by the DRAM cache
    ssd_reads: int = 0          # ssd: block reads from the drive
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


class GatheringStore(TableStore):
    """A store whose gather_into(f, uniq, dst) brings the unique rows to the device (host_dma, ssd)."""

    def gather_into(self, f: Fetch, uniq: np.ndarray, dst: torch.Tensor) -> None:
        raise NotImplementedError

    def _start(self, f, ids, uniq, inv):
        dst = torch.empty((uniq.size, self.values_per_row), dtype=self.dtype, device=self.device)
        (inv_dev,) = self._upload(inv)
        self.gather_into(f, uniq, dst)
        f.host_rows = int(uniq.size)
        f.tensors.update(rows=dst, inv=inv_dev)

    def _finish(self, f):
        return f.tensors["rows"].index_select(0, f.tensors["inv"])
