"""A serving step's Engram rows: its tokens' N-grams hashed with the official rule, counted per layer.

A serving run's steps are formed while it runs (workloads/scheduler.py), so
unlike a steady-state trace they are hashed one at a time, as they are formed:
each chunk's tokens with the N-1 tokens before them in their request (the pad
id before the request starts). Per Engram layer: lookups, distinct rows, and
distinct rows also fetched by the previous step.

Caches (hbm_cache, ssd) take the steady-state hit rates of the same token
source's cache replay (workloads/trace.replay_caches, over a steady decode
batch of the scheduler's sequence cap): a serving run's rows come from the
same N-gram distribution, and its first steps' cold caches are reported
there (Trace.tiers) rather than replayed request by request.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from vocab.config import RunConfig
from vocab.geometry import table_offsets
from workloads.cache import TierRates
from workloads.fastmod import mod_prime
from workloads.hashing import layer_multipliers
from workloads.requests import Requests
from workloads.scheduler import ServeStep
from workloads.trace import replay_caches


def step_contexts(requests: Requests, step: ServeStep, back: int, pad_id: int) -> np.ndarray:
    """[tokens, back + 1]: column k = the token k places before each of the step's tokens in its request."""
    counts = step.counts
    first = np.repeat(np.cumsum(counts) - counts, counts)
    pos = np.repeat(step.starts, counts) + (np.arange(int(counts.sum())) - first)
    base = np.repeat(requests.offsets[step.requests], counts)
    ctx = np.empty((pos.size, back + 1), dtype=np.int64)
    for k in range(back + 1):
        ctx[:, k] = np.where(pos >= k, requests.tokens[base + np.maximum(pos - k, 0)], pad_id)
    return ctx


@njit(cache=True, nogil=True)
def _hash_rows(ctx, multipliers, primes, offsets, out):
    """out[layer, i * orders * heads + o * heads + j]: token i's global row in head j of order o + 2.
    Serial: one step is microseconds of work, less than waking a parallel region's threads (~10 ms here)."""
    n_layers, n_orders, n_heads = primes.shape
    inv = 1.0 / primes.astype(np.float64)
    for layer in range(n_layers):
        m = multipliers[layer]
        for i in range(ctx.shape[0]):
            mix = ctx[i, 0] * m[0]
            for o in range(n_orders):
                mix ^= ctx[i, o + 1] * m[o + 1]
                for j in range(n_heads):
                    out[layer, (i * n_orders + o) * n_heads + j] = (
                        offsets[layer, o * n_heads + j] + mod_prime(mix, primes[layer, o, j], inv[layer, o, j]))


class ServingRows:
    """Hashes each step of one serving run in order (reuse is counted against the step before)."""

    def __init__(self, cfg: RunConfig, requests: Requests, cache_rows: int | None = None,
                 dram_rows: int | None = None):
        eng = cfg.engram
        self.cfg, self.requests = cfg, requests
        sizes = [eng.table_sizes[layer] for layer in eng.layer_ids]
        self.primes = np.array(sizes, dtype=np.int64)  # [layers, orders, heads]
        self.offsets = np.stack([table_offsets(s) for s in sizes])
        self.multipliers = np.stack([layer_multipliers(eng.seed, layer, eng.max_ngram_size,
                                                       eng.compressed_vocab_size) for layer in eng.layer_ids])
        self.previous: list[np.ndarray] = [np.empty(0, dtype=np.int64) for _ in sizes]
        self.tiers = self._tiers(cache_rows, dram_rows)

    def _tiers(self, cache_rows: int | None, dram_rows: int | None) -> list[TierRates] | None:
        if cache_rows is None and dram_rows is None:
            return None
        cfg = self.cfg
        batch = min(cfg.workload.scheduler.max_sequences, self.requests.count)
        steady = cfg.with_workload(phase="decode", sequences=batch)
        return replay_caches(steady, cache_rows or 0, dram_rows or 0, float(batch * cfg.engram.tables_per_layer))

    def rows(self, step: ServeStep) -> dict[str, np.ndarray]:
        """Per Engram layer (cfg.engram.layer_ids order): lookups, distinct, reused, cache_hits, dram_hits."""
        eng = self.cfg.engram
        ctx = step_contexts(self.requests, step, eng.max_ngram_size - 1, eng.compressed_pad_id)
        n_layers = self.primes.shape[0]
        ids = np.empty((n_layers, ctx.shape[0] * eng.tables_per_layer), dtype=np.int64)
        _hash_rows(ctx, self.multipliers, self.primes, self.offsets, ids)
        distinct = np.zeros(n_layers, dtype=np.int64)
        reused = np.zeros(n_layers, dtype=np.int64)
        for col in range(n_layers):
            unique = np.sort(ids[col])
            if unique.size:
                unique = unique[np.concatenate(([True], unique[1:] != unique[:-1]))]
            distinct[col] = unique.size
            prev = self.previous[col]
            if prev.size:
                at = np.minimum(np.searchsorted(prev, unique), prev.size - 1)
                reused[col] = int(np.count_nonzero(prev[at] == unique))
            self.previous[col] = unique
        hits, dram = np.zeros_like(distinct), np.zeros_like(distinct)
        for col, t in enumerate(self.tiers or []):
            hits[col] = np.rint(distinct[col] * t.hbm_hit_rate)
            dram[col] = min(np.rint(distinct[col] * t.dram_hit_rate), distinct[col] - hits[col])
        lookups = np.full(n_layers, ctx.shape[0] * eng.tables_per_layer, dtype=np.int64)
        return dict(lookups=lookups, distinct=distinct, reused=reused, cache_hits=hits, dram_hits=dram)
