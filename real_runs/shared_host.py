"""Shared-host contention, measured: several gather worker processes read ONE host table, as several GPUs'
fetch workers of a server would.

    record = measure_shared_host(load_config("real_runs/records/shared-host.toml"), workers=[1, 2, 4],
                                 threads=[1, 2], steps=200)

Each point runs `workers` processes, each with the real host_dma store (real_runs/stores.py HostDMAStore:
dedup, the Numba `gather_rows` kernel on `gather_threads` threads into double-buffered staging chunks of
placement.staging_chunk_mib, each chunk then copied to the destination: on CPU a memcpy by the same thread,
on a GPU machine a DMA). The workers step in lock-step: a barrier per step, as the GPUs of a server each
launch their fetch when their step's tokens exist, and every worker then fetches its step's rows for every
Engram layer. The tokens are the config's real trace (real_runs/inputs.py: the tokens the simulator
hashes); with rows = "per_worker" worker w reads the
steps of workload.seed + w (each GPU its own requests), with "same" all read the seed's steps. As the
runner's fetch worker, each worker first hashes its step's tokens (the Numba kernel, hash_threads).

The tables are HostTables (anonymous private mmap, huge pages where the kernel gives them) filled in the
parent before the workers fork: every worker reads the same physical pages (nothing writes them, so copy
on write never copies). Forking is why the parent must not have started Numba's OpenMP threads (which
forbid a fork): it fills the tables serially, and measure_shared_host refuses a process that
has already run a parallel Numba kernel. Times are time.perf_counter_ns (CLOCK_MONOTONIC: one clock for
all processes). What the record holds: real_runs/shared_host_record.py.
"""

from __future__ import annotations

# real_runs modules are imported only to run real things: torch (the stores' dependency) loads with them.
import multiprocessing
import multiprocessing.connection
import signal
import time
import traceback
from contextlib import contextmanager

import numba
import numpy as np
from numba.np.ufunc import parallel as numba_parallel

from real_runs.hashing import NgramHasher
from real_runs.inputs import step_rows, workload_inputs
from real_runs.instrument import available_gib
from real_runs.runner import numba_threads
from real_runs.shared_host_record import STEP_FIELDS, cpu_snapshot, new_record, point_record
from real_runs.stores import make_store
from real_runs.tables import _FILL_KIND, HostTable, _fill
from vocab.config import RunConfig
from vocab.errors import ConfigError
from vocab.geometry import table_offsets
from vocab.placements import HOST_DMA
from vocab.records import CPU_GATHER, H2D_LINK

ROW_MODES = ("per_worker", "same")
# Where each chunk's copy out of staging goes (the store's device). none: torch's meta device, so the copy is
# dispatched but moves no bytes, as on a GPU machine, where a copy engine moves them and no core is busy;
# memcpy: host memory, exactly the CPU run's path (a fresh destination per fetch: page faults and a memcpy
# on the gathering thread, several times the gather itself on this VM).
COPY_DEVICES = {"none": "meta", "memcpy": "cpu"}
# A step never takes this long; a worker waiting longer at the barrier has lost a sibling (it died).
BARRIER_TIMEOUT_S = 120.0
FILL_CHUNK_BYTES = 256 << 20   # the fill's rows per call, as HostTable's own fill


def numba_threads_started() -> bool:
    """Whether this process has run a parallel Numba kernel (its OpenMP threads then forbid a fork)."""
    return bool(getattr(numba_parallel, "_is_initialized", False))


# -- the tables and the row ids ----------------------------------------------------------------------

_serial_fill = None


def serial_host_table(rows: int, values_per_row: int, dtype: str, seed: int) -> HostTable:
    """A HostTable with the contents real_runs/tables.py's parallel fill gives, filled on this thread only
    (the same kernel compiled without `parallel`): no Numba threads start, so the process may fork after."""
    global _serial_fill
    if _serial_fill is None:
        _serial_fill = numba.njit(nogil=True)(_fill.py_func)
    table = HostTable(rows, values_per_row, dtype, seed=seed, fill=False)
    kind, word = _FILL_KIND[dtype]
    values = table.bytes.view(word)
    step = max(1, FILL_CHUNK_BYTES // table.row_bytes)
    t0 = time.perf_counter()
    for r0 in range(0, rows, step):
        _serial_fill(values[r0:r0 + step], r0, seed, kind)
    table.filled, table.fill_s = True, time.perf_counter() - t0
    return table


@contextmanager
def shared_tables(cfg: RunConfig):
    """cfg's Engram tables, one per layer (the real runner's seeds), unmapped when the block ends."""
    e = cfg.engram
    tables = {}
    try:
        for layer in sorted(e.layer_ids):
            tables[layer] = serial_host_table(e.layer_rows(layer), e.values_per_row, e.table_dtype,
                                              seed=e.seed * 1_000_003 + layer)
        yield tables
    finally:
        for t in tables.values():
            t.close()


def trace_inputs(cfg: RunConfig, steps: int, seed: int) -> list:
    """`steps` step inputs of the workload drawn from `seed` (the real runner's for workload.seed = seed). As in
    the simulator's trace, the first workload.tokens.trace_steps steps are drawn and longer runs cycle through
    them (the list repeats those steps)."""
    distinct = max(1, min(steps, cfg.workload.tokens.trace_steps))
    _, inputs = workload_inputs(cfg, distinct, np.random.default_rng(seed))
    return [inputs[s % distinct] for s in range(steps)]


# -- one point: N workers in lock-step ---------------------------------------------------------------

def _worker(index: int, cfg: RunConfig, tables: dict, inputs: list, copy: str, barrier, conn) -> None:
    """A forked worker, as the runner's fetch worker (real_runs/fetch_worker.py): per step it hashes the
    step's tokens for every Engram layer (Numba, hash_threads), then the real host_dma store over the shared
    tables fetches each layer's rows (gather_threads)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # the parent handles Ctrl-C and stops the workers
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        hash_threads, gather_threads = numba_threads(cfg)
        hasher = NgramHasher.from_config(cfg.engram, threads=hash_threads)
        offsets = {layer: table_offsets(hasher.table_sizes(layer)) for layer in tables}
        stores = {layer: make_store(HOST_DMA, table, COPY_DEVICES[copy], name=f"L{layer}", placement=cfg.placement)
                  for layer, table in tables.items()}
        out = np.zeros((len(inputs), len(STEP_FIELDS)), np.int64)
        for s, step in enumerate(inputs):
            barrier.wait(BARRIER_TIMEOUT_S)
            out[s, 0] = time.perf_counter_ns()
            ids = {layer: step_rows(hasher, step, layer, offsets[layer]) for layer in tables}
            out[s, 1] = time.perf_counter_ns()
            numba.set_num_threads(gather_threads)
            fetches = [stores[layer].prefetch(ids[layer], tag=(s, layer)) for layer in tables]
            out[s, 2] = time.perf_counter_ns()
            gathers = [(a, b) for f in fetches for actor, _, a, b in f.events if actor == CPU_GATHER]
            copies = sum(b - a for f in fetches for actor, _, a, b in f.events if actor == H2D_LINK)
            if gathers:
                out[s, 3], out[s, 4] = min(a for a, _ in gathers), max(b for _, b in gathers)
            out[s, 5] = sum(b - a for a, b in gathers)
            out[s, 6:] = copies, sum(f.unique_rows for f in fetches), len(gathers)
        conn.send(("ok", index, out))
    except BaseException as exc:  # hand the error to the parent; the siblings stop at the barrier
        barrier.abort()
        conn.send(("error", index, "".join(traceback.format_exception_only(type(exc), exc)).strip()))
    finally:
        conn.close()


def run_point(cfg: RunConfig, tables: dict, inputs_by_worker: list, workers: int, copy: str = "none") -> np.ndarray:
    """[workers, steps, STEP_FIELDS] from `workers` forked processes (worker w runs inputs_by_worker[w]);
    on any failure or Ctrl-C every worker is killed before this returns or raises."""
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(workers)
    procs, conns = [], {}
    try:
        # Workers start with SIGINT blocked (then ignore it): a Ctrl-C while they start reaches the parent only.
        masked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            for w in range(workers):
                recv, send = ctx.Pipe(duplex=False)
                conns[recv] = p = ctx.Process(target=_worker, name=f"engram-gather-{w}", daemon=True,
                                              args=(w, cfg, tables, inputs_by_worker[w], copy, barrier, send))
                p.start()
                procs.append(p)
                send.close()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, masked)   # a Ctrl-C held meanwhile is raised here
        return np.stack(_collect(conns, workers))
    finally:
        barrier.abort()
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join()
        for c in conns:
            c.close()


def _collect(conns: dict, workers: int) -> list[np.ndarray]:
    """Each worker's step table, by worker index; RuntimeError naming the first worker that failed."""
    results: list = [None] * workers
    pending = dict(conns)
    while pending:
        for conn in multiprocessing.connection.wait(list(pending), timeout=1.0):
            try:
                status, index, payload = conn.recv()
            except EOFError:   # the worker died without a word (killed, out of memory)
                p = pending[conn]
                p.join(5)
                raise RuntimeError(f"gather worker {p.name} died (exit code {p.exitcode})") from None
            if status != "ok":
                raise RuntimeError(f"gather worker {index} failed: {payload}")
            results[index] = payload
            del pending[conn]
    return results


# -- the measurement -----------------------------------------------------------------------------------

def check_request(cfg: RunConfig, rows: str, copy: str) -> None:
    """ConfigError for what cannot be measured: not host_dma, or a table the free memory cannot hold."""
    if cfg.placement.kind != HOST_DMA:
        raise ConfigError("placement.kind", f"the shared-host gather measures host_dma, not {cfg.placement.kind}",
                          "use a config with placement.kind = 'host_dma' (e.g. real_runs/records/shared-host.toml)")
    if rows not in ROW_MODES:
        raise ConfigError("--rows", f"{rows!r} is not one of {', '.join(ROW_MODES)}", "use per_worker or same")
    if copy not in COPY_DEVICES:
        raise ConfigError("--copy", f"{copy!r} is not one of {', '.join(COPY_DEVICES)}", "use none or memcpy")
    need = cfg.engram.total_table_bytes / (1 << 30)
    if need > available_gib() - 1.0:
        raise ConfigError("engram.table_gib", f"the tables ({need:.2f} GiB) do not fit the {available_gib():.1f} "
                          "GiB of memory available now (less 1 GiB for the workers)", "use a smaller --table-gib")


def measure_shared_host(cfg: RunConfig, workers: list[int], threads: list[int], steps: int, warmup: int = 3,
                        rows: str = "per_worker", copy: str = "none", progress=None) -> dict:
    """The record (real_runs/shared_host_record.py) of every (workers, gather threads) point."""
    check_request(cfg, rows, copy)
    if numba_threads_started():
        raise RuntimeError("this process has run a parallel Numba kernel, whose OpenMP threads forbid the fork "
                           "that starts the gather workers: measure from a fresh process (engram-sim shared-host)")
    seeds = [cfg.workload.seed + (w if rows == "per_worker" else 0) for w in range(max(workers))]
    trace = {seed: trace_inputs(cfg, warmup + steps, seed) for seed in dict.fromkeys(seeds)}
    record = new_record(cfg, workers, threads, steps, warmup, rows, copy)
    with shared_tables(cfg) as tables:
        record["tables"]["fill_s"] = sum(t.fill_s for t in tables.values())
        for t in threads:
            point_cfg = cfg.with_placement(gather_threads=t)
            for n in workers:
                cpu_before, t0 = cpu_snapshot(), time.perf_counter_ns()
                result = run_point(point_cfg, tables, [trace[seeds[w]] for w in range(n)], n, copy)
                record["points"].append(point_record(result[:, warmup:], n, t, t0, cpu_before))
                # the store runs at most Numba's thread count (HostDMAStore caps it)
                record["points"][-1]["gather_threads_used"] = min(t, numba.config.NUMBA_NUM_THREADS)
                if progress:
                    progress(record["points"][-1])
    return record
