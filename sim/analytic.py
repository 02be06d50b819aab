"""A closed-form steady-state estimate beside the DES.

Each fetch is timed alone (no sharing of the link, DRAM, cores or copy
engines with any other fetch), then laid against the compute timeline of the
step. Where nothing runs concurrently this is exact, and the DES must agree
with it; where fetches do share something, the DES is slower, never faster.

Exact cases: decode without lookahead (each step's fetch starts when the step
starts, with the fetch side idle), with host_dma copies no faster to gather
than to copy per chunk or with one chunk. With prefetch ahead (prefill), the
estimate is a steady state: the fetch side is a pipeline that must keep up
with the compute stream.
"""

from __future__ import annotations

import math

import numpy as np

from profiles import HardwareProfile
from sim import costs
from sim.engine import StepPlan
from vocab.config import RunConfig


def fetch_alone(cfg: RunConfig, profile: HardwareProfile, plan: StepPlan, k: int, footprint: float) -> float:
    """Seconds for Engram layer k's rows to reach HBM with nothing else running."""
    p = cfg.placement
    rows = int(plan.host_rows[k])
    rb = cfg.engram.row_bytes
    if p.kind == "hbm" or rows == 0:
        return costs.copy_time(profile, plan.lookups[k] * 8)
    path = p.miss_path if p.kind == "hbm_cache" else p.kind
    if path == "host_uva":
        reused = int(plan.reused_rows[k] * rows / max(int(plan.unique_rows[k]), 1))
        warm = costs.uva_warm_fraction(profile, rows, reused, footprint)
        fixed, body = costs.uva_gather_time(profile, rows, rb, footprint, warm)
        return fixed + body
    # host_dma: a two-stage pipeline (CPU gather, then copy) over staging chunks,
    # with at most `staging_buffers` chunks between gather start and copy end.
    chunk = max(rb, int(p.staging_chunk_mib * (1 << 20)))
    threads = min(p.gather_threads, profile.host.cpu_cores)
    rate = costs.cpu_gather_rate(profile, rb, threads)
    total = rows * rb
    sizes = [min(chunk, total - o) for o in range(0, total, chunk)]
    gather_end, copy_end = [], []
    for i, b in enumerate(sizes):
        start = max(gather_end[-1] if gather_end else 0.0,
                    copy_end[i - p.staging_buffers] if i >= p.staging_buffers else 0.0)
        gather_end.append(start + profile.host.cpu_gather_fixed_us * 1e-6 + b / rate)
        copy_end.append(max(gather_end[-1], copy_end[-1] if copy_end else 0.0) + costs.copy_time(profile, b))
    return copy_end[-1]


def step_estimate(cfg: RunConfig, profile: HardwareProfile, plan: StepPlan) -> dict:
    """Step time, stalls and fetch times of one step in the steady state."""
    w = cfg.workload
    layer_ids = sorted(cfg.engram.layer_ids)
    fetch = [fetch_alone(cfg, profile, plan, k, cfg.engram.layer_table_bytes(layer))
             for k, layer in enumerate(layer_ids)]
    if cfg.placement.fetch_streams >= len(fetch):
        ready = [plan.hash_time + f for f in fetch]
    else:
        ready = list(plan.hash_time + np.cumsum(fetch))
    ahead = w.decode_lookahead if w.phase == "decode" else w.prefill_prefetch_ahead
    # The fetch side must finish each step's work within one step on average.
    fetch_side = plan.hash_time + (max(fetch) if cfg.placement.fetch_streams >= len(fetch) else sum(fetch))
    step = plan.compute_time
    for _ in range(50):  # fixed point: earlier starts (ahead * step) depend on the step time
        head_start = ahead * step
        reach, stalls = plan.segments[0], []
        for k in range(len(fetch)):
            stall = max(0.0, ready[k] - head_start - reach)
            stalls.append(stall)
            reach += stall + plan.segments[k + 1]
        new = max(plan.compute_time + sum(stalls), fetch_side if ahead else 0.0)
        if math.isclose(new, step, rel_tol=1e-12):
            break
        step = new
    stall_total = step - plan.compute_time
    return {"step_time_s": step, "exposed_stall_s": stall_total,
            "fetch_time_s": float(sum(ready)), "tokens": plan.tokens}


def estimate(cfg: RunConfig, profile: HardwareProfile, plans: list[StepPlan]) -> dict:
    """Run-level steady-state estimate: the plans weighted equally, as the DES cycles them."""
    rows = [step_estimate(cfg, profile, plan) for plan in plans]
    time = sum(r["step_time_s"] for r in rows)
    stall = sum(r["exposed_stall_s"] for r in rows)
    fetch = sum(r["fetch_time_s"] for r in rows)
    n = len(rows)
    return {
        "step_time_s": time / n,
        "tokens_per_s": sum(r["tokens"] for r in rows) / time,
        "exposed_stall_s": stall / n,
        "fetch_time_s": fetch / n,
        "overlap_fraction": max(0.0, 1.0 - stall / fetch) if fetch > 0 else math.nan,
    }
