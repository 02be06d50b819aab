"""A step's work before contention: compute segments, hashing, and rows per Engram layer."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from profiles import HardwareProfile
from sim import costs
from sim.compute import StepShape, layer_times, lm_head_time
from sim.placements import Placement, placement_for
from vocab.config import RunConfig


@dataclass
class StepPlan:
    """Everything about one (trace) step that does not depend on contention."""
    tokens: int
    segments: np.ndarray        # compute seconds: before Engram layer 0, between, after the last
    compute_time: float
    hash_time: float            # hashing + dedup of all Engram layers
    lookups: np.ndarray         # per Engram layer
    unique_rows: np.ndarray
    host_rows: np.ndarray       # rows that cross the link
    reused_rows: np.ndarray
    cache_hits: np.ndarray


def plan_steps(cfg: RunConfig, profile: HardwareProfile, trace, placement: Placement | None = None) -> list[StepPlan]:
    """One plan per trace step; per-layer arrays in the placement's (layer) order."""
    placement = placement or placement_for(cfg)
    p = cfg.placement
    order = placement.layer_order
    n_layers = len(order)
    plans = []
    for s in range(len(trace.tokens)):
        tokens = int(trace.tokens[s])
        lookups = np.asarray(trace.lookups[s], dtype=np.int64)[order]
        unique = np.asarray(trace.unique_rows[s], dtype=np.int64)[order] if p.dedup else lookups.copy()
        reused = np.minimum(np.asarray(trace.reused_rows[s], dtype=np.int64)[order], unique)
        hits = placement.cache_hits(np.asarray(trace.cache_hits[s], dtype=np.int64)[order], unique)
        host = placement.host_rows(unique, hits)
        shape = StepShape(tokens=tokens, attn_context_sum=float(trace.attn_context_sum[s]),
                          sequences=int(trace.sequences[s]), lookups=int(lookups[0]) if n_layers else 0)
        times = layer_times(cfg, profile, shape, placement)
        bounds = [0, *placement.layer_ids, len(times)]
        segments = np.array([times[a:b].sum() for a, b in pairwise(bounds)])
        segments[-1] += lm_head_time(cfg, profile, shape)
        # Hashing and dedup scale with the Engram layers fetched (none: nothing to hash).
        hashing = costs.hash_time(profile, tokens, n_layers, p.hash_threads)
        if p.dedup:
            hashing += costs.dedup_time(profile, int(lookups.sum()), p.hash_threads)
        plans.append(StepPlan(tokens, segments, float(segments.sum()), hashing, lookups, unique, host, reused, hits))
    return plans
