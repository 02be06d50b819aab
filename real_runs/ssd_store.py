"""The ssd placement, for real: the table in a file on a drive, read block by block with O_DIRECT.

- `SsdTable`: the same rows as a HostTable of the same seed (tables._fill),
  written into a file in vocab.geometry's layout (rows packed whole into read
  blocks; a larger row takes whole blocks of its own). The file lives in
  placement.ssd_dir (None: the system's temp folder) and is removed on close,
  on any failure while writing (Ctrl-C included) and at interpreter exit.
- `SsdStore`: per fetch, the unique rows are served by the DRAM cache
  (real_runs/dram_cache.py) or read from the drive: the distinct blocks that
  hold the missed rows, by real_runs/direct_io.DirectReader (the reads drive
  calibration measures), into page-aligned staging; the rows are picked out
  and copied to the device (on CPU: a memcpy). `gather_into` lets an
  HBMCacheStore front it (an ssd placement with cache_gib or cache_fraction).
  ssd_reads = "gds" (reads straight into HBM) needs a GPU and KvikIO.
"""

from __future__ import annotations

# real_runs modules are imported only to run or time real things: torch, their own dependency, is imported at
# the top.
import errno
import os
import sys
import tempfile
import time
import weakref
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from real_runs.direct_io import DirectReader, DriveError, aligned_blocks, check_drive_folder
from real_runs.dram_cache import DramCache
from real_runs.tables import _FILL_KIND, TORCH_DTYPES, Fetch, GatheringStore, _fill, cudaHostRegisterPortable
from vocab.errors import DeviceError
from vocab.geometry import ssd_blocks_per_row, ssd_file_bytes, ssd_row_offset, ssd_rows_per_block
from vocab.placements import SSD
from vocab.records import CPU_GATHER, H2D_LINK, SSD_READ

SSD_DIR_FIELD = "placement.ssd_dir"
WRITE_CHUNK_BYTES = 64 << 20
PROGRESS_MIN_BYTES = 256 << 20    # smaller files write in a moment: no progress bar
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
WARM_CHUNK_ROWS = 1 << 14   # rows whose bytes a DRAM-cache warm-up loads at once


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class SsdTable:
    """A `rows` x `values_per_row` table of `dtype` filled from `seed`, in a file of block_bytes blocks."""

    def __init__(self, rows: int, values_per_row: int, dtype: str = "bf16", seed: int = 0, *,
                 folder: str | Path | None = None, block_bytes: int = 4096, field: str = SSD_DIR_FIELD):
        if rows < 1 or values_per_row < 1:
            raise ValueError(f"a table needs rows >= 1 and values_per_row >= 1 (got {rows}, {values_per_row})")
        if dtype not in TORCH_DTYPES:
            raise ValueError(f"table dtype {dtype!r} is not one of {sorted(TORCH_DTYPES)}")
        self.rows, self.values_per_row, self.dtype_name, self.seed = rows, values_per_row, dtype, seed
        self.value_bytes = np.dtype(_FILL_KIND[dtype][1]).itemsize
        self.row_bytes = values_per_row * self.value_bytes
        self.nbytes = rows * self.row_bytes
        self.block_bytes, self.field = block_bytes, field
        self.rows_per_block = ssd_rows_per_block(self.row_bytes, block_bytes)
        self.blocks_per_row = ssd_blocks_per_row(self.row_bytes, block_bytes)
        self.file_bytes = ssd_file_bytes(rows, self.row_bytes, block_bytes)
        self.pinned, self.pin_s, self.filled = False, 0.0, True
        where = check_drive_folder(tempfile.gettempdir() if folder is None else folder, self.file_bytes, field)
        fd, name = tempfile.mkstemp(prefix="engram-table-", suffix=".bin", dir=where)
        self.path = Path(name)
        self._finalizer = weakref.finalize(self, _remove, name)   # removed at exit even if never closed
        t0 = time.perf_counter()
        try:
            self._write(fd)
        except BaseException as e:   # Ctrl-C too: nothing is left behind
            os.close(fd)
            self.close()
            if isinstance(e, OSError) and e.errno in NO_SPACE:
                raise DriveError(field, f"the drive of {str(where)!r} filled up while writing the "
                                        f"{self.file_bytes / 2**30:.2f} GiB table file",
                                 "free space, use a smaller table, or another folder") from None
            raise
        os.close(fd)
        self.fill_s = time.perf_counter() - t0

    def _write(self, fd: int) -> None:
        """Fill and write the file in chunks of whole row groups (a group: the rows of one block span)."""
        kind, word = _FILL_KIND[self.dtype_name]
        span = self.blocks_per_row * self.block_bytes
        groups = -(-self.rows // self.rows_per_block)
        step = max(1, WRITE_CHUNK_BYTES // span)
        bar = tqdm(total=self.file_bytes, unit="B", unit_scale=True, file=sys.stderr, leave=False,
                   desc=f"writing {self.path.name}", disable=self.file_bytes < PROGRESS_MIN_BYTES)
        with bar:
            for g0 in range(0, groups, step):
                g1 = min(groups, g0 + step)
                r0, r1 = g0 * self.rows_per_block, min(self.rows, g1 * self.rows_per_block)
                values = np.empty((r1 - r0, self.values_per_row), dtype=word)
                _fill(values, r0, self.seed, kind)
                chunk = np.zeros((g1 - g0, span), dtype=np.uint8)
                # [group, row in group, byte]: a view (splitting the last axis), so the assignment lands in chunk
                packed = chunk[:, :self.rows_per_block * self.row_bytes].reshape(g1 - g0, self.rows_per_block, -1)
                at = np.arange(r1 - r0)
                packed[at // self.rows_per_block, at % self.rows_per_block] = values.view(np.uint8).reshape(
                    r1 - r0, self.row_bytes)
                _write_all(fd, memoryview(chunk.reshape(-1)), g0 * span)
                bar.update(chunk.size)
        os.fsync(fd)   # on the drive before the first timed read, not still being written back

    def row_values(self, ids) -> torch.Tensor:
        """Reference read through the page cache (set-up and tests): rows [len(ids), values_per_row]."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        out = np.empty((ids.size, self.row_bytes), dtype=np.uint8)
        with open(self.path, "rb", buffering=0) as fh:
            for i, off in enumerate(ssd_row_offset(ids, self.row_bytes, self.block_bytes)):
                fh.seek(int(off))
                out[i] = np.frombuffer(fh.read(self.row_bytes), dtype=np.uint8)
        return torch.from_numpy(out).view(TORCH_DTYPES[self.dtype_name])

    def close(self) -> None:
        self._finalizer()


def _write_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def gds_unavailable_reason(cuda: bool) -> str | None:
    if not cuda:
        return "ssd_reads = 'gds' needs a CUDA GPU with GPUDirect Storage (the device is the CPU)"
    try:
        import kvikio  # noqa: F401  (optional: GPUDirect Storage reads)
    except ImportError:
        return "ssd_reads = 'gds' needs KvikIO for GPUDirect Storage (pip install kvikio-cu12), not installed here"
    return None


class SsdStore(GatheringStore):
    """Unique rows from the DRAM cache or from the drive's blocks, then to the device."""

    kind = SSD

    def __init__(self, table: SsdTable, device="cpu", stream=None, timeline=None, name: str = "table", *,
                 threads: int = 16, queue_depth: int = 1, dram_cache_rows: int = 0, dram_cache_policy: str = "lru",
                 hot_rows=None, reads: str = "staging"):
        cuda = torch.device(device).type == "cuda"
        self.gds = reads == "gds"
        if self.gds and (reason := gds_unavailable_reason(cuda)):
            raise DeviceError("placement.ssd_reads", reason, "use ssd_reads = 'staging'")
        super().__init__(table, device, stream, timeline, name)
        self.block_bytes = table.block_bytes
        # Each reader thread holds one read in flight: threads x depth of them keep the drive's queue full.
        self.reader = DirectReader(table.path, table.block_bytes, threads * queue_depth, field=table.field)
        self.dram = DramCache(table.rows, self.row_bytes, dram_cache_rows, dram_cache_policy, hot_rows)
        if self.dram.needs_hot_data:
            self.dram.fill_hot(table.row_values(self.dram.hot).view(torch.uint8).numpy())
        self._blocks = aligned_blocks(0, self.block_bytes)   # block staging, grown on demand
        self._rows = self._rows_t = None                     # row staging (pinned on a GPU), grown on demand
        self._rows_free = None                               # CUDA event: the last copy from row staging is done
        self._registered: list[np.ndarray] = []
        if self.gds:
            import kvikio  # optional (GPUDirect Storage); checked above

            self._cufile = kvikio.CuFile(table.path, "r")

    def _staging(self, blocks: int, rows: int) -> None:
        """Staging for `blocks` blocks and `rows` rows (page-aligned; pinned on a GPU, so copies are DMA)."""
        if blocks > self._blocks.shape[0]:
            self._blocks = self._pin(aligned_blocks(max(blocks, 2 * self._blocks.shape[0]), self.block_bytes))
        if self._rows is None or rows > self._rows.shape[0]:
            if self._rows_free is not None:
                self._rows_free.synchronize()
            self._rows = self._pin(aligned_blocks(max(rows, 64), self.row_bytes))
            self._rows_t = torch.from_numpy(self._rows)

    def _pin(self, array: np.ndarray) -> np.ndarray:
        if self.cuda:
            err = torch.cuda.cudart().cudaHostRegister(array.ctypes.data, array.nbytes, cudaHostRegisterPortable)
            if int(err) != 0:
                raise RuntimeError(f"cudaHostRegister of {array.nbytes} B of ssd staging failed: error {int(err)}")
            self._registered.append(array)   # kept alive (and registered) until close
        return array

    def _row_blocks(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(distinct sorted blocks holding the rows, each row's byte offset in those blocks read back to back)."""
        offsets = ssd_row_offset(ids, self.row_bytes, self.block_bytes)
        first = offsets // self.block_bytes
        spans = (first[:, None] + np.arange(self.table.blocks_per_row)).reshape(-1)
        blocks = np.unique(spans)
        # A row's blocks are consecutive in the file, so consecutive in the sorted list: read back to back.
        return blocks, np.searchsorted(blocks, first) * self.block_bytes + offsets % self.block_bytes

    def _read_misses(self, f: Fetch, miss_ids: np.ndarray, out: np.ndarray) -> None:
        """The missed rows from the drive into out [len(miss_ids), row_bytes] (host)."""
        blocks, at = self._row_blocks(miss_ids)
        self._staging(blocks.size, 0)
        r0 = time.perf_counter_ns()
        self.reader.read_blocks(blocks, self._blocks)
        r1 = time.perf_counter_ns()
        f.events.append((SSD_READ, f"read {self.name}", r0, r1))
        flat = self._blocks.reshape(-1)
        out[:] = flat[at[:, None] + np.arange(self.row_bytes)]
        f.ssd_reads += int(blocks.size)

    def gather_into(self, f: Fetch, uniq: np.ndarray, dst: torch.Tensor) -> None:
        """Rows uniq (sorted, unique) -> dst [len(uniq), values_per_row] on the device."""
        if self.gds:
            return self._gather_gds(f, uniq, dst)
        self._staging(0, uniq.size)
        if self._rows_free is not None:
            self._rows_free.synchronize()   # the copy that last read the row staging is done
        rows = self._rows[:uniq.size]
        slots = self.dram.slots(uniq)
        hit = slots >= 0
        if hit.any():
            g0 = time.perf_counter_ns()
            rows[hit] = self.dram.data[slots[hit]]
            f.events.append((CPU_GATHER, f"dram hits {self.name}", g0, time.perf_counter_ns()))
        self.dram.update(uniq)
        miss = ~hit
        if miss.any():
            missed = np.empty((int(miss.sum()), self.row_bytes), dtype=np.uint8)
            self._read_misses(f, uniq[miss], missed)
            rows[miss] = missed
            self.dram.fill(uniq[miss], missed)
        f.dram_hits += int(hit.sum())
        if uniq.size:
            c0 = self._mark()
            dst.view(torch.uint8).view(-1).copy_(self._rows_t[:uniq.size].view(-1), non_blocking=self.cuda)
            c1 = self._mark()
            f.events.append((H2D_LINK, f"copy {self.name}", c0, c1))
            self._rows_free = c1 if self.cuda else None

    def warm_dram(self, steps_rows) -> int:
        """Replay each step's row ids through the DRAM cache's policy, untimed and without drive reads (as the
        simulator's cache replay does before its steady state), then load the cached rows' bytes from the
        table file (through the page cache, dropped afterwards). Returns the steps replayed."""
        n = 0
        for ids in steps_rows:
            self.dram.update(np.unique(np.asarray(ids, dtype=np.int64)))
            n += 1
        slots = np.flatnonzero(self.dram.slot_row >= 0)
        if slots.size and self.dram.policy != "static_topk":
            rows = self.dram.slot_row[slots]
            file = np.memmap(self.table.path, dtype=np.uint8, mode="r")
            offsets = ssd_row_offset(rows, self.row_bytes, self.block_bytes)
            for a in range(0, slots.size, WARM_CHUNK_ROWS):   # chunks: the byte index is rows x row_bytes
                b = a + WARM_CHUNK_ROWS
                self.dram.data[slots[a:b]] = file[offsets[a:b, None] + np.arange(self.row_bytes)]
            del file
            with open(self.table.path, "rb") as fh:   # the timed reads are O_DIRECT; leave no cached pages
                os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        return n

    def _gather_gds(self, f: Fetch, uniq: np.ndarray, dst: torch.Tensor) -> None:
        """GPUDirect Storage: the blocks straight into HBM, the rows picked out there (no DRAM cache on this path).
        Not run on a machine without GDS; the staging path is the measured one."""
        blocks, at = self._row_blocks(uniq)
        staging = torch.empty((blocks.size, self.block_bytes), dtype=torch.uint8, device=self.device)
        r0 = self._mark()
        futures = [self._cufile.pread(staging[i], self.block_bytes, int(b) * self.block_bytes)
                   for i, b in enumerate(blocks)]
        for fut in futures:
            fut.get()
        f.events.append((SSD_READ, f"gds read {self.name}", r0, self._mark()))
        (at_dev,) = self._upload(at[:, None] + np.arange(self.row_bytes))
        dst.view(torch.uint8).view(uniq.size, self.row_bytes).copy_(staging.view(-1)[at_dev])
        f.ssd_reads += int(blocks.size)

    def close(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            for array in self._registered:
                torch.cuda.cudart().cudaHostUnregister(array.ctypes.data)
            self._registered = []
        if self.gds:
            self._cufile.close()
        self.reader.close()

