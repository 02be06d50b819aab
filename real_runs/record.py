"""A real run's measurements as a RunRecord: the simulator's tables, built by the same vocab.records builders.

exposed_stall_s = the time the compute stream waited at Engram layers (marks
before and after the wait, on the compute stream); fetch_time_s = fetch start
(hashing start) to rows ready (the fetch's CUDA event; on CPU, the host time the
prefetch returned); overlap_fraction by vocab.records.overlap_fraction. Times
are seconds from the first recorded step's start; warm-up steps are left out.
"""

from __future__ import annotations

import math

from vocab.config import RunConfig
from vocab.records import (
    CPU_HASH,
    GPU_COMPUTE,
    STALL,
    RunRecord,
    event_table,
    fetch_table,
    step_table,
    summarise,
)


def compute_name(index: int, cfg: RunConfig, layers) -> tuple[str, int]:
    """(event name, layer) of a StepLog.compute entry: -1 - L = Engram layer L's rows, `layers` = the LM head."""
    if index < 0:
        return f"engram rows L{-1 - index}", -1 - index
    if index >= cfg.backbone.layers:
        return "lm head", -1
    return (f"engram+layer {index}" if index in layers else f"layer {index}"), index


def collect(cfg: RunConfig, timeline, logs, inputs, events_raw, warmup: int, layers) -> RunRecord:
    """The measured record of the steps after `warmup` (machine and extras left to the caller)."""
    sec = timeline.seconds
    base = (logs[warmup].start_ns - timeline.t0_ns) * 1e-9

    def host_s(ns: int) -> float:
        return (ns - timeline.t0_ns) * 1e-9 - base

    rb = cfg.engram.row_bytes
    columns = {name: [] for name in ("step", "start_s", "step_time_s", "compute_time_s", "tokens",
                                     "exposed_stall_s", "fetch_time_s", "host_bytes", "hbm_bytes", "link_bytes")}
    fetch_rows, events = [], []
    for s in range(warmup, len(logs)):
        log, k = logs[s], s - warmup
        fetch_start = host_s(log.fetch_start_ns) if layers else math.nan
        rows = [_fetch_row(k, layer, log.waits[layer], fetch_start, sec, host_s, base, events) for layer in layers]
        fetch_rows += rows
        for i, a, b in log.compute:
            name, layer = compute_name(i, cfg, layers)
            events.append((GPU_COMPUTE, name, sec(a) - base, sec(b) - base, k, layer))
        start = host_s(log.start_ns)
        host_bytes = sum(r["host_rows"] for r in rows) * rb
        for name, value in (("step", k), ("start_s", start), ("step_time_s", host_s(log.end_ns) - start),
                            ("compute_time_s", float(sum(sec(b) - sec(a) for _, a, b in log.compute))),
                            ("tokens", inputs[s].tokens),
                            ("exposed_stall_s", sum((r["exposed_stall_s"] for r in rows), 0.0)),
                            ("fetch_time_s", sum((r["fetch_time_s"] for r in rows), 0.0)),
                            ("host_bytes", host_bytes), ("hbm_bytes", sum(r["lookups"] for r in rows) * rb),
                            ("link_bytes", host_bytes)):
            columns[name].append(value)
    for actor, name, a, b, step, layer in events_raw:
        if actor == CPU_HASH and step >= warmup:
            events.append((actor, name, a - base, b - base, step - warmup, layer))
    steps = step_table(**columns)
    return RunRecord(kind="measured", config=cfg.to_dict(), machine={}, summary=summarise(steps), steps=steps,
                     fetches=fetch_table(fetch_rows), events=event_table(sorted(events, key=lambda r: r[2])))


def _fetch_row(k: int, layer: int, wait, fetch_start: float, sec, host_s, base: float, events: list) -> dict:
    """Step k's fetch for `layer` as a FETCH_COLUMNS row; its stall and store events go to `events`."""
    f, w0, w1 = wait
    ready = sec(f.ready) - base if f.ready is not None else host_s(f.issued_ns)
    wait_start = sec(w0) - base
    stall = max(0.0, sec(w1) - sec(w0))
    if stall > 0:
        events.append((STALL, f"wait rows L{layer}", wait_start, wait_start + stall, k, layer))
    events += [(actor, name, sec(m0) - base, sec(m1) - base, k, layer) for actor, name, m0, m1 in f.events]
    return {"step": k, "layer": layer, "fetch_start_s": fetch_start, "fetch_end_s": ready,
            "fetch_time_s": max(0.0, ready - fetch_start), "wait_start_s": wait_start, "exposed_stall_s": stall,
            "lookups": f.lookups, "unique_rows": f.unique_rows, "host_rows": f.host_rows, "cache_hits": f.cache_hits,
            "dram_hits": f.dram_hits, "ssd_reads": f.ssd_reads}
