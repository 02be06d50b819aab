"""Drive measurements (--ssd-path) with the SSD store's own read path, real_runs/direct_io.DirectReader:
O_DIRECT block reads from a pool of threads, one read in flight per thread, so the reads in flight are
the threads. Each is a generator that fills raw["ssd"] and yields a label after each measurement.

- random block reads of read_block_bytes at each depth (threads) of Sizes.ssd_depths: reads/s, and the
  mean latency of one read, the threads' busy time per read (depth x seconds / reads; each thread is busy
  the whole call, so this is Little's law for a closed loop of `depth` readers);
- sequential reads of large aligned blocks from a few threads, each its own contiguous share: GB/s;
- the host CPU one read costs at depth 1 (the process's CPU time over a batch of reads, per read);
- read calls of few reads (CALL_READS, one read per thread of a CALL_THREADS-thread reader, as the store
  splits a small fetch): their seconds beyond one read's latency at that depth are the call's fixed cost
  plus a hand-off per thread (fitted in assemble_ssd.py: read_call_fixed_us, read_handoff_us).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from real_runs.direct_io import DirectReader, aligned_blocks
from real_runs.timing import time_spread
from tools.calibrate.drive import FIELD
from tools.calibrate.measure_cpu import idle_then
from tools.calibrate.plan import Sizes
from vocab.records import H2D_LINK, SSD_READ

# In quick mode a depth whose IOPS is under this many times the best so far ends the ladder.
STILL_RISING = 1.05
# Read calls of these many reads, on a reader of the store's default thread count (placement.ssd_threads).
CALL_READS = (1, 2, 4, 8, 16)
CALL_THREADS = 16
# A store's calls come once a step, after its threads have slept and the step's other work has evicted the
# caches: each is timed after measure_cpu.idle_then (1.3-1.5x slower here than one right after another).
CALL_MIN_REPEATS = 21   # calls take a fraction of a millisecond: enough of them for a steady median


def measure_random_reads(sizes: Sizes, path, block_bytes: int, raw: dict):
    """Reads/s and mean latency (us) of random block reads by depth: raw["ssd"]["random"][depth]."""
    rng = np.random.default_rng(3)
    points = raw["ssd"]["random"] = {}
    best, flat = 0.0, False
    for depth in sizes.ssd_depths:
        if flat:
            yield f"ssd depth {depth} skipped"      # the curve has flattened: deeper queues add nothing here
            continue
        n = depth * sizes.ssd_reads_per_thread
        out = aligned_blocks(n, block_bytes)
        with DirectReader(path, block_bytes, threads=depth, field=FIELD) as reader:
            fresh = (lambda _: rng.integers(0, reader.file_blocks, size=n))   # new blocks each call, untimed
            s = time_spread(lambda blocks: reader.read_blocks(blocks, out), sizes.warmup, sizes.repeats,
                            setup=fresh).median
        points[depth] = {"iops": n / s, "latency_us": depth * s / n * 1e6, "reads": n}
        flat = sizes.ssd_stop_when_flat and len(points) >= 3 and n / s < STILL_RISING * best
        best = max(best, n / s)
        yield f"ssd random reads depth {depth}"


def measure_seq_reads(sizes: Sizes, path, raw: dict):
    """GB/s of sequential reads of ssd_seq_block_bytes blocks from ssd_seq_threads threads."""
    block = sizes.ssd_seq_block_bytes
    with DirectReader(path, block, threads=sizes.ssd_seq_threads, field=FIELD) as reader:
        k = max(1, min(reader.file_blocks, sizes.ssd_seq_call_bytes // block))
        out = aligned_blocks(k, block)
        starts = reader.file_blocks - k + 1
        # each call reads the next contiguous k blocks (wrapping), so calls do not re-read one range
        s = time_spread(lambda blocks: reader.read_blocks(blocks, out), sizes.warmup, sizes.repeats,
                        setup=lambda i: np.arange(k) + (i * k) % starts).median
    raw["ssd"]["seq"] = {"gbps": k * block / s / 1e9, "block_bytes": block, "threads": sizes.ssd_seq_threads,
                         "call_bytes": k * block}
    yield "ssd sequential reads"


def measure_read_cpu(sizes: Sizes, path, block_bytes: int, raw: dict):
    """Microseconds of host CPU (the whole process: the reading threads and the pool's hand-off) per random
    block read with the store's CALL_THREADS reader threads each keeping one in flight (where the cores can
    bind the rate: at depth 1 each read also pays an idle core's halt and wake, 26-37 us a read here against
    18 us at depth 16), median over batches of ssd_cpu_reads (at least a read per thread)."""
    rng = np.random.default_rng(4)
    n = max(sizes.ssd_cpu_reads, CALL_THREADS)
    out = aligned_blocks(n, block_bytes)
    per_read = []
    with DirectReader(path, block_bytes, threads=CALL_THREADS, field=FIELD) as reader:
        for i in range(sizes.warmup + sizes.repeats):
            blocks = rng.integers(0, reader.file_blocks, size=n)
            before = time.process_time()      # CLOCK_PROCESS_CPUTIME_ID: precise, unlike getrusage's ticks
            reader.read_blocks(blocks, out)
            if i >= sizes.warmup:
                per_read.append((time.process_time() - before) / n * 1e6)
    raw["ssd"]["read_cpu_us"] = float(np.median(per_read))
    raw["ssd"]["read_cpu_spread_us"] = (min(per_read), float(np.median(per_read)), max(per_read))
    raw["ssd"]["read_cpu_threads"] = CALL_THREADS
    yield "ssd CPU per read"


def measure_read_calls(sizes: Sizes, path, block_bytes: int, raw: dict):
    """Median seconds of one read call of n random blocks (n in CALL_READS) on CALL_THREADS threads:
    raw["ssd"]["calls"][n]."""
    rng = np.random.default_rng(5)
    calls = raw["ssd"]["calls"] = {}
    out = aligned_blocks(max(CALL_READS), block_bytes)
    with DirectReader(path, block_bytes, threads=CALL_THREADS, field=FIELD) as reader:
        for n in CALL_READS:
            fresh = (lambda _, n=n: idle_then(rng.integers(0, reader.file_blocks, size=n)))   # new blocks each call
            calls[n] = time_spread(lambda blocks: reader.read_blocks(blocks, out), sizes.warmup,
                                   max(sizes.repeats, CALL_MIN_REPEATS), setup=fresh).median
    yield "ssd read calls"


# The SSD store's own work around its reads is timed on a small table in the measured folder: calls of these
# many unique rows (a decode step's, a prefill step's), without and with a DRAM cache of a quarter of it.
STORE_ROWS = (32, 512)
STORE_TABLE_ROWS = 1 << 16   # 256 B rows: a 16 MiB table file
STORE_ROW_VALUES = 128       # bf16 values a row (256 B)


def measure_store_calls(sizes: Sizes, path, block_bytes: int, raw: dict):
    """The SSD store's own CPU work per call (real_runs/ssd_store.SsdStore.prefetch on the CPU: the DRAM
    cache's lookups and update, the block list, the rows picked out of their blocks and put in the cache),
    i.e. the call's time less its drive reads, its copies and its dedup, by unique rows and DRAM cache:
    raw["ssd"]["store"] = [{"rows", "cache", "us"}]."""
    from real_runs.ssd_store import SsdStore, SsdTable  # imports torch
    from real_runs.tables import dedup

    rng = np.random.default_rng(9)
    folder = Path(path).parent if Path(path).is_file() else Path(path)
    table = SsdTable(STORE_TABLE_ROWS, STORE_ROW_VALUES, "bf16", seed=1, folder=folder, block_bytes=block_bytes)
    points = raw["ssd"]["store"] = []
    try:
        for cache_rows in (0, STORE_TABLE_ROWS // 4):
            store = SsdStore(table, "cpu", threads=CALL_THREADS, dram_cache_rows=cache_rows)
            try:
                for n in STORE_ROWS:
                    own = []
                    for i in range(sizes.warmup + max(sizes.repeats, CALL_MIN_REPEATS)):
                        ids = idle_then(rng.choice(STORE_TABLE_ROWS, size=n, replace=False))
                        d0 = time.perf_counter_ns()
                        dedup(ids, STORE_TABLE_ROWS)
                        d1 = time.perf_counter_ns()
                        f = store.prefetch(ids)
                        io = sum(b - a for actor, _, a, b in f.events if actor in (SSD_READ, H2D_LINK))
                        if i >= sizes.warmup:
                            own.append(max(0, f.issued_ns - f.start_ns - io - (d1 - d0)) / 1e3)
                    points.append({"rows": n, "cache": cache_rows > 0, "us": float(np.median(own))})
            finally:
                store.close()
    finally:
        table.close()
    yield "ssd store calls"


def measure_drive(sizes: Sizes, path, block_bytes: int, raw: dict):
    """All the drive's measurements into raw["ssd"] (a re-run replaces them)."""
    raw["ssd"] = {"block_bytes": block_bytes, "depths_asked": list(sizes.ssd_depths)}
    yield from measure_random_reads(sizes, path, block_bytes, raw)
    yield from measure_seq_reads(sizes, path, raw)
    yield from measure_read_cpu(sizes, path, block_bytes, raw)
    yield from measure_read_calls(sizes, path, block_bytes, raw)
    yield from measure_store_calls(sizes, path, block_bytes, raw)


def drive_count(sizes: Sizes) -> int:
    """Labels measure_drive yields (the progress bar's share)."""
    return len(sizes.ssd_depths) + 4


def ssd_steps(sizes: Sizes, path, block_bytes: int) -> list[tuple]:
    """(name, measure(raw)) of the drive step (name: bounds.SSD_STEPS)."""
    return [("ssd", lambda raw: measure_drive(sizes, path, block_bytes, raw))]
