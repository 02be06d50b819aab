"""A closed-form steady-state estimate beside the DES.

Each fetch is timed alone (no sharing of the link, DRAM, cores or copy
engines with any other fetch), then laid against the compute timeline of the
step. Where nothing runs concurrently this is exact, and the DES must agree
with it; where fetches do share something, the DES is slower, never faster.

Exact cases: decode without lookahead (each step's fetch starts when the step
starts, with the fetch side idle), with host_dma copies no faster to gather
than to copy per chunk or with one chunk. With prefetch ahead (prefill), the
estimate is a steady state: the fetch side is a pipeline that must keep up
with the compute stream. The host's critical path delays the step's compute
(and, with hashing on it, the fetch); a zero-copy gather slows the compute it
overlaps by the share of SM throughput it holds, as in the DES.
"""

from __future__ import annotations

import math

import numpy as np

from profiles import HardwareProfile
from sim.placements import Placement, placement_for
from sim.plan import StepPlan
from vocab.config import RunConfig
from vocab.records import overlap_fraction


def _advance(t: float, work: float, holds: list[tuple[float, float, float]]) -> float:
    """When `work` seconds of full-rate compute started at t end, given (start, end, share) SM holds."""
    if not holds:
        return t + work
    edges = sorted({a for a, _, _ in holds} | {b for _, b, _ in holds})
    while True:
        share = min(1.0, sum(s for a, b, s in holds if a <= t < b))
        nxt = next((e for e in edges if e > t), math.inf)
        rate = 1.0 - share
        if rate > 0 and t + work / rate <= nxt:
            return t + work / rate
        work -= (nxt - t) * rate
        t = nxt


def step_estimate(cfg: RunConfig, profile: HardwareProfile, plan: StepPlan,
                  placement: Placement | None = None) -> dict:
    """Step time, stalls and fetch times of one step in the steady state."""
    w = cfg.workload
    placement = placement or placement_for(cfg)
    n = len(placement.layer_ids)
    # Each Engram layer's fetch alone (the placement's closed form); none has no fetch.
    fetch = [placement.fetch_alone(profile, plan, k) for k in range(n)]
    # With hashing on the host's critical path, the fetch begins once the host is done.
    begin = plan.host_time if cfg.placement.hash_on == "critical_path" else 0.0
    if cfg.placement.fetch_streams >= len(fetch):
        ready = [begin + plan.hash_time + f for f in fetch]
    else:
        ready = list(begin + plan.hash_time + np.cumsum(fetch))
    shares = [placement.sm_hold(profile, plan, k) for k in range(n)]
    ahead = w.decode_lookahead if w.phase == "decode" else w.prefill_prefetch_ahead
    # The fetch side must finish each step's work within one step on average.
    fetch_side = plan.hash_time + (max(fetch, default=0.0) if cfg.placement.fetch_streams >= len(fetch)
                                   else sum(fetch))
    step = plan.host_time + plan.compute_time
    for _ in range(50):  # fixed point: earlier starts (ahead * step) depend on the step time
        head_start = ahead * step
        # Zero-copy gathers hold SMs for the last `seconds` of their fetch.
        holds = [(ready[k] - head_start - sec, ready[k] - head_start, share)
                 for k, (share, sec) in enumerate(shares) if share > 0]
        reach = _advance(plan.host_time, plan.segments[0], holds)
        stalls = []
        for k in range(len(fetch)):
            stall = max(0.0, ready[k] - head_start - reach)
            stalls.append(stall)
            reach = _advance(reach + stall, plan.segments[k + 1], holds)
        slowed = reach - plan.host_time - plan.compute_time - sum(stalls) if holds else 0.0
        laid = plan.host_time + plan.compute_time + sum(stalls) + slowed
        new = max(laid, fetch_side if ahead else 0.0)
        if math.isclose(new, step, rel_tol=1e-12):
            break
        step = new
    # Waits at Engram layers (and a fetch side too slow to keep up), not the slowed compute or the host.
    stall_total = sum(stalls) + (step - laid if step > laid else 0.0)
    return {"step_time_s": step, "exposed_stall_s": stall_total,
            "fetch_time_s": float(sum(ready)), "tokens": plan.tokens}


def estimate(cfg: RunConfig, profile: HardwareProfile, plans: list[StepPlan]) -> dict:
    """Run-level steady-state estimate: the plans weighted equally, as the DES cycles them."""
    placement = placement_for(cfg)
    rows = [step_estimate(cfg, profile, plan, placement) for plan in plans]
    time = sum(r["step_time_s"] for r in rows)
    stall = sum(r["exposed_stall_s"] for r in rows)
    fetch = sum(r["fetch_time_s"] for r in rows)
    n = len(rows)
    return {
        "step_time_s": time / n,
        "tokens_per_s": sum(r["tokens"] for r in rows) / time,
        "exposed_stall_s": stall / n,
        "fetch_time_s": fetch / n,
        "overlap_fraction": overlap_fraction(stall, fetch),
    }
