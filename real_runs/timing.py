"""Timing of small measurements: medians (and the spread) of repeated calls on the host clock or by CUDA events.

Shared by `engram-sim calibrate` (tools/calibrate/) and the GPU benchmarks (real_runs/bench.py),
with the fresh row ids both draw for their gathers.
"""

from __future__ import annotations

import contextlib
import time
from typing import NamedTuple

import numpy as np

# Host warm-up lasts at least this long: idle cores (of a VM especially) take a while to wake
# up, and Numba's worker threads to spin up, after the thread count changes.
# Timed calls likewise go on for at least TIMED_S (at most MAX_CALLS calls), so that a short
# disturbance (another process on a shared machine) cannot move the median.
WARM_S = 0.25
TIMED_S = 0.3
MAX_CALLS = 200

# GPU cycles of a spin kernel queued before each timed call (about 0.5 ms): the host issues the call
# while the GPU spins, so the events time the device work and not Python's launch overhead (which
# kernel_launch_us measures on its own).
HOST_AHEAD_CYCLES = 1_000_000


class Spread(NamedTuple):
    """Seconds of one measurement's timed repeats: the fastest, the median (the figure) and the slowest."""
    min: float
    median: float
    max: float
    repeats: int


# Lists that every Spread measured is appended to while recording_spreads() is open (calibrate checks them).
_recorders: list[list] = []


@contextlib.contextmanager
def recording_spreads():
    """A list that collects the Spread of every timing made while the block runs."""
    seen: list[Spread] = []
    _recorders.append(seen)
    try:
        yield seen
    finally:
        _recorders.remove(seen)


def _spread(times: list) -> Spread:
    a = np.asarray(times, float)
    out = Spread(max(float(a.min()), 1e-9), max(float(np.median(a)), 1e-9), max(float(a.max()), 1e-9), a.size)
    for seen in _recorders:
        seen.append(out)
    return out


def time_spread(fn, warmup: int, repeats: int, setup=None) -> Spread:
    """Spread of the seconds of fn() by time.perf_counter.

    Warm-up: at least `warmup` untimed calls and WARM_S seconds of them; then at least
    `repeats` timed calls and TIMED_S seconds of them (at most MAX_CALLS calls each).
    setup(i) (untimed) runs before call i and returns fn's argument when given."""
    i = 0
    start = time.perf_counter()
    while i < warmup or (time.perf_counter() - start < WARM_S and i < MAX_CALLS):
        fn(setup(i)) if setup else fn()
        i += 1
    times = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start < TIMED_S and len(times) < MAX_CALLS):
        arg = setup(i) if setup else None
        t0 = time.perf_counter()
        fn(arg) if setup else fn()
        times.append(time.perf_counter() - t0)
        i += 1
    return _spread(times)


def median_time(fn, warmup: int, repeats: int, setup=None) -> float:
    """Median seconds of fn() by time.perf_counter (time_spread's median)."""
    return time_spread(fn, warmup, repeats, setup).median


def cuda_time_spread(fn, warmup: int, repeats: int, setup=None) -> Spread:
    """Spread of the seconds of fn() by CUDA events on the current stream after `warmup` untimed calls."""
    import torch  # optional heavy dependency: only GPU measurements come here

    total = warmup + repeats
    times = []
    for i in range(total):
        arg = setup(i) if setup else None
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(HOST_AHEAD_CYCLES)
        start.record()
        fn(arg) if setup else fn()
        end.record()
        end.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end) * 1e-3)
    return _spread(times)


def cuda_median_time(fn, warmup: int, repeats: int, setup=None) -> float:
    """Median seconds of fn() by CUDA events (cuda_time_spread's median)."""
    return cuda_time_spread(fn, warmup, repeats, setup).median


def thread_counts(max_threads: int, all_counts: bool) -> list[int]:
    """1, 2, 4, ... and max_threads (quick: 1 and max_threads)."""
    out = {1, max_threads}
    if all_counts:
        t = 2
        while t < max_threads:
            out.add(t)
            t *= 2
    return sorted(out)


def fresh_ids(rng, footprint_rows: int, n: int) -> np.ndarray:
    """n distinct row ids drawn uniformly from [0, footprint_rows), sorted (int64)."""
    n = min(n, footprint_rows)
    draw = n
    while True:
        ids = np.unique(rng.integers(0, footprint_rows, size=draw + 8))
        if ids.size >= n:
            break
        draw = int(draw * 1.5) + 8
    if ids.size > n:
        ids = np.sort(rng.choice(ids, size=n, replace=False))
    return ids.astype(np.int64)
