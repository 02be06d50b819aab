"""The drive calibrate measures (--ssd-path): checks of the folder, facts about its device and file system,
and the test file the reads go to, which is always removed afterwards (success, error or Ctrl-C).

The file is written with ordinary writes of random bytes (a virtual disk may store zeros sparsely and
answer them without reading), fsynced, and its pages dropped from the page cache; the reads then use
O_DIRECT (real_runs/direct_io.py), so neither the page cache nor a zero page serves them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from real_runs.direct_io import DriveError, check_drive_folder, open_direct
from vocab.files import removed_after
from vocab.units import GiB, MiB

FIELD = "--ssd-path"
TEST_FILE_NAME = ".engram-sim-drive-test.bin"
WRITE_CHUNK_BYTES = 64 * MiB
# The test file's size is a whole number of these (the largest block the sequential reads use).
FILE_GRAIN_BYTES = MiB
MIN_FILE_BYTES = 4 * MiB
MAX_FILE_GIB = 256.0
# File systems in memory: newer kernels accept O_DIRECT on tmpfs, but its reads never reach a drive.
MEMORY_FILE_SYSTEMS = frozenset({"tmpfs", "ramfs", "devtmpfs"})


@dataclasses.dataclass(frozen=True)
class DriveFacts:
    """What the profile's provenance says of the drive, read before the test file is written."""
    folder: str
    device: str         # from /proc/mounts, e.g. /dev/vda
    fs_type: str        # e.g. ext4
    mount_point: str
    st_dev: str         # major:minor of the folder's device
    free_bytes: int     # free space of the file system (the profile's capacity_gib)
    block_bytes: int    # the file system's preferred I/O size (st_blksize)
    rotational: str     # "0", "1", or "unknown" (from /sys/dev/block/MAJ:MIN/queue/rotational)

    def describe(self) -> str:
        return (f"{self.device} ({self.fs_type}, mounted at {self.mount_point}, st_dev {self.st_dev}, "
                f"rotational {self.rotational})")


def _mount_of(folder: Path) -> tuple[str, str, str]:
    """(device, file system type, mount point) of the longest mount point above folder in /proc/mounts."""
    best = ("unknown", "unknown", "/")
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return best
    real = str(folder.resolve())
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        device, mount, fs = parts[0], parts[1].replace("\\040", " "), parts[2]
        inside = real == mount or real.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best[2]):
            best = (device, fs, mount)
    return best


def _rotational(major: int, minor: int) -> str:
    for path in (f"/sys/dev/block/{major}:{minor}/queue/rotational",
                 f"/sys/dev/block/{major}:{minor}/../queue/rotational"):   # a partition: its disk's
        with contextlib.suppress(OSError):
            return Path(path).read_text().strip()
    return "unknown"


def drive_facts(folder: Path) -> DriveFacts:
    st = os.stat(folder)
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    device, fs, mount = _mount_of(folder)
    return DriveFacts(str(folder.resolve()), device, fs, mount, f"{major}:{minor}", shutil.disk_usage(folder).free,
                      int(st.st_blksize), _rotational(major, minor))


def read_block_bytes(facts: DriveFacts) -> int:
    """4 KiB, or the file system's preferred I/O size if that is a larger power of two (up to 1 MiB)."""
    b = facts.block_bytes
    return b if 4096 < b <= FILE_GRAIN_BYTES and b & (b - 1) == 0 else 4096


def drive_file_bytes(size_gib: float | None, default_bytes: int) -> int:
    """The test file's size from --ssd-size-gib (else default_bytes), whole MiB; DriveError when out of range."""
    if size_gib is None:
        return default_bytes
    if not (MIN_FILE_BYTES / GiB <= size_gib <= MAX_FILE_GIB):      # also refuses nan
        raise DriveError("--ssd-size-gib", f"got {size_gib:g}", f"use at least {MIN_FILE_BYTES / GiB:g} and at "
                         f"most {MAX_FILE_GIB:g} GiB")
    return int(size_gib * GiB) // FILE_GRAIN_BYTES * FILE_GRAIN_BYTES


def check_ssd_folder(folder: str, size_bytes: int) -> DriveFacts:
    """The folder's facts if it can hold and serve the test file: an existing writable folder with room, on a
    file system on a drive that accepts O_DIRECT (probed on a tiny file, removed). Else one DriveError naming --ssd-path."""
    path = check_drive_folder(folder, size_bytes, FIELD)
    facts = drive_facts(path)
    if facts.fs_type in MEMORY_FILE_SYSTEMS:
        raise DriveError(FIELD, f"{folder!r} is on {facts.fs_type}, in memory, not on a drive",
                         "give a folder on the drive to measure (ext4, xfs)")
    with removed_after(path / TEST_FILE_NAME) as probe:
        try:
            probe.write_bytes(b"\0" * 4096)
        except OSError as e:
            raise DriveError(FIELD, f"cannot write in {folder!r} ({e.strerror})", "give a folder you can write "
                             "to") from None
        os.close(open_direct(probe, FIELD))
    return facts


def _write_random(path: Path, size_bytes: int) -> None:
    rng = np.random.default_rng(0)
    with open(path, "wb") as f, tqdm(total=size_bytes, desc="drive test file", unit="B", unit_scale=True,
                                     file=sys.stderr, dynamic_ncols=True, leave=False) as bar:
        left = size_bytes
        while left:
            n = min(WRITE_CHUNK_BYTES, left)
            f.write(rng.bytes(n))
            left -= n
            bar.update(n)
        f.flush()
        os.fsync(f.fileno())
        # written pages are clean now; drop them, so that nothing of the file sits in the page cache
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


@contextlib.contextmanager
def drive_test_file(folder: str | Path, size_bytes: int):
    """The path of a test file of size_bytes random bytes in folder, for the block; removed afterwards.
    A write that fails (a full disk) is one DriveError naming --ssd-path."""
    with removed_after(Path(folder) / TEST_FILE_NAME) as path:
        try:
            _write_random(path, size_bytes)
        except OSError as e:
            raise DriveError(FIELD, f"writing the {size_bytes / GiB:.2f} GiB test file in {str(folder)!r} failed "
                             f"({e.strerror or e})", "free space or use a smaller --ssd-size-gib") from None
        yield path
