"""The shared-host gather record (real_runs/shared_host.py): what each point measured, in seconds.

A point is (workers, gather_threads), its measured steps after the warm-up. Per worker and step:
- gather:      the worker's CPU_GATHER intervals, exactly the store's: each staging chunk's Numba
               gather_rows call (table -> staging), nothing else. `worker_gather_s` is their sum over the
               step's chunks and layers (busy time), `worker_gather_span_s` the first chunk's start to the
               last chunk's end (the copies of earlier chunks fall inside it).
- copy:        the H2D_LINK intervals, staging -> destination. With copy = "none" (the default) the
               destination is torch's meta device: the copy is dispatched and moves nothing, as on a GPU
               machine no core moves it (a copy engine does); with "memcpy" it is the CPU run's memcpy
               into fresh host memory by the gathering thread. `worker_copy_s` is their sum.
- hash:        the step's hashing for every layer (the Numba kernel on hash_threads), first, as the runner's
               fetch worker does (CPU_HASH). `worker_hash_s`.
- fetch:       from the step's start (the barrier) to the last layer's store.prefetch end: the hashing, then
               per layer dedup, the gathers, the copies. `worker_fetch_s`.
Per step, over the workers (all start at one barrier):
- gather_makespan_s: the last worker's last gather end less the first worker's first gather start, the
               span of the step's CPU_GATHER intervals over all GPUs of a server DES.
- fetch_makespan_s:  the last worker's fetch end less the first worker's start.
- start_skew_s:      the last worker's start less the first's (how tightly the barrier released them).
`summary` gives min/median/max/mean of each (per-worker figures over all workers and steps); `workers_table`
the per-worker, per-step values (times in seconds from the point's start), `steps_table` the per-step makespans.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from real_runs.instrument import describe_machine
from vocab.config import RunConfig
from vocab.files import atomic_write_text

# Not a run record (vocab/records.py SCHEMA): `engram-sim compare` names this schema when it skips one.
SCHEMA = "engram-sim.shared-host/1"
RECORD_KIND = "engram-sim shared-host gather"
# Above this many cores per core busy with OTHER processes during a point (the machine's busy CPU time, as
# /proc/stat counts it with the VM's steal, less this process's and its workers'), the machine was not quiet
# and the point's figures are not final.
BUSY_FOREIGN_PER_CORE = 0.1
ROUND_S = 7    # decimals kept: 0.1 us
# Per worker and step, in this order (ns, except the counts): what a gather worker sends back.
STEP_FIELDS = ("start", "hash_end", "fetch_end", "gather_start", "gather_end", "gather_busy", "copy_busy",
               "unique_rows", "chunks")


def _stats(values) -> dict:
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    return {"min": float(v.min()), "median": float(np.median(v)), "max": float(v.max()), "mean": float(v.mean())}


def _col(result: np.ndarray, name: str) -> np.ndarray:
    return result[:, :, STEP_FIELDS.index(name)].astype(np.float64)


def cpu_snapshot() -> tuple[float, float | None, float]:
    """(wall s, the machine's busy CPU s from /proc/stat or None, this process's and its reaped children's CPU s)."""
    busy = None
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
        # user nice system idle iowait irq softirq steal: all but idle and iowait are busy (steal too: the
        # VM's host gave the core to someone else)
        busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    t = os.times()
    return time.monotonic(), busy, t.user + t.system + t.children_user + t.children_system


def foreign_cores(before: tuple, after: tuple) -> float | None:
    """Cores busy on average with other processes between two cpu_snapshot()s (None where unknown)."""
    if before[1] is None or after[1] is None or after[0] <= before[0]:
        return None
    return max(0.0, (after[1] - before[1]) - (after[2] - before[2])) / (after[0] - before[0])


def point_record(result: np.ndarray, workers: int, threads: int, t0_ns: int, cpu_before: tuple) -> dict:
    """One point's figures from run_point's [workers, steps, STEP_FIELDS] (measured steps only)."""
    ns = 1e-9
    start, hashed, end = _col(result, "start"), _col(result, "hash_end"), _col(result, "fetch_end")
    g0, g1 = _col(result, "gather_start"), _col(result, "gather_end")
    per_step = {
        "gather_makespan_s": (g1.max(0) - g0.min(0)) * ns,
        "fetch_makespan_s": (end.max(0) - start.min(0)) * ns,
        "start_skew_s": (start.max(0) - start.min(0)) * ns,
    }
    per_worker = {
        "worker_gather_s": _col(result, "gather_busy") * ns,
        "worker_gather_span_s": (g1 - g0) * ns,
        "worker_copy_s": _col(result, "copy_busy") * ns,
        "worker_hash_s": (hashed - start) * ns,
        "worker_fetch_s": (end - start) * ns,
    }
    others = foreign_cores(cpu_before, cpu_snapshot())
    timeline = {"start_s": (start - t0_ns) * ns, "fetch_end_s": (end - t0_ns) * ns,
                "gather_start_s": (g0 - t0_ns) * ns, "gather_end_s": (g1 - t0_ns) * ns,
                **per_worker, "unique_rows": _col(result, "unique_rows"), "chunks": _col(result, "chunks")}
    return {
        "workers": workers, "gather_threads": threads, "steps": int(result.shape[1]),
        "other_processes_cores": others, "loadavg": list(os.getloadavg()),
        "quiet": others is not None and others <= BUSY_FOREIGN_PER_CORE * (os.cpu_count() or 1),
        "summary": {**{k: _stats(v) for k, v in {**per_step, **per_worker}.items()},
                    "unique_rows": _stats(_col(result, "unique_rows"))},
        "steps_table": {k: np.round(v, ROUND_S).tolist() for k, v in per_step.items()},
        "workers_table": {k: np.round(v, ROUND_S).tolist() for k, v in timeline.items()},
    }


def new_record(cfg: RunConfig, workers: list[int], threads: list[int], steps: int, warmup: int, rows: str,
               copy: str) -> dict:
    """The record before its points: what was measured, how, and on what."""
    e, p = cfg.engram, cfg.placement
    return {
        "schema": SCHEMA, "kind": RECORD_KIND,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config_name": cfg.name, "profile": cfg.profile, "config": cfg.to_dict(),
        "placement": {"kind": p.kind, "staging_chunk_mib": p.staging_chunk_mib, "staging_buffers": p.staging_buffers},
        "workers": list(workers), "gather_threads": list(threads), "steps": steps, "warmup": warmup, "rows": rows,
        "copy": copy,
        "tables": {"layers": sorted(e.layer_ids), "row_bytes": e.row_bytes, "table_bytes": e.total_table_bytes,
                   "memory": "one HostTable per layer (anonymous private mmap, MADV_HUGEPAGE), filled before the "
                             "workers fork: every worker reads the same physical pages"},
        "intervals": __doc__.split("\n\n", 1)[1].strip(),
        "machine": describe_machine("cpu"),
        "note": "",
        "points": [],
    }


def finish_record(record: dict, note: str = "") -> dict:
    """The record's overall verdict on the load, the note, and the slowdown of each point against one worker."""
    quiet = all(pt["quiet"] for pt in record["points"])
    record["quiet"] = quiet
    record["note"] = " ".join(x for x in (note, "" if quiet else "MEASURED UNDER LOAD (other processes kept more "
                                          f"than {BUSY_FOREIGN_PER_CORE} of a core per core busy during some "
                                          "point, see other_processes_cores): not final figures") if x)
    alone = {pt["gather_threads"]: pt["summary"]["gather_makespan_s"]["median"]
             for pt in record["points"] if pt["workers"] == 1}
    for pt in record["points"]:
        base = alone.get(pt["gather_threads"])
        pt["gather_makespan_vs_one_worker"] = pt["summary"]["gather_makespan_s"]["median"] / base if base else None
    return record


def write_shared_host(record: dict, out) -> None:
    atomic_write_text(out, json.dumps(record, indent=1) + "\n")


def format_points(record: dict) -> str:
    """One line per point: medians of the makespans and per-worker gathers (ms)."""
    header = (f"{'workers':>7} {'threads':>7} {'gather makespan ms':>18} {'worker gather ms':>16} "
              f"{'worker copy ms':>14} {'fetch makespan ms':>17} {'x one':>6} {'others':>6} quiet")
    lines = [header]
    for pt in record["points"]:
        s = pt["summary"]
        ratio = pt.get("gather_makespan_vs_one_worker")
        others = "?" if pt["other_processes_cores"] is None else f"{pt['other_processes_cores']:.2f}"
        lines.append(f"{pt['workers']:>7} {pt['gather_threads']:>7} {s['gather_makespan_s']['median'] * 1e3:>18.3f} "
                     f"{s['worker_gather_s']['median'] * 1e3:>16.3f} {s['worker_copy_s']['median'] * 1e3:>14.3f} "
                     f"{s['fetch_makespan_s']['median'] * 1e3:>17.3f} "
                     f"{'' if ratio is None else f'{ratio:.2f}':>6} {others:>6} {'yes' if pt['quiet'] else 'NO'}")
    return "\n".join(lines)
