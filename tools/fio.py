"""fio (Debian's package `fio`) on calibrate's drive test file: the job lines that match the SSD store's
reads, and the figures read from fio's JSON output. The drive benchmark (tools/drive_bench.py) uses it.

Matching settings: psync with numjobs = our reader's threads, so both keep `depth` synchronous reads in
flight; direct=1 (O_DIRECT, as DirectReader); random 4 KiB reads over the whole file, fresh offsets.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import NamedTuple

from vocab.errors import UserError

FIO = "fio"


class FioError(UserError):
    """fio failed or printed something that is not its JSON report."""


class FioResult(NamedTuple):
    iops: float
    clat_mean_us: float     # completion latency: submission to completion of one read
    gbps: float             # payload bytes per second / 1e9


def fio_path() -> str | None:
    """Where fio is, or None when it is not installed."""
    return shutil.which(FIO)


def _common(path, size_bytes: int, runtime_s: float) -> list[str]:
    return [FIO, f"--filename={path}", f"--size={size_bytes}", "--direct=1", "--readonly", "--group_reporting",
            "--time_based", f"--runtime={runtime_s:g}", "--ramp_time=0.5", "--output-format=json"]


def random_read_args(path, size_bytes: int, depth: int, runtime_s: float, engine: str = "psync",
                     block_bytes: int = 4096) -> list[str]:
    """fio random reads of block_bytes: psync with `depth` jobs (one read in flight each), or an async engine
    (libaio) with one job and iodepth = depth."""
    jobs, iodepth = (depth, 1) if engine == "psync" else (1, depth)
    return _common(path, size_bytes, runtime_s) + [
        "--name=randread", "--rw=randread", f"--bs={block_bytes}", f"--ioengine={engine}",
        f"--numjobs={jobs}", f"--iodepth={iodepth}", "--norandommap", "--randrepeat=0"]


def seq_read_args(path, size_bytes: int, threads: int, runtime_s: float, block_bytes: int) -> list[str]:
    """fio sequential reads of block_bytes from `threads` jobs, each over its own contiguous share of the file
    (as DirectReader splits a list of consecutive blocks)."""
    share = size_bytes // threads // block_bytes * block_bytes
    return _common(path, share, runtime_s) + [
        "--name=seqread", "--rw=read", f"--bs={block_bytes}", "--ioengine=psync", f"--numjobs={threads}",
        f"--offset_increment={share}"]


def parse_fio_json(text: str) -> FioResult:
    """The read figures of fio's --output-format=json report (group_reporting: the first job holds them all).
    fio may print warnings before the JSON; they are skipped."""
    start = text.find("{")
    try:
        data = json.loads(text[start:]) if start >= 0 else None
        read = data["jobs"][0]["read"]
        clat_us = read["clat_ns"]["mean"] / 1e3 if "clat_ns" in read else read["clat"]["mean"]  # fio < 3 gave us
        return FioResult(float(read["iops"]), float(clat_us), float(read["bw_bytes"]) / 1e9)
    except (TypeError, ValueError, KeyError, IndexError):
        raise FioError("fio", f"its output is not a JSON report with read figures ({text[:80]!r})",
                       "run the fio line by hand to see why") from None


def run_fio(args: list[str]) -> FioResult:
    """Run fio and read its report; FioError (one line) when it fails."""
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        why = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise FioError("fio", f"exited {done.returncode} ({why[0] if why else 'no message'})",
                       "run the fio line by hand to see why")
    return parse_fio_json(done.stdout)
