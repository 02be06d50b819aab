"""A step's work before contention: the host's critical path, compute segments, hashing, rows per Engram layer.

The host's critical path is what must happen after the previous step ends and
before this step's first kernel can run: the engine's own step work (and the
first graph launch with CUDA graphs) and, with placement.hash_on =
"critical_path", hashing the step's tokens on one host thread plus sorting or
deduplicating the ids. With hash_on = "worker", worker threads hash while the
GPU runs (hash_time).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from profiles import HardwareProfile
from sim import costs
from sim.compute import StepShape, compute_key, compute_segments
from sim.placements import Placement, placement_for
from vocab.config import RunConfig


@dataclass
class StepPlan:
    """Everything about one (trace) step that does not depend on contention."""
    tokens: int
    segments: np.ndarray        # compute seconds: before Engram layer 0, between, after the last
    compute_time: float
    hash_time: float            # hashing + dedup of all Engram layers on worker threads (0: on the critical path)
    host_time: float            # the host's critical path before the step's first kernel runs
    lookups: np.ndarray         # per Engram layer
    unique_rows: np.ndarray     # rows fetched: distinct rows with dedup, else every lookup
    distinct_rows: np.ndarray   # distinct rows among them (the translations a zero-copy gather walks)
    host_rows: np.ndarray       # rows that cross the link
    reused_rows: np.ndarray
    cache_hits: np.ndarray
    # ssd: rows past the HBM cache that its DRAM cache serves, and block reads from the drive (zeros elsewhere).
    dram_hits: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    ssd_reads: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def plan_steps(cfg: RunConfig, profile: HardwareProfile, trace, placement: Placement | None = None) -> list[StepPlan]:
    """One plan per trace step; per-layer arrays in the placement's (layer) order."""
    placement = placement or placement_for(cfg)
    placement.check_profile(profile)
    order = placement.layer_order
    key = compute_key(cfg, profile, placement)
    plans = []
    for s in range(len(trace.tokens)):
        shape = StepShape(tokens=int(trace.tokens[s]), attn_context_sum=float(trace.attn_context_sum[s]),
                          sequences=int(trace.sequences[s]), lookups=0)
        trace_dram = trace.dram_hits[s] if trace.dram_hits is not None else np.zeros(len(order), dtype=np.int64)
        rows = StepRows(lookups=trace.lookups[s], distinct=trace.distinct_rows[s], reused=trace.reused_rows[s],
                        cache_hits=trace.cache_hits[s], dram_hits=trace_dram)
        plans.append(plan_step(cfg, profile, placement, shape, rows, key))
    return plans


@dataclass(frozen=True)
class StepRows:
    """A step's Engram row counts per layer, in the trace's (cfg.engram.layer_ids) order."""
    lookups: np.ndarray
    distinct: np.ndarray
    reused: np.ndarray
    cache_hits: np.ndarray
    dram_hits: np.ndarray


def plan_step(cfg: RunConfig, profile: HardwareProfile, placement: Placement, shape: StepShape,
              rows: StepRows, compute_key: str | None = None) -> StepPlan:
    """The plan of one step of `shape` (its lookups are set here) whose rows are `rows`; with compute_key
    (sim.compute.compute_key), its compute is memoised."""
    p = cfg.placement
    order = placement.layer_order
    tokens = shape.tokens
    lookups = np.asarray(rows.lookups, dtype=np.int64)[order]
    unique = np.asarray(rows.distinct, dtype=np.int64)[order] if p.dedup else lookups.copy()
    distinct = np.minimum(np.asarray(rows.distinct, dtype=np.int64)[order], unique)
    reused = np.minimum(np.asarray(rows.reused, dtype=np.int64)[order], unique)
    hits = placement.cache_hits(np.asarray(rows.cache_hits, dtype=np.int64)[order], unique)
    host = placement.host_rows(unique, hits)
    dram = placement.dram_hits(np.asarray(rows.dram_hits, dtype=np.int64)[order], unique, hits)
    reads = placement.drive_reads(profile, host, dram)
    shape = replace(shape, lookups=int(lookups[0]) if len(order) else 0)
    segments = compute_segments(cfg, profile, shape, placement, compute_key)
    hashing, critical = _hashing(cfg, profile, placement, tokens, lookups)
    host_time = critical + costs.engine_step_time(profile, shape.sequences, cfg.workload.launch == "cuda_graphs",
                                                  serving=cfg.workload.phase == "serve")
    return StepPlan(tokens, segments, float(segments.sum()), hashing, host_time, lookups, unique, distinct,
                    host, reused, hits, dram, reads)


def _hashing(cfg: RunConfig, profile: HardwareProfile, placement: Placement, tokens: int,
             lookups: np.ndarray) -> tuple[float, float]:
    """(seconds on worker threads, seconds on the host's critical path) to turn tokens into row ids."""
    p = cfg.placement
    n_layers = len(lookups)  # the Engram layers fetched (none: nothing to hash)
    if n_layers == 0:
        return 0.0, 0.0
    if p.hash_on == "critical_path":
        # One host thread hashes, then deduplicates (a sort with it) or sorts what a zero-copy gather reads.
        critical = costs.critical_hash_time(profile, tokens, n_layers)
        if p.dedup:
            critical += sum(costs.dedup_time(profile, int(n), 1) for n in lookups)  # one call per layer
        elif placement.sorts_row_ids:
            critical += costs.sort_time(profile, int(lookups.sum()))
        return 0.0, critical
    hashing = costs.hash_time(profile, tokens, n_layers, p.hash_threads)
    if p.dedup:
        hashing += sum(costs.dedup_time(profile, int(n), p.hash_threads) for n in lookups)  # one call per layer
    return hashing, 0.0
