"""CPU-side measurements, with the project's own kernels. Each is a generator that fills `raw` and
yields a label after each measurement (the command's progress bar counts them)."""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numba
import numpy as np

from real_runs.hashing import NgramHasher
from real_runs.instrument import cpu_model, memory_gib
from real_runs.timing import fresh_ids, median_time
from tools.calibrate.plan import HASH_CALL_DECODE, HASH_CALL_PREFILL, Sizes
from tools.calibrate.shapes import preset_shapes
from vocab.geometry import table_offsets
from vocab.units import MiB
from workloads.hashing import hash_layer

# Lookups per dedup call measured (a small decode step's to a long prefill's), up to the plan's dedup_lookups.
DEDUP_SIZES = (32, 1 << 12, 1 << 15, 1 << 18)
# A fetch worker's hash and dedup calls run after its gathers have streamed their rows through the caches:
# each timed call follows a pass over this many bytes (two 4 MiB staging chunks, the default staging), so it
# starts with cold caches as there (warm, back to back, a 4,096-token call runs 20-30 % faster).
COLD_CACHE_BYTES = 8 * MiB
# A fetch worker's calls come once a step: its core has idled while the step computed, and the step's other
# work has evicted its caches. Its per-step calls are timed so: a pass over COLD_CACHE_BYTES, then a pause this
# long (here a small call after the pause took 1.5-1.9x one after the pass alone, and 3-13x one back to back:
# the idle core halted, and woke slow and cold; a 4-token hash call 50 us cold, 77-83 us cold and idle, 83-97 us
# in a real decode run's fetch).
IDLE_BEFORE_CALL_S = 0.002
# Sizes with this many repeats (FULL) run the OS probes (time slice, thread wake) whole; fewer (--quick, tests)
# run them briefly.
FULL_REPEATS = 7


def cold_caches(arg=None):
    """setup for time_spread: evict the caches (a pass over COLD_CACHE_BYTES), then hand over `arg`."""
    buf = _cold_buffer()
    buf += 1
    return arg


def idle_then(arg=None):
    """setup for time_spread: the caches evicted, then a pause with the threads idle; hands over `arg`."""
    cold_caches()
    time.sleep(IDLE_BEFORE_CALL_S)
    return arg


@contextlib.contextmanager
def one_numba_thread():
    """Numba's thread count at 1 for the calls inside (a fetch worker hashes on one thread), then as found."""
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(before)


@functools.lru_cache(maxsize=1)
def _cold_buffer() -> np.ndarray:
    return np.ones(COLD_CACHE_BYTES, np.uint8)


def measure_hashing(sizes: Sizes, plan: dict, raw: dict):
    """Tokens/s of NgramHasher (the preset's Engram configuration) on one layer, by threads."""
    engram = preset_shapes().engram
    layer = engram.layer_ids[0]
    rng = np.random.default_rng(0)
    batch = 64
    ids = rng.integers(0, engram.compressed_vocab_size, size=(batch, max(1, sizes.hash_tokens // batch)),
                       dtype=np.int64)
    raw["hash"] = {}
    for t in plan["threads"]:
        hasher = NgramHasher.from_config(engram, threads=t)
        hasher.hash(ids[:, :8], layer)  # compile (or load from cache) outside the timing
        out = hasher.hash(ids, layer)    # reused, as a serving loop reuses its buffers
        s = median_time(lambda: hasher.hash(ids, layer, out=out), sizes.warmup, sizes.repeats)
        raw["hash"][t] = ids.size / s
        yield f"hash {t}T"


def measure_cpu_gather(sizes: Sizes, plan: dict, raw: dict, pin_staging: bool = False):
    """Numba gather_rows into staging: payload GB/s by (row bytes, threads), then its fixed cost per call."""
    import torch  # optional heavy dependency: the staging buffer is a (pinned with a GPU) torch tensor

    from real_runs.stores import HostTable  # imports torch

    max_rb = max(sizes.gather_row_bytes)
    table = HostTable(plan["table_bytes"] // max_rb, max_rb // 2, "bf16", pin=False, fill=False)
    flat = table.bytes.reshape(-1)
    step = 256 * MiB
    for off in range(0, flat.size, step):        # touch every page (an untouched page reads as the zero page)
        flat[off:off + step].fill(1)
    raw["gather_table_bytes"] = table.nbytes
    stage_bytes = max(sizes.gather_payload_bytes, max(sizes.gather_fixed_rows) * 256)
    staging_t = torch.empty(stage_bytes, dtype=torch.uint8, pin_memory=pin_staging)
    staging = staging_t.numpy()
    staging.fill(0)
    rng = np.random.default_rng(1)
    before = numba.get_num_threads()
    try:
        yield from _gather_by_threads(sizes, plan, raw, flat, staging, rng)
        yield from _gather_fixed_cost(sizes, plan, raw, flat, staging, rng)
    finally:
        numba.set_num_threads(before)
        del staging, staging_t, flat
        table.close()


def _gather_by_threads(sizes: Sizes, plan: dict, raw: dict, flat, staging, rng):
    from real_runs.stores import gather_rows  # imports torch

    sets = sizes.warmup + sizes.repeats
    raw["gather"] = {}
    for rb in sizes.gather_row_bytes:
        words = flat.view(np.uint64).reshape(-1, rb // 8)
        n = sizes.gather_payload_bytes // rb
        id_sets = [fresh_ids(rng, words.shape[0], n) for _ in range(sets)]
        out = staging[:n * rb].view(np.uint64).reshape(n, rb // 8)
        for t in plan["threads"]:
            numba.set_num_threads(t)
            gather_rows(words, id_sets[0][:8], out[:8])  # compile outside the timing
            s = median_time(lambda ids: gather_rows(words, ids, out[:ids.size]), sizes.warmup, sizes.repeats,
                            setup=lambda i: id_sets[i % sets])
            raw["gather"][(rb, t)] = float(np.mean([x.size for x in id_sets])) * rb / s / 1e9
            yield f"cpu gather {rb} B {t}T"


def _gather_fixed_cost(sizes: Sizes, plan: dict, raw: dict, flat, staging, rng):
    """Call time by row count: 256 B rows, all threads (the fixed-cost fit's points)."""
    from real_runs.stores import gather_rows  # imports torch

    numba.set_num_threads(plan["max_threads"])
    words = flat.view(np.uint64).reshape(-1, 32)
    raw["gather_fixed"] = {}
    reps = max(sizes.repeats, 15)
    for n in sizes.gather_fixed_rows:
        id_sets = [fresh_ids(rng, words.shape[0], n) for _ in range(8)]
        out = staging[:n * 256].view(np.uint64).reshape(n, 32)
        s = median_time(lambda ids: gather_rows(words, ids, out), sizes.warmup + 2, reps,
                        setup=lambda i: id_sets[i % 8])
        raw["gather_fixed"][n] = s * 1e6
        yield f"cpu gather fixed {n} rows"


def measure_dedup(sizes: Sizes, plan: dict, raw: dict):
    """Lookups/s of the stores' dedup on one thread, each call as the fetch worker makes it: after its hash call
    of a small decode step, itself after the worker idled with cold caches (idle_then)."""
    from real_runs.stores import dedup  # imports torch

    rng = np.random.default_rng(2)
    hash_call, steps = _hash_calls()
    decode = steps[0]

    def after_hash(ids):
        idle_then()
        hash_call(decode)
        return ids

    raw["dedup_curve"] = {}
    with one_numba_thread():
        hash_call(decode)  # compile outside the timing
        # A call's rate by its size (a sort's cost per row grows with it); the largest is dedup_rows_per_s_per_core.
        for n in sorted({*DEDUP_SIZES, sizes.dedup_lookups}):
            if n > sizes.dedup_lookups:
                continue
            sets = [rng.integers(0, 4 * n, size=n, dtype=np.int64) for _ in range(3)]
            s = median_time(lambda ids: dedup(ids, 4 * n), sizes.warmup, sizes.repeats,
                            setup=lambda i: after_hash(sets[i % 3]))
            raw["dedup_curve"][n] = n / s
    raw["dedup"] = raw["dedup_curve"][sizes.dedup_lookups]
    yield "dedup"


def measure_memcpy(sizes: Sizes, plan: dict, raw: dict):
    """Payload GB/s of numpy copies split over threads."""
    src = np.ones(sizes.memcpy_bytes, np.uint8)
    dst = np.zeros_like(src)
    raw["memcpy"] = {}
    for t in plan["threads"]:
        bounds = [(i * src.size // t, (i + 1) * src.size // t) for i in range(t)]
        with ThreadPoolExecutor(t) as pool:
            def copy():
                list(pool.map(lambda b: np.copyto(dst[b[0]:b[1]], src[b[0]:b[1]]), bounds))
            s = median_time(copy, sizes.warmup, sizes.repeats)
        raw["memcpy"][t] = src.nbytes / s / 1e9
        yield f"memcpy {t}T"


def measure_critical_path(sizes: Sizes, plan: dict, raw: dict):
    """The host's critical path of a decode step (placement.hash_on = "critical_path"), on one thread: the
    NumPy reference hash of one Engram layer over the step's B new tokens (one n-gram position each, as a
    harness hashes them: the cost does not depend on the values), and np.sort of the B x rows-per-token row
    ids a zero-copy gather reads sorted. Microseconds by batch B."""
    engram = preset_shapes().engram
    layer = engram.layer_ids[0]
    hasher = NgramHasher.from_config(engram)
    multipliers, table_sizes = hasher.multipliers(layer), hasher.table_sizes(layer)
    rows_per_token = (engram.max_ngram_size - 1) * engram.heads_per_order
    total_rows = sum(sum(heads) for heads in table_sizes)
    rng = np.random.default_rng(7)
    raw["critical_hash"], raw["sort"] = {}, {}
    raw["critical_rows_per_token"] = rows_per_token
    for b in sizes.critical_batches:
        window = rng.integers(0, engram.compressed_vocab_size, size=(1, b), dtype=np.int64)
        s = median_time(lambda: hash_layer(window, multipliers, table_sizes, engram.max_ngram_size,
                                           engram.compressed_pad_id), sizes.warmup, sizes.repeats)
        raw["critical_hash"][b] = s * 1e6
        yield f"critical-path hash B={b}"
        ids = rng.integers(0, total_rows, size=b * rows_per_token, dtype=np.int64)
        raw["sort"][ids.size] = median_time(lambda: np.sort(ids), sizes.warmup, sizes.repeats) * 1e6
        yield f"sort {ids.size} ids"


def _hash_calls():
    """(call(step), steps): the fetch worker's hash call of the preset's first Engram layer (one thread) and the
    steps it is timed on (HASH_CALL_DECODE batches of one token, HASH_CALL_PREFILL chunks)."""
    from real_runs.inputs import StepInput, step_rows
    engram = preset_shapes().engram
    layer = engram.layer_ids[0]
    hasher = NgramHasher.from_config(engram, threads=1)
    offsets = table_offsets(hasher.table_sizes(layer))
    back = engram.max_ngram_size - 1
    rng = np.random.default_rng(11)

    def ids(*shape):
        return rng.integers(0, engram.compressed_vocab_size, size=shape, dtype=np.int64)

    steps = [StepInput(ids=ids(b, 1), lengths=np.ones(b, np.int64), window=ids(b, back + 1))
             for b in HASH_CALL_DECODE]
    steps += [StepInput(ids=ids(b, t), lengths=np.full(b, t * 3 // 4, np.int64), context=ids(b, back))
              for b, t in HASH_CALL_PREFILL]
    return (lambda st: step_rows(hasher, st, layer, offsets)), steps


def measure_hash_call(sizes: Sizes, plan: dict, raw: dict):
    """The fetch worker's whole hash call of one Engram layer (real_runs.inputs.step_rows, one thread: the
    window put together, the kernel over it, the valid tokens picked out, the head offsets added),
    microseconds by the step's tokens, each call as the worker makes it once a step (idle_then)."""
    call, steps = _hash_calls()
    raw["hash_call"] = {}
    for st in steps:
        with one_numba_thread():
            call(st)  # compile outside the timing
            s = median_time(lambda _: call(st), sizes.warmup, max(sizes.repeats, 15), setup=idle_then)
        raw["hash_call"][st.tokens] = s * 1e6
        yield f"hash call {st.tokens} tokens"


SLICE_PROBE_S = 1.0       # how long the two processes share the core
SLICE_GAP_NS = 30_000     # a pause longer than this in a spinning loop is the other process's turn


def _spin(core: int, seconds: float, conn) -> None:
    """Spin on `core` for `seconds`; send the lengths of the uninterrupted runs between pauses (ns)."""
    os.sched_setaffinity(0, {core})
    runs, end = [], time.perf_counter_ns() + int(seconds * 1e9)
    last = start = time.perf_counter_ns()
    while last < end:
        now = time.perf_counter_ns()
        if now - last > SLICE_GAP_NS:
            runs.append(last - start)
            start = now
        last = now
    conn.send(runs[1:])
    conn.close()


def measure_sched_slice(sizes: Sizes, plan: dict, raw: dict):
    """The OS's time slice: two CPU-bound processes on one core, the median length of their runs between the
    other's turns (microseconds). Where the OS does not let a process be pinned to a core, nothing."""
    if not hasattr(os, "sched_setaffinity"):
        yield "sched slice (not measurable here)"
        return
    ctx = multiprocessing.get_context("spawn")   # no fork: this process may run Numba's threads already
    core = min(os.sched_getaffinity(0))
    pipes = [ctx.Pipe(duplex=False) for _ in range(2)]
    seconds = SLICE_PROBE_S if sizes.repeats >= FULL_REPEATS else SLICE_PROBE_S / 4
    procs = [ctx.Process(target=_spin, args=(core, seconds, send), daemon=True) for _, send in pipes]
    try:
        for p in procs:
            p.start()
        runs = [r for recv, _ in pipes for r in recv.recv()]
    finally:
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
    if runs:
        raw["sched_slice_us"] = float(np.median(runs)) / 1e3
        raw["sched_slice_runs_us"] = [float(np.percentile(runs, q)) / 1e3 for q in (10, 50, 90)]
    yield "sched slice"


def wake_probe(calls: int) -> float:
    """Median microseconds of a two-thread gather of one staging chunk (4 MiB of 256 B rows) in this process,
    which idles IDLE_BEFORE_CALL_S before each call, as a worker between its steps' gathers (run in a fresh process under
    each OpenMP wait policy by measure_thread_wake: the runtime reads the policy when it loads)."""
    from real_runs.tables import gather_rows  # imports torch

    rows, n = 1 << 19, 16384
    table = np.ones((rows, 32), np.uint64)
    out = np.zeros((n, 32), np.uint64)
    rng = np.random.default_rng(0)
    sets = [np.sort(rng.choice(rows, n, replace=False)).astype(np.int64) for _ in range(8)]
    numba.set_num_threads(2)
    gather_rows(table, sets[0], out)
    times = []
    for i in range(calls):
        time.sleep(IDLE_BEFORE_CALL_S)
        t0 = time.perf_counter_ns()
        gather_rows(table, sets[i % 8], out)
        times.append(time.perf_counter_ns() - t0)
    return float(np.median(times[3:])) / 1e3


WAKE_PROBE = "import sys; from tools.calibrate.measure_cpu import wake_probe; print(wake_probe(int(sys.argv[1])))"


WAKE_SETTLE_S = 1.0


def measure_thread_wake(sizes: Sizes, plan: dict, raw: dict):
    """host.thread_wake_us: how late a sleeping helper thread joins a parallel call: a two-thread gather with
    OpenMP's passive wait (helpers sleep between calls) less the same with its active one (they spin), each in a
    fresh process (the runtime reads the policy when it loads). Nothing where fewer than 2 threads run."""
    if plan["max_threads"] < 2:
        yield "thread wake (one thread: nothing to wake)"
        return
    root = Path(__file__).resolve().parents[2]
    # This process's own OpenMP threads may still spin after its gathers (the default policy): let them go to
    # sleep first, so that they take no core from the probe; then each policy twice, alternating.
    full = sizes.repeats >= FULL_REPEATS
    time.sleep(WAKE_SETTLE_S if full else WAKE_SETTLE_S / 5)
    runs = {"PASSIVE": [], "ACTIVE": []}
    for policy in ("PASSIVE", "ACTIVE") * (2 if full else 1):
        env = {**os.environ, "OMP_WAIT_POLICY": policy, "PYTHONPATH": str(root)}
        done = subprocess.run([sys.executable, "-c", WAKE_PROBE, str(max(sizes.repeats, 25))], env=env,
                              capture_output=True, text=True, timeout=300, check=True)
        runs[policy].append(float(done.stdout.strip().splitlines()[-1]))
    got = {policy: float(np.median(v)) for policy, v in runs.items()}
    raw["thread_wake"] = got
    raw["thread_wake_us"] = max(0.0, got["PASSIVE"] - got["ACTIVE"])
    yield "thread wake"


def cpu_steps(sizes: Sizes, plan: dict, pin_staging: bool) -> list[tuple]:
    """(name, measure(raw) -> generator) of each CPU measurement step, in order (names: bounds.CPU_STEPS);
    a step can be run again into the same raw (calibrate re-measures a step whose figures look wrong)."""
    return [
        ("hashing", lambda raw: measure_hashing(sizes, plan, raw)),
        ("cpu_gather", lambda raw: measure_cpu_gather(sizes, plan, raw, pin_staging)),
        ("dedup", lambda raw: measure_dedup(sizes, plan, raw)),
        ("memcpy", lambda raw: measure_memcpy(sizes, plan, raw)),
        ("critical_path", lambda raw: measure_critical_path(sizes, plan, raw)),
        ("hash_call", lambda raw: measure_hash_call(sizes, plan, raw)),
        ("sched_slice", lambda raw: measure_sched_slice(sizes, plan, raw)),
        ("thread_wake", lambda raw: measure_thread_wake(sizes, plan, raw)),
    ]


def system_info(plan: dict, raw: dict) -> None:
    raw["system"] = {"cpu": cpu_model(), "cores": os.cpu_count() or 1, "memory_gib": memory_gib(),
                     "numba_threads": plan["max_threads"], "threads": plan["threads"]}
