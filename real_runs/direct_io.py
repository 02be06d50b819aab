"""Reading a file's blocks as the drive serves them: O_DIRECT (no page cache), a pool of threads.

One home for the drive's read path, used by the real SSD store and by drive
calibration alike, so a calibrated profile describes the reads the store makes:

    with DirectReader(path, block_bytes=4096, threads=16) as reader:
        out = aligned_blocks(len(blocks), 4096)   # page-aligned [n, block] uint8
        reader.read_blocks(blocks, out)           # out[i] = the file's block blocks[i]

Each thread makes synchronous `os.preadv` calls (one read in flight per
thread), so the reads in flight are the threads. os.preadv releases the GIL
while the drive works. No torch here: calibration imports this module on
machines with only NumPy.
"""

from __future__ import annotations

import errno
import mmap
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from vocab.errors import UserError

PAGE_BYTES = mmap.PAGESIZE


class DriveError(UserError):
    """A drive path that cannot hold or serve the table file (missing, not a folder, full, no O_DIRECT)."""


def aligned_blocks(n: int, block_bytes: int) -> np.ndarray:
    """A zeroed [n, block_bytes] uint8 array whose rows start on page boundaries (O_DIRECT needs it)."""
    buf = mmap.mmap(-1, max(1, n) * block_bytes)  # anonymous mappings are page-aligned
    return np.frombuffer(buf, dtype=np.uint8, count=n * block_bytes).reshape(n, block_bytes)


def check_drive_folder(folder: str | Path, needed_bytes: int, field: str) -> Path:
    """The folder as a Path, if it exists, is writable and has room for needed_bytes (with 5 % spare);
    else DriveError naming `field`."""
    p = Path(folder)
    if not p.is_dir():
        raise DriveError(field, f"{str(folder)!r} is not an existing folder", "give a folder on the drive to use")
    if not os.access(p, os.W_OK):
        raise DriveError(field, f"{str(folder)!r} is not writable", "give a folder you can write to")
    free = shutil.disk_usage(p).free
    if needed_bytes * 1.05 > free:
        raise DriveError(field, f"needs {needed_bytes / 2**30:.2f} GiB but {str(folder)!r} has "
                                f"{free / 2**30:.2f} GiB free", "free space, use a smaller table, or another folder")
    return p


def open_direct(path: str | Path, field: str) -> int:
    """A read-only O_DIRECT descriptor; DriveError if the file system refuses O_DIRECT (tmpfs, some overlays)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError as e:
        if e.errno == errno.EINVAL:
            raise DriveError(field, f"the file system of {str(path)!r} does not support O_DIRECT",
                             "put the file on a real drive (ext4, xfs), not tmpfs") from None
        raise DriveError(field, f"cannot open {str(path)!r} ({e.strerror})", "check the path") from None


class DirectReader:
    """Block reads of one file from `threads` threads, each with one read in flight."""

    def __init__(self, path: str | Path, block_bytes: int = 4096, threads: int = 16, field: str = "path"):
        if block_bytes % 512 or block_bytes <= 0:
            raise ValueError(f"block_bytes must be a positive multiple of 512, got {block_bytes}")
        self.path = Path(path)
        self.block_bytes = block_bytes
        self.threads = max(1, int(threads))
        self.fd = open_direct(self.path, field)
        self.file_blocks = os.fstat(self.fd).st_size // block_bytes
        self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="ssd-read")
        self._lock = threading.Lock()
        self.reads = 0  # block reads made so far

    def __enter__(self) -> DirectReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            self._pool.shutdown(wait=True, cancel_futures=True)
            os.close(self.fd)
            self.fd = -1

    def _read_range(self, blocks: np.ndarray, out: np.ndarray, lo: int, hi: int) -> None:
        fd, size = self.fd, self.block_bytes
        view = memoryview(out.reshape(-1))
        for i in range(lo, hi):
            got = os.preadv(fd, [view[i * size:(i + 1) * size]], int(blocks[i]) * size)
            if got != size:
                raise OSError(errno.EIO, f"short read of block {int(blocks[i])} ({got} of {size} bytes)")

    def read_blocks(self, blocks: np.ndarray, out: np.ndarray) -> float:
        """Read blocks[i] into out[i] (out from aligned_blocks); the threads split the list into
        contiguous shares. Returns the seconds it took."""
        blocks = np.asarray(blocks, dtype=np.int64)
        n = blocks.size
        if n and (blocks.min() < 0 or blocks.max() >= self.file_blocks):
            bad = int(blocks[(blocks < 0) | (blocks >= self.file_blocks)][0])
            raise ValueError(f"block {bad} is outside the file's {self.file_blocks} blocks")
        if out.shape[0] < n or out.shape[1] != self.block_bytes:
            raise ValueError(f"out must be at least [{n}, {self.block_bytes}], got {list(out.shape)}")
        start = time.perf_counter()
        shares = np.linspace(0, n, min(self.threads, max(n, 1)) + 1).astype(np.int64)
        futures = [self._pool.submit(self._read_range, blocks, out, int(a), int(b))
                   for a, b in zip(shares[:-1], shares[1:]) if b > a]
        for f in futures:
            f.result()
        with self._lock:
            self.reads += n
        return time.perf_counter() - start
