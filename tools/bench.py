"""The simulator's own speed (a benchmark, not a test).

Targets (issue 13), on a 2-core machine: the benchmark sweep (8 table sizes x the 4 placements
without a drive x 2 phases: 64 points, 1,000 steps each, of a 30-layer model) in 5 s or less; a
plan of about 1,000 configurations in 60 s or less; prefill trace cost linear in tokens per step;
the LRU cache replay at 50 M accesses/s or more; a 512-request serving run (about 300K output
tokens) in 10 s or less (issue 12). Sweep figures are the min/median/max of several runs, beside
two yardsticks timed in the same run: bare SimPy's events per second (a loop of timeouts), and the
closed form (sim.analytic) for the same points. The same sweep with the ssd placement as well (80
points) runs once, for the record.
"""

from __future__ import annotations

import os
import statistics
import time

import numba
import simpy

from profiles import load_profile
from sim.analytic import estimate
from sim.engine import plan_steps, trace_for
from sim.serve import simulate_serving
from tools.plan import make_plans, plan
from tools.sweep import DEFAULT_CACHE_GIB, point_config, sweep
from vocab.config import load_config
from vocab.placements import ENGRAM_PLACEMENTS, HBM, SSD
from workloads.cache import bench_cache
from workloads.trace import build_trace, clear_memos

BENCH_TABLE_GIB = [1, 4, 16, 64, 128, 256, 512, 1024]
BENCH_PLACEMENTS = [k for k in ENGRAM_PLACEMENTS if k != SSD]  # the 64 points; with ssd, 80
BENCH_REPEATS = 3
BARE_SIMPY_EVENTS = 200_000
# The plan benchmark: one-layer plans at 4 layers x 5 batches x 2 profiles x every placement (200 plans,
# about 1,050 configurations searched).
PLAN_LAYERS = [1, 5, 10, 15]
PLAN_BATCHES = [32, 64, 128, 256, 512]
PLAN_PROFILES = ["h100-sxm", "h200-sxm"]
PLAN_MAX_OVERHEAD = 0.03
# Prefill traces at tokens per step x1, x4, x16, each of PREFILL_STEPS steps into a table of PREFILL_GIB.
PREFILL_TOKENS = [1024, 4096, 16384]
PREFILL_GIB = 64
PREFILL_STEPS = 32


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
    """The sweep (with its yardsticks), then the plan, the prefill trace's scaling and the cache replay."""
    out = bench_sweep(steps, jobs, config, repeats)
    out["plan"] = bench_plan(jobs)
    out["prefill_trace"] = bench_prefill_trace(config)
    out["cache_replay"] = bench_lru()
    return out


def bench_sweep(steps: int = 1000, jobs: int | None = None, config: str = "engram-27b",
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
        df = sweep(cfg, BENCH_TABLE_GIB, BENCH_PLACEMENTS, ["decode", "prefill"], steps=steps, jobs=jobs,
                   progress=False)
        walls.append(time.perf_counter() - t0)
        sims.append(df.attrs["simulate_s"])
        rates.append(int(df["sim_events"].sum()) / max(df.attrs["simulate_s"], 1e-9))
    placements = sorted(set(df["placement"]))
    closed = closed_form_s(cfg, placements)
    events = int(df["sim_events"].sum())
    t0 = time.perf_counter()
    with_ssd = sweep(cfg, BENCH_TABLE_GIB, None, ["decode", "prefill"], steps=steps, jobs=jobs, progress=False)
    ssd_wall = time.perf_counter() - t0
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
        "with_ssd_points": len(with_ssd), "with_ssd_wall_s": ssd_wall,
        "with_ssd_simulate_cpu_s": with_ssd.attrs["simulate_s"],
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
    print(f"  with the ssd placement too ({len(with_ssd)} points, one run): {ssd_wall:.2f} s wall, of which the "
          f"event simulation {out['with_ssd_simulate_cpu_s']:.2f} s of CPU")
    return out


def bench_plan(jobs: int | None = None) -> dict:
    """One plan of about 1,000 configurations (PLAN_*), on `jobs` worker processes (default: the CPUs)."""
    cfg = load_config("engram-27b")
    plans = make_plans(cfg, [(name, load_profile(name)) for name in PLAN_PROFILES], list(ENGRAM_PLACEMENTS),
                       [[layer] for layer in PLAN_LAYERS], PLAN_BATCHES, [DEFAULT_CACHE_GIB])
    jobs = jobs or os.cpu_count() or 1
    t0 = time.perf_counter()
    result = plan(plans, max_overhead=PLAN_MAX_OVERHEAD, jobs=jobs, progress=False)
    wall = time.perf_counter() - t0
    points = len(result.points)
    print(f"plan of {cfg.name}: {len(plans)} plans ({len(PLAN_LAYERS)} layers x {len(PLAN_BATCHES)} batches x "
          f"{len(PLAN_PROFILES)} profiles x the placements), {points:,} configurations searched "
          f"({result.meta['closed_form_points']} closed form, {result.meta['des_points']} DES) on {jobs} worker(s): "
          f"{wall:.1f} s  (target: <= 60 s for 1,000)")
    return {"plans": len(plans), "points": points, "wall_s": wall, "jobs": jobs}


def bench_prefill_trace(config: str = "engram-27b") -> dict:
    """Seconds per token of a prefill trace (drawing, hashing and counting its rows; no cache) at tokens per
    step PREFILL_TOKENS, built from cold on one core each time: linear in tokens when these are about equal."""
    cfg = load_config(config).with_steps(PREFILL_STEPS)
    build_trace(point_config(cfg.with_workload(tokens_per_step=PREFILL_TOKENS[0]), 1, HBM, "prefill", 0))  # warm
    per_token = {}
    threads = numba.get_num_threads()
    numba.set_num_threads(1)  # one core, as in a sweep's worker (and a thread per layer would blur small steps)
    try:
        for tokens in PREFILL_TOKENS:
            clear_memos()
            pcfg = point_config(cfg.with_workload(tokens_per_step=tokens), PREFILL_GIB, HBM, "prefill", 0)
            t0 = time.perf_counter()
            trace = build_trace(pcfg)
            per_token[tokens] = (time.perf_counter() - t0) / int(trace.tokens.sum())
    finally:
        numba.set_num_threads(threads)
    first = per_token[PREFILL_TOKENS[0]]
    print(f"prefill trace, {PREFILL_STEPS} steps into {PREFILL_GIB} GiB, per token: " + ", ".join(
        f"{t:,} tokens/step {s * 1e9:,.0f} ns (x{s / first:.2f})" for t, s in per_token.items()) +
          "  (target: linear, the same per token)")
    return {"s_per_token": per_token}


def bench_lru() -> dict:
    """The cache policies' replay loops (workloads.cache.bench_cache: 5 M accesses, a cache of 10 % of the
    rows, so that it evicts), on one core."""
    out = bench_cache()
    print(f"cache replay, {out['accesses']:,} accesses, {out['capacity']:,}-row cache: LRU "
          f"{out['lru_accesses_per_s'] / 1e6:.1f} M accesses/s (target: >= 50 M), LFU "
          f"{out['lfu_accesses_per_s'] / 1e6:.1f} M, static top-k {out['static_topk_accesses_per_s'] / 1e6:.1f} M")
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
