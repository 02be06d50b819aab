"""Counting a layer's distinct rows per step (Numba kernels for workloads/trace.py).

A layer's rows fall into (N-1) * H head tables (sub-tables) of disjoint row ranges,
so a step's distinct rows are the sum over sub-tables of the distinct rows within
each. The kernels work one sub-table at a time: its set is a fraction of the layer's
(1 / 16 of it for Engram-27B), small enough to stay in the CPU's caches, where one
set for the whole layer was not. Rows inside a sub-table are stored as the local
row (the hash modulo the head's prime); the global row is the head's offset plus it.

- count_rows: per step, the distinct rows and those also in the previous step
  (two sets, this step's and the previous one's, for one sub-table at a time:
  bitmaps, or an open-addressing hash table of 8 times the widest step's
  tokens so that a probe rarely walks: most of what a probe costs is the
  mispredicted end of its walk).
- scan_rows: over a whole stream, one map per sub-table from row to the step
  it was last seen in; per step, distinct rows, those in the previous step and
  those in any earlier step (the hits of a cache that never evicts). Asked to,
  it also labels each access (its row's first-seen order within the
  sub-table), from which list_rows writes the stream's rows and their dense
  ids (first-seen order over the layer) when a cache replay needs them.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from workloads.fastmod import mod_prime

# Fibonacci hashing: the row times 2^64 / golden ratio, top bits (spreads consecutive rows).
FIBONACCI = 11400714819323198485


@njit(cache=True, nogil=True)
def ngram_mixes(ctx, multipliers, n_orders):
    """[n_orders, tokens]: each token's N-gram hash before the modulo, order 2 first (the official mix)."""
    out = np.empty((n_orders, ctx.shape[0]), dtype=np.int64)
    for i in range(ctx.shape[0]):
        mix = ctx[i, 0] * multipliers[0]
        for o in range(n_orders):
            mix ^= ctx[i, o + 1] * multipliers[o + 1]
            out[o, i] = mix
    return out


@njit(cache=True, nogil=True)
def _log2(slots):
    bits = 0
    while (1 << bits) < slots:
        bits += 1
    return bits


@njit(cache=True, nogil=True)
def count_rows(mix, bounds, primes, use_bitmap, table, distinct, reused):
    """Add each step's distinct rows to distinct[s] and those also in step s - 1 to reused[s], one
    sub-table at a time over all the steps (its two sets stay in the caches).

    With use_bitmap, the two sets are bitmaps over the sub-table's rows (a set is cleared by unsetting the
    words its step set); else `table` [slots, 2] holds both sets side by side (one cache line serves both
    probes), all ones for an empty slot, and a set is emptied as its step begins.
    """
    n_steps = bounds.size - 1
    n_orders, n_heads = primes.shape
    widest = 1
    for s in range(n_steps):
        widest = max(widest, bounds[s + 1] - bounds[s])
    words = (primes.max() + 63) // 64 if use_bitmap else 1
    bits = np.zeros((2, words), dtype=np.uint64)
    seen = np.empty((2, widest if use_bitmap else 1), dtype=np.int64)
    n_seen = np.zeros(2, dtype=np.int64)
    slots = table.shape[0]
    mask = slots - 1
    shift = np.uint64(64 - _log2(slots))
    empty = table[0, 0]
    inv = 1.0 / primes.astype(np.float64)
    for o in range(n_orders):
        for j in range(n_heads):
            p, ip = primes[o, j], inv[o, j]
            for prev in range(2):  # the previous sub-table's sets
                for k in range(n_seen[prev]):
                    bits[prev, seen[prev, k] >> 6] = 0
                n_seen[prev] = 0
                if not use_bitmap:
                    table[:, prev] = empty
            for s in range(n_steps):
                cur = s & 1
                prev = cur ^ 1
                found = 0
                again = 0
                if use_bitmap:
                    now, before, listed = bits[cur], bits[prev], seen[cur]
                    for k in range(n_seen[cur]):  # forget step s - 2
                        now[listed[k] >> 6] = 0
                    for i in range(bounds[s], bounds[s + 1]):
                        row = mod_prime(mix[o, i], p, ip)
                        word = row >> 6
                        bit = np.uint64(1) << np.uint64(row & 63)
                        if now[word] & bit:
                            continue  # already seen this step
                        now[word] |= bit
                        listed[found] = row
                        found += 1
                        if before[word] & bit:
                            again += 1
                    n_seen[cur] = found
                else:
                    table[:, cur] = empty  # forget step s - 2
                    for i in range(bounds[s], bounds[s + 1]):
                        row = mod_prime(mix[o, i], p, ip)
                        start = np.int64((np.uint64(row) * np.uint64(FIBONACCI)) >> shift)
                        h = start
                        while table[h, cur] != row and table[h, cur] != empty:
                            h = (h + 1) & mask
                        if table[h, cur] == row:
                            continue  # already seen this step
                        table[h, cur] = row
                        found += 1
                        h = start
                        while table[h, prev] != empty:
                            if table[h, prev] == row:
                                again += 1
                                break
                            h = (h + 1) & mask
                distinct[s] += found
                reused[s] += again


@njit(cache=True, nogil=True)
def scan_rows(mix, bounds, primes, table, labels, local_rows, n_sub, distinct, reused, earlier):
    """Over the whole stream, per sub-table: add each step's distinct rows to distinct[s], those also in
    step s - 1 to reused[s], those in any earlier step to earlier[s]; n_sub[q]: sub-table q's distinct rows.

    table [slots >= 2 * tokens, 2 or 3]: (local row, the step it was last seen in[, its label]), all ones
    for an empty slot. With labels not empty (and a third lane), also writes labels[q, i] (the label, in
    first-seen order, of token i's row in sub-table q; -1 where the step had it already) and local_rows
    (each sub-table's rows by label, sub-tables one after the other).
    """
    n_steps = bounds.size - 1
    n_orders, n_heads = primes.shape
    slots = table.shape[0]
    mask = slots - 1
    shift = np.uint64(64 - _log2(slots))
    empty = table[0, 0]
    inv = 1.0 / primes.astype(np.float64)
    listing = labels.size > 0
    base = 0
    for o in range(n_orders):
        for j in range(n_heads):
            q = o * n_heads + j
            table[:, 0] = empty
            p, ip = primes[o, j], inv[o, j]
            n = 0
            for s in range(n_steps):
                found = 0
                again = 0
                known = 0
                for i in range(bounds[s], bounds[s + 1]):
                    row = mod_prime(mix[o, i], p, ip)
                    h = np.int64((np.uint64(row) * np.uint64(FIBONACCI)) >> shift)
                    while table[h, 0] != row and table[h, 0] != empty:
                        h = (h + 1) & mask
                    if table[h, 0] == row:
                        last = np.int64(table[h, 1])
                        if last == s:  # already seen this step
                            if listing:
                                labels[q, i] = -1
                            continue
                        known += 1
                        if last == s - 1:
                            again += 1
                    else:
                        table[h, 0] = row
                        if listing:
                            table[h, 2] = n
                            local_rows[base + n] = row
                        n += 1
                    table[h, 1] = s
                    if listing:
                        labels[q, i] = table[h, 2]
                    found += 1
                distinct[s] += found
                reused[s] += again
                earlier[s] += known
            n_sub[q] = n
            base += n


@njit(cache=True, nogil=True)
def list_rows(tokens, labels, local_rows, n_sub, offsets, ids_out, dense_out):
    """The stream's distinct rows per step, in stream order (token by token, sub-table by sub-table):
    global row ids into ids_out and dense ids (0.. in order of first access over the layer) into
    dense_out. Returns (how many it wrote, how many distinct rows the layer saw)."""
    n_q = labels.shape[0]
    base = np.zeros(n_q + 1, dtype=np.int64)
    for q in range(n_q):
        base[q + 1] = base[q] + n_sub[q]
    dense_of = np.full(base[n_q], -1, dtype=np.int64)
    n_dense = 0
    n = 0
    for i in range(tokens):
        for q in range(n_q):
            label = labels[q, i]
            if label < 0:
                continue
            k = base[q] + label
            if dense_of[k] < 0:
                dense_of[k] = n_dense
                n_dense += 1
            dense_out[n] = dense_of[k]
            ids_out[n] = offsets[q] + local_rows[k]
            n += 1
    return n, n_dense
