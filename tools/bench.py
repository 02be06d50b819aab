"""The simulator's own speed (a benchmark, not a test).

Targets: a 64-point sweep (8 table sizes x 4 placements x 2 phases), 1,000
steps each, of a 30-layer model, in 10 s or less on a 2-core machine (issue 2);
a 512-request serving run (about 300K output tokens) in 10 s or less (issue 12).
"""

from __future__ import annotations

import os
import time

from sim.serve import simulate_serving
from tools.sweep import DEFAULT_CACHE_GIB, point_config, sweep
from vocab.config import load_config
from vocab.placements import HBM
from workloads.trace import build_trace

BENCH_TABLE_GIB = [1, 4, 16, 64, 128, 256, 512, 1024]


def bench_simulator(steps: int = 1000, jobs: int | None = None, config: str = "engram-27b") -> dict:
    cfg = load_config(config)
    # Token traces (hashing real token streams, dedup) are part of every sweep point;
    # time them once on their own here so that the report can split the two costs.
    t0 = time.perf_counter()
    for phase in ("decode", "prefill"):
        for size in BENCH_TABLE_GIB:
            build_trace(point_config(cfg, size, HBM, phase, DEFAULT_CACHE_GIB))
    trace_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    df = sweep(cfg, BENCH_TABLE_GIB, None, ["decode", "prefill"], steps=steps, jobs=jobs, progress=False)
    wall = time.perf_counter() - t0
    events = int(df["sim_events"].sum())
    out = {
        "config": config,
        "points": len(df),
        "steps_per_point": steps,
        "simulated_steps": int(df["steps"].sum()),
        "wall_s": wall,
        "events": events,
        "events_per_s": events / max(df.attrs["simulate_s"], 1e-9),
        "replayed_steps": int(df["replayed_steps"].sum()),
        "trace_build_s": trace_s,
        "simulate_cpu_s": df.attrs["simulate_s"],
        "steps_per_s": float(df["steps"].sum()) / wall,
        "jobs": jobs or os.cpu_count(),
        "cpus": os.cpu_count(),
    }
    print(f"{out['points']}-point sweep of {config} ({cfg.backbone.layers} layers), {steps} steps each, "
          f"{out['jobs']} worker(s) on {out['cpus']} CPU(s):")
    print(f"  sweep {wall:.2f} s wall, of which the event simulation took {out['simulate_cpu_s']:.2f} s of CPU "
          f"(token traces, hashed and cache-replayed per point, the rest; traces alone: {trace_s:.2f} s)")
    print(f"   {events:,} simulated events ({out['events_per_s']:,.0f} events per second of simulation), "
          f"{out['steps_per_s']:,.0f} steps/s; {out['replayed_steps']:,} of {out['simulated_steps']:,} steps replayed from identical "
          f"earlier steps  (target: sweep <= 10 s)")
    return out


SERVING_BENCH_CONFIG = "paper-table4-dense4b"


def bench_serving(config: str = SERVING_BENCH_CONFIG) -> dict:
    """One serving run of `config` (512 requests, ~300K output tokens), timed whole: requests, scheduling,
    hashing every step and the event simulation."""
    cfg = load_config(config)
    t0 = time.perf_counter()
    result = simulate_serving(cfg)
    wall = time.perf_counter() - t0
    s = result.serving
    out = {"config": config, "placement": cfg.placement.kind, "requests": s["requests"],
           "output_tokens": s["output_tokens"], "steps": s["steps"], "wall_s": wall, "events": result.sim_events}
    print(f"serving run of {config} ({cfg.placement.kind}): {s['requests']} requests, {s['output_tokens']:,} output "
          f"tokens, {s['steps']:,} steps, {result.sim_events:,} events in {wall:.2f} s  (target: <= 10 s)")
    return out
