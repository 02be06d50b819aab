"""Replay of an HBM row cache over a trace of Engram row accesses.

Each step brings a set of unique row ids of one Engram layer. A row is a hit
if it is in the cache when the step begins. Then, in this order:
  1. every hit is touched (its recency and frequency are updated, in step order);
  2. every miss is inserted (in step order); when the cache is full the
     policy's victim is evicted first. A step with more misses than the cache
     holds evicts rows it inserted itself, so the cache ends with the last ones.
Policies:
  - "lru": evict the least recently touched row.
  - "lfu": evict the row with the fewest accesses so far, counted over the whole
    trace up to now (counts survive eviction, so a returning hot row keeps its
    rank); ties go to the least recently touched.
  - "static_topk": an ORACLE, not a real policy. The cache holds the `capacity`
    rows most frequently accessed over the whole trace (ties: first accessed first),
    filled before step 0 and never changed. It bounds what a
    frequency-based cache could achieve, first touches included.

Row ids are first mapped to dense ints (by first access), then one Numba loop runs
the policy, O(1) per access. While the rows seen fit the cache nothing is evicted,
and LRU and LFU are the same linear pass (a row is a hit iff an earlier step had it).
Past that, LRU keeps a log of touches (the least recent row is the oldest entry still
current); LFU keeps doubly linked lists in arrays, one per access count.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from numba import njit

POLICIES = ("static_topk", "lru", "lfu")


@njit(cache=True, nogil=True)
def _mark_hits(dense, bounds, cached, is_hit, hits, s):
    """Record which of step s's rows are in the cache as the step begins."""
    for i in range(bounds[s], bounds[s + 1]):
        if cached[dense[i]] >= 0:
            is_hit[i] = True
            hits[s] += 1


@njit(cache=True, nogil=True)
def _no_hits(dense, bounds):
    """Hits per step and a hit flag per access, all zero to start."""
    return np.zeros(bounds.size - 1, dtype=np.int64), np.zeros(dense.size, dtype=np.bool_)


@njit(cache=True, nogil=True)
def _append(nxt, prv, head, row):
    """Link row in as the most recent."""
    tail = prv[head]
    nxt[tail] = row
    prv[row] = tail
    nxt[row] = head
    prv[head] = row


@njit(cache=True, nogil=True)
def _unlink(nxt, prv, row):
    nxt[prv[row]] = nxt[row]
    prv[nxt[row]] = prv[row]


@njit(cache=True, nogil=True)
def _empty_lists(n_rows, sentinels):
    """Linked lists in arrays over rows 0..n_rows-1 (-1: not cached) and `sentinels` empty lists after them."""
    nxt = np.full(n_rows + sentinels, -1, dtype=np.int64)
    prv = np.full(n_rows + sentinels, -1, dtype=np.int64)
    for c in range(sentinels):
        nxt[n_rows + c] = n_rows + c
        prv[n_rows + c] = n_rows + c
    return nxt, prv


@njit(cache=True, nogil=True)
def _replay_lists(dense, bounds, n_rows, capacity, max_count, lfu):
    """LRU (lfu False) or LFU over dense row ids, with doubly linked lists in arrays: O(1) per access.

    Node n_rows + c is the sentinel of the list of cached rows accessed c times; its next is the least
    recent row, its prev the most recent. LRU keeps every row at count 0 (one list); LFU counts each
    access and evicts the least recent row of the lowest count (a scan up the counts when that list
    empties, at most max_count steps).
    """
    hits, is_hit = _no_hits(dense, bounds)
    filled_at = -1  # the first step at whose end the cache is full
    nxt, prv = _empty_lists(n_rows, max_count + 1 if lfu else 1)
    count = np.zeros(n_rows, dtype=np.int64)  # LFU: never reset, counts span the whole trace
    lowest = 0  # no cached row has fewer accesses than this
    size = 0
    for s in range(bounds.size - 1):
        _mark_hits(dense, bounds, nxt, is_hit, hits, s)
        # Touch the hits: each becomes the most recent row of its list (LFU: the next count's).
        for i in range(bounds[s], bounds[s + 1]):
            if is_hit[i]:
                row = dense[i]
                _unlink(nxt, prv, row)
                if lfu:
                    count[row] += 1
                _append(nxt, prv, n_rows + count[row], row)
        # Insert the misses, evicting the least recent row of the lowest count when full.
        for i in range(bounds[s], bounds[s + 1]):
            row = dense[i]
            if is_hit[i] or nxt[row] >= 0:  # (the second test only guards against repeated ids)
                continue
            if size == capacity:
                while nxt[n_rows + lowest] == n_rows + lowest:
                    lowest += 1
                victim = nxt[n_rows + lowest]
                _unlink(nxt, prv, victim)
                nxt[victim] = -1
            else:
                size += 1
            if lfu:
                count[row] += 1
                lowest = min(lowest, count[row])
            _append(nxt, prv, n_rows + count[row], row)
        if filled_at < 0 and size == capacity:
            filled_at = s
    return hits, is_hit, filled_at


@njit(cache=True, nogil=True)
def _replay_lru(dense, bounds, last, queue, capacity):
    """LRU over dense row ids as a log of touches: queue[t] is the row touched t-th, last[row] the time of its
    latest touch (-1: not cached). The least recent cached row is the first entry of the log still its row's
    latest; stale entries before it are skipped once. Sequential but for one look-up per access (and per
    skipped entry): several times faster than linked lists, same hits."""
    hits, is_hit = _no_hits(dense, bounds)
    filled_at = -1
    t = 0
    head = 0
    size = 0
    for s in range(bounds.size - 1):
        for i in range(bounds[s], bounds[s + 1]):  # mark and touch the hits, in step order
            row = dense[i]
            if last[row] >= 0:
                is_hit[i] = True
                hits[s] += 1
                queue[t] = row
                last[row] = t
                t += 1
        for i in range(bounds[s], bounds[s + 1]):  # insert the misses, evicting when full
            row = dense[i]
            if is_hit[i] or last[row] >= 0:  # (the second test only guards against repeated ids)
                continue
            if size == capacity:
                while last[queue[head]] != head:
                    head += 1
                last[queue[head]] = -1
                head += 1
            else:
                size += 1
            queue[t] = row
            last[row] = t
            t += 1
        if filled_at < 0 and size == capacity:
            filled_at = s
    return hits, is_hit, filled_at


@njit(cache=True, nogil=True)
def _replay_unevicted(dense, bounds, n_rows, capacity):
    """LRU and LFU while nothing is evicted: a row is a hit iff an earlier step accessed it. One linear pass.

    Returns (hits, is_hit, filled_at, ok); ok is False (and the rest unfinished) as soon as more distinct
    rows arrive than the cache holds: then the first eviction makes the policy matter, and the lists must run.
    """
    hits, is_hit = _no_hits(dense, bounds)
    first_step = np.full(n_rows, -1, dtype=np.int32)
    filled_at = -1
    size = 0
    for s in range(bounds.size - 1):
        for i in range(bounds[s], bounds[s + 1]):
            seen = first_step[dense[i]]
            if seen < 0:
                if size == capacity:
                    return hits, is_hit, filled_at, False
                first_step[dense[i]] = s
                size += 1
            elif seen < s:
                is_hit[i] = True
                hits[s] += 1
        if filled_at < 0 and size == capacity:
            filled_at = s
    return hits, is_hit, filled_at, True


def _static_topk(dense, bounds, n_rows, capacity):
    """The oracle: the `capacity` most accessed rows (ties: first accessed first) are always cached.
    Returns (hits per step, a hit flag per access)."""
    counts = np.bincount(dense, minlength=n_rows)
    cached = np.zeros(n_rows, dtype=bool)
    if 0 < capacity < n_rows:
        # O(n): every row above the capacity-th largest count, then the earliest rows at that count.
        threshold = np.partition(counts, n_rows - capacity)[n_rows - capacity]
        cached[counts > threshold] = True
        at_threshold = np.flatnonzero(counts == threshold)  # dense ids are in first-access order
        cached[at_threshold[: capacity - int(cached.sum())]] = True
    elif capacity >= n_rows:
        cached[:] = True
    is_hit = cached[dense]
    hits_so_far = np.concatenate(([0], np.cumsum(is_hit, dtype=np.int64)))
    return hits_so_far[bounds[1:]] - hits_so_far[bounds[:-1]], is_hit


# Below this many possible row ids (and not far more than there are ids), dense ids come from a
# direct lookup array (O(n)) rather than a sort.
DIRECT_MAX_ROWS = 1 << 26


@njit(cache=True, nogil=True)
def _first_seen_ids(row_ids, high):
    label = np.full(high + 1, -1, dtype=np.int32)
    dense = np.empty(row_ids.size, dtype=np.int64)
    n = 0
    for i in range(row_ids.size):
        if label[row_ids[i]] < 0:
            label[row_ids[i]] = n
            n += 1
        dense[i] = label[row_ids[i]]
    return dense, n


def dense_ids(row_ids: np.ndarray) -> tuple[np.ndarray, int]:
    """Row ids relabelled 0..n_distinct-1 in order of first access, and n_distinct.

    First-access order keeps rows touched at about the same time close in memory,
    which makes the policy loops several times faster than row id order.
    """
    row_ids = np.asarray(row_ids, dtype=np.int64).ravel()
    if row_ids.size == 0:
        return row_ids, 0
    low, high = int(row_ids.min()), int(row_ids.max())
    if low >= 0 and high < min(DIRECT_MAX_ROWS, 16 * row_ids.size + (1 << 20)):
        return _first_seen_ids(row_ids, high)
    return _hashed_first_seen_ids(row_ids)


@njit(cache=True, nogil=True)
def _hashed_first_seen_ids(row_ids):
    """First-seen relabelling through an open-addressing hash table (sparse ids, O(n)); a slot holds its
    key and label side by side (one cache line per probe), at most 2/3 full."""
    slots, bits = 2, 1
    while 2 * slots < 3 * row_ids.size:
        slots *= 2
        bits += 1
    mask = slots - 1
    shift = np.uint64(64 - bits)
    table = np.full((slots, 2), -1, dtype=np.int64)  # [key, label]; label -1: empty
    dense = np.empty(row_ids.size, dtype=np.int64)
    n = 0
    for i in range(row_ids.size):
        key = row_ids[i]
        # Fibonacci hashing spreads consecutive ids over the table.
        j = np.int64((np.uint64(key) * np.uint64(11400714819323198485)) >> shift)
        while table[j, 1] >= 0 and table[j, 0] != key:
            j = (j + 1) & mask
        if table[j, 1] < 0:
            table[j, 0] = key
            table[j, 1] = n
            n += 1
        dense[i] = table[j, 1]
    return dense, n


def replay_dense(dense: np.ndarray, counts: np.ndarray, n_rows: int, capacity: int, policy: str) -> np.ndarray:
    """Hits per step for dense row ids in 0..n_rows-1, steps given by their lengths `counts`."""
    return replay_flags(dense, counts, n_rows, capacity, policy)[0]


def replay_flags(dense: np.ndarray, counts: np.ndarray, n_rows: int, capacity: int,
                 policy: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(hits per step, a hit flag per access, the first step at whose end the cache was full; -1: never).

    The static oracle is full before step 0; an empty cache is full from the start too."""
    if policy not in POLICIES:
        raise ValueError(f"unknown cache policy {policy!r}; use one of {POLICIES}")
    if capacity < 0:
        raise ValueError(f"cache capacity must be >= 0 rows, got {capacity}")
    bounds = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    if capacity == 0:  # an empty cache never hits
        return np.zeros(bounds.size - 1, dtype=np.int64), np.zeros(dense.size, dtype=bool), 0
    if policy == "static_topk":
        return (*_static_topk(dense, bounds, n_rows, capacity), 0)
    hits, is_hit, filled, unevicted = _replay_unevicted(dense, bounds, n_rows, int(capacity))
    if unevicted:  # LRU and LFU agree until the first eviction
        return hits, is_hit, int(filled)
    if policy == "lfu":
        max_count = int(np.bincount(dense).max()) if dense.size else 0
        hits, is_hit, filled = _replay_lists(dense, bounds, n_rows, int(capacity), max_count, True)
    else:
        # Times count touches (at most two per access): int32 while they fit, half the memory traffic.
        index = np.int32 if 2 * dense.size < np.iinfo(np.int32).max else np.int64
        last, queue = np.full(n_rows, -1, dtype=index), np.empty(2 * dense.size, dtype=index)
        hits, is_hit, filled = _replay_lru(dense, bounds, last, queue, int(capacity))
    return hits, is_hit, int(filled)


@dataclass(frozen=True)
class TierRates:
    """What a two-level cache (an HBM cache, then a DRAM cache of what it misses) served in a replay.

    Rates are shares of all the step's distinct rows. Steady state is measured after the warm-up: from the
    step at which the last cache that can fill became full (a cache that never fills within the replay is
    measured over the replay's second half, and `filled` is False: its hit rate is then a lower bound, since
    a longer history would keep more of the rows that return)."""
    hbm_hit_rate: float
    dram_hit_rate: float
    warmup_steps: int
    warmup_hbm_hit_rate: float
    warmup_dram_hit_rate: float
    filled: bool
    replay_steps: int
    replay_accesses: int

    @property
    def drive_rate(self) -> float:
        return max(0.0, 1.0 - self.hbm_hit_rate - self.dram_hit_rate)


def replay_tiers(row_ids: np.ndarray, counts: np.ndarray, table_rows: int, hbm_rows: int, hbm_policy: str,
                 dram_rows: int = 0, dram_policy: str = "lru",
                 dense: tuple[np.ndarray, int] | None = None) -> TierRates:
    """Replay steps of unique row ids (flat, with each step's length) through an HBM cache of hbm_rows rows,
    then its misses through a DRAM cache of dram_rows rows. A cache of at least table_rows rows holds the
    whole table: after its warm-up it never misses. `dense`: dense_ids(row_ids), if already computed."""
    counts = np.asarray(counts, dtype=np.int64)
    dense, n = dense if dense is not None else dense_ids(row_ids)
    n_steps = counts.size
    full_hbm, full_dram = hbm_rows >= table_rows, dram_rows >= table_rows
    h1, flags, fill1 = replay_flags(dense, counts, n, 0 if full_hbm else hbm_rows, hbm_policy)
    if full_hbm:  # only first touches miss: mark them, as an unbounded cache would
        h1, flags, fill1 = replay_flags(dense, counts, n, n, "lru")
    miss_counts = counts - h1
    if full_hbm:
        h2, fill2 = np.zeros(n_steps, dtype=np.int64), 0
    else:
        cap2 = n if full_dram else dram_rows
        h2, _, fill2 = replay_flags(dense[~flags], miss_counts, n, cap2, dram_policy)
    return _tier_rates(counts, h1, fill1, h2, fill2, hbm_rows, dram_rows, full_hbm, full_dram)


def unevicted_tiers(counts: np.ndarray, earlier: np.ndarray, n_distinct: int, table_rows: int, hbm_rows: int,
                    hbm_policy: str, dram_rows: int = 0, dram_policy: str = "lru") -> TierRates | None:
    """replay_tiers' answer where it follows from counts alone, else None: each step's distinct rows
    (`counts`), how many of them an earlier step had (`earlier`, the hits of a cache that never evicts) and
    the stream's distinct rows. So it is when one cache does all the work and evicts nothing (LRU or LFU
    holding every row seen, or a whole-table cache), and the other holds nothing or sees no misses (behind a
    whole-table HBM cache)."""
    counts, earlier = np.asarray(counts, dtype=np.int64), np.asarray(earlier, dtype=np.int64)
    full_hbm, full_dram = hbm_rows >= table_rows, dram_rows >= table_rows
    seen = np.cumsum(counts - earlier)  # distinct rows seen by the end of each step

    def unevicted(capacity: int, policy: str):
        """(hits, the first step at whose end the cache is full) of a cache that evicts nothing, or None."""
        if policy not in ("lru", "lfu") or n_distinct > capacity:
            return None
        full = np.flatnonzero(seen == capacity)
        return earlier, int(full[0]) if full.size else -1

    nothing = (np.zeros(counts.size, dtype=np.int64), 0)  # what replay_flags gives an empty cache
    if hbm_policy not in POLICIES or dram_policy not in POLICIES or min(hbm_rows, dram_rows) < 0:
        return None  # replay_tiers says what is wrong
    if full_hbm:
        first, second = unevicted(n_distinct, "lru"), nothing
    elif hbm_rows == 0:  # the DRAM cache sees every access
        first, second = nothing, (nothing if dram_rows == 0 else unevicted(n_distinct if full_dram else dram_rows,
                                                                            dram_policy))
    elif dram_rows == 0 and not full_dram:
        first, second = unevicted(hbm_rows, hbm_policy), nothing
    else:
        return None
    if first is None or second is None:
        return None
    return _tier_rates(counts, *first, *second, hbm_rows, dram_rows, full_hbm, full_dram)


def _tier_rates(counts: np.ndarray, h1: np.ndarray, fill1: int, h2: np.ndarray, fill2: int, hbm_rows: int,
                dram_rows: int, full_hbm: bool, full_dram: bool) -> TierRates:
    """TierRates from each cache's hits per step and the step it filled at (-1: never)."""
    n_steps = counts.size
    # Warm-up ends when each cache that can fill has filled (one holding the table never needs to).
    ends = [f for f, full, cap in ((fill1, full_hbm, hbm_rows), (fill2, full_dram, dram_rows)) if cap and not full]
    filled = all(f >= 0 for f in ends)
    warm = max([f + 1 for f in ends], default=0) if filled else n_steps // 2
    if full_hbm or full_dram:  # a whole-table cache is warm once the replay's rows have been seen once
        warm = max(warm, n_steps // 2)
    warm = min(warm, (3 * n_steps) // 4)  # keep a quarter of the replay to measure

    def rate(hits, lo, hi):
        return float(hits[lo:hi].sum() / max(int(counts[lo:hi].sum()), 1))

    steady_dram = rate(h2, warm, n_steps)
    if full_hbm:
        steady = (1.0, 0.0)
    elif full_dram:
        steady = (rate(h1, warm, n_steps), 1.0 - rate(h1, warm, n_steps))
    else:
        steady = (rate(h1, warm, n_steps), steady_dram)
    return TierRates(hbm_hit_rate=steady[0], dram_hit_rate=steady[1], warmup_steps=int(warm),
                     warmup_hbm_hit_rate=rate(h1, 0, warm), warmup_dram_hit_rate=rate(h2, 0, warm), filled=filled,
                     replay_steps=int(n_steps), replay_accesses=int(counts.sum()))


def replay_flat(row_ids: np.ndarray, counts: np.ndarray, capacity: int, policy: str) -> np.ndarray:
    """Like replay, with the steps given as one flat array and each step's length."""
    dense, n_rows = dense_ids(row_ids)
    return replay_dense(dense, np.asarray(counts, dtype=np.int64), n_rows, capacity, policy)


def replay(steps: list[np.ndarray], capacity: int, policy: str) -> np.ndarray:
    """Hits per step for per-step arrays of UNIQUE global row ids of one layer."""
    counts = np.array([len(s) for s in steps], dtype=np.int64)
    flat = np.concatenate(steps) if steps else np.zeros(0, dtype=np.int64)
    return replay_flat(flat, counts, capacity, policy)


def zipf_trace(n_accesses: int, n_rows: int, draws_per_step: int, s: float = 1.1, seed: int = 0) -> list[np.ndarray]:
    """Steps of unique row ids drawn from a Zipf law over n_rows, about n_accesses in all (tests, benchmarks)."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_rows + 1) ** s
    cdf = np.cumsum(weights) / weights.sum()
    perm = rng.permutation(n_rows)  # so hot rows are not simply the low ids
    steps, total = [], 0
    while total < n_accesses:
        draws = np.minimum(np.searchsorted(cdf, rng.random(draws_per_step)), n_rows - 1)
        steps.append(np.unique(perm[draws]))
        total += steps[-1].size
    return steps


def bench_cache(n_accesses: int = 5_000_000, n_rows: int = 10_000_000, draws_per_step: int = 65536,
                capacity_fraction: float = 0.1) -> dict:
    """Accesses/s per policy on a Zipf trace: the policy loop alone, and with the np.unique mapping."""
    steps = zipf_trace(n_accesses, n_rows, draws_per_step)
    counts = np.array([len(s) for s in steps], dtype=np.int64)
    flat = np.concatenate(steps)
    start = time.perf_counter()
    dense, distinct = dense_ids(flat)
    map_s = time.perf_counter() - start
    capacity = int(capacity_fraction * distinct)
    out = {"accesses": flat.size, "distinct_rows": distinct, "capacity": capacity, "map_s": map_s}
    for policy in POLICIES:
        replay_dense(dense[:10], np.array([10]), distinct, 5, policy)  # compile outside the timing
        start = time.perf_counter()
        hits = replay_dense(dense, counts, distinct, capacity, policy)
        loop_s = time.perf_counter() - start
        out[f"{policy}_accesses_per_s"] = flat.size / loop_s
        out[f"{policy}_with_map_accesses_per_s"] = flat.size / (loop_s + map_s)
        out[f"{policy}_hit_rate"] = float(hits.sum() / flat.size)
    return out
