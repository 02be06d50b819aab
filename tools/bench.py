"""The simulator's own speed (a benchmark, not a test).

Targets: the benchmark sweep (8 table sizes x every placement of the profile x 2 phases), 1,000 steps
each, of a 30-layer model, in 5 s or less on a 2-core machine (issue 13); a 512-request serving run
(about 300K output tokens) in 10 s or less (issue 12). Each figure is the min/median/max of several runs,
beside two yardsticks timed in the same run: bare SimPy's events per second (a loop of timeouts), and
the closed form (sim.analytic) for the same points.
"""

from __future__ import annotations

import os
import statistics
import time

import simpy

from profiles import load_profile
from sim.analytic import estimate
from sim.engine import plan_steps, trace_for
from sim.serve import simulate_serving
from tools.sweep import DEFAULT_CACHE_GIB, point_config, sweep
from vocab.config import load_config
from vocab.placements import HBM
from workloads.trace import build_trace

BENCH_TABLE_GIB = [1, 4, 16, 64, 128, 256, 512, 1024]
BENCH_REPEATS = 3
BARE_SIMPY_EVENTS = 200_000


def spread(values: list[float]) -> tuple[float, float, float]:
    return min(values), statistics.median(values), max(values)


def fmt(values: list[float], unit: str = "s", digits: int = 2) -> str:
    lo, mid, hi = spread(values)
    return f"{mid:,.{digits}f} {unit} (min {lo:,.{digits}f}, max {hi:,.{digits}f})"


def bare_simpy_events_per_s(n: int = BARE_SIMPY_EVENTS) -> float:
    """Events per second of SimPy alone: one process yielding n timeouts (the floor any DES here pays)."""
    env = simpy.Environment()

    def ticks():
        for _ in range(n):
            yield env.timeout(1e-6)

    env.process(ticks())
    t0 = time.perf_counter()
    env.run()
    return n / (time.perf_counter() - t0)


def closed_form_s(cfg, placements: list[str]) -> float:
    """Seconds the closed form takes for the sweep's points (step plans and estimate; traces built first)."""
    profile = load_profile(cfg.profile)
    total = 0.0
    for phase in ("decode", "prefill"):
        for size in BENCH_TABLE_GIB:
            for kind in placements:
                pcfg = point_config(cfg, size, kind, phase, DEFAULT_CACHE_GIB)
                trace = trace_for(pcfg)  # shared with the sweep's cost, not the closed form's
                t0 = time.perf_counter()
                estimate(pcfg, profile, plan_steps(pcfg, profile, trace))
                total += time.perf_counter() - t0
    return total


def bench_simulator(steps: int = 1000, jobs: int | None = None, config: str = "engram-27b",
                    repeats: int = BENCH_REPEATS) -> dict:
    cfg = load_config(config)
    # Token traces (hashing real token streams, dedup) are part of every sweep point;
    # time them once on their own here so that the report can split the two costs.
    t0 = time.perf_counter()
    for phase in ("decode", "prefill"):
        for size in BENCH_TABLE_GIB:
            build_trace(point_config(cfg, size, HBM, phase, DEFAULT_CACHE_GIB))
    trace_s = time.perf_counter() - t0
    walls, sims, rates, bare = [], [], [], []
    for _ in range(repeats):
        bare.append(bare_simpy_events_per_s())
        t0 = time.perf_counter()
        df = sweep(cfg, BENCH_TABLE_GIB, None, ["decode", "prefill"], steps=steps, jobs=jobs, progress=False)
        walls.append(time.perf_counter() - t0)
        sims.append(df.attrs["simulate_s"])
        rates.append(int(df["sim_events"].sum()) / max(df.attrs["simulate_s"], 1e-9))
    placements = sorted(set(df["placement"]))
    closed = closed_form_s(cfg, placements)
    events = int(df["sim_events"].sum())
    out = {
        "config": config, "points": len(df), "steps_per_point": steps, "repeats": repeats,
        "simulated_steps": int(df["steps"].sum()),
        "wall_s": statistics.median(walls), "wall_s_runs": walls,
        "events": events, "events_per_s": statistics.median(rates),
        "bare_simpy_events_per_s": statistics.median(bare),
        "closed_form_s": closed,
        "replayed_steps": int(df["replayed_steps"].sum()),
        "trace_build_s": trace_s,
        "simulate_cpu_s": statistics.median(sims),
        "steps_per_s": float(df["steps"].sum()) / statistics.median(walls),
        "jobs": jobs or os.cpu_count(),
        "cpus": os.cpu_count(),
    }
    print(f"{out['points']}-point sweep of {config} ({cfg.backbone.layers} layers, {len(placements)} placements), "
          f"{steps} steps each, {out['jobs']} worker(s) on {out['cpus']} CPU(s), {repeats} runs, median (min, max):")
    print(f"  sweep {fmt(walls)} wall  (target: <= 5 s); the event simulation took {fmt(sims)} of CPU "
          f"(token traces, hashed and cache-replayed per point, the rest; the benchmark's traces alone: "
          f"{trace_s:.2f} s)")
    vs_bare = out["events_per_s"] / out["bare_simpy_events_per_s"]
    print(f"  {events:,} simulated events, {fmt(rates, 'events/s', 0)} of simulation; bare SimPy in the same "
          f"runs: {fmt(bare, 'events/s', 0)} (DES / bare SimPy: {vs_bare:.2f})")
    print(f"  the closed form for the same {out['points']} points: {closed:.3f} s (sweep wall / closed form: "
          f"{out['wall_s'] / max(closed, 1e-9):,.0f}x; event simulation CPU / closed form: "
          f"{out['simulate_cpu_s'] / max(closed, 1e-9):,.0f}x)")
    print(f"  {out['replayed_steps']:,} of {out['simulated_steps']:,} steps replayed from identical earlier steps")
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
