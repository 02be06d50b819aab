"""The ssd store's online DRAM cache of table rows: lru, lfu or static_topk, as workloads/cache.py replays them.

Per fetch (one step's sorted unique rows of one layer) a row is a hit if it is
cached when the fetch begins; then hits are touched in order, and misses are
inserted in order, the policy's victim evicted first when the cache is full (a
fetch with more misses than the cache holds ends with its last ones).
- lru: evict the least recently touched row;
- lfu: evict the row with the fewest accesses so far (counts survive eviction),
  ties to the least recently touched;
- static_topk: the given hot rows (by falling frequency) for the whole run.
One indexed min-heap over the slots, keyed (accesses if lfu else 0, last touch),
serves lru and lfu in O(log capacity) per row. Bookkeeping costs 4 B per table
row (8 B with lfu's counts), beside the cached rows themselves.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from vocab.placements import CACHE_POLICIES


@njit(inline="always")
def _less(hi, lo, a, b):
    return hi[a] < hi[b] or (hi[a] == hi[b] and lo[a] < lo[b])


@njit(inline="always")
def _swap(heap, pos, i, j):
    heap[i], heap[j] = heap[j], heap[i]
    pos[heap[i]] = i
    pos[heap[j]] = j


@njit(cache=True, nogil=True)
def _sift_down(heap, pos, hi, lo, i, size):
    while True:
        c = 2 * i + 1
        if c >= size:
            return
        if c + 1 < size and _less(hi, lo, heap[c + 1], heap[c]):
            c += 1
        if not _less(hi, lo, heap[c], heap[i]):
            return
        _swap(heap, pos, i, c)
        i = c


@njit(cache=True, nogil=True)
def _sift_up(heap, pos, hi, lo, i):
    while i > 0:
        p = (i - 1) // 2
        if not _less(hi, lo, heap[i], heap[p]):
            return
        _swap(heap, pos, i, p)
        i = p


@njit(cache=True, nogil=True)
def _access(rows, slot_of, slot_row, heap, pos, hi, lo, counts, state, lfu):
    """Apply one fetch's rows to the cache; state = [size, capacity, tick] (updated in place)."""
    size, cap, tick = state[0], state[1], state[2]
    n = rows.size
    hit = np.empty(n, dtype=np.bool_)
    for i in range(n):
        hit[i] = slot_of[rows[i]] >= 0
    for i in range(n):
        r = rows[i]
        if lfu:
            counts[r] += 1
        if hit[i]:  # keys only grow on a touch: the slot can only move down
            tick += 1
            s = slot_of[r]
            hi[s] = counts[r] if lfu else 0
            lo[s] = tick
            _sift_down(heap, pos, hi, lo, pos[s], size)
    for i in range(n):
        if hit[i] or cap == 0:
            continue
        r = rows[i]
        tick += 1
        if size < cap:
            s = size
            heap[size] = s
            pos[s] = size
            size += 1
        else:
            s = heap[0]
            slot_of[slot_row[s]] = -1
        slot_row[s] = r
        slot_of[r] = s
        hi[s] = counts[r] if lfu else 0
        lo[s] = tick
        _sift_down(heap, pos, hi, lo, pos[s], size)
        _sift_up(heap, pos, hi, lo, pos[s])
    state[0], state[2] = size, tick


class DramCache:
    """Up to `capacity` rows of a `rows`-row table, `row_bytes` each, in host memory."""

    def __init__(self, rows: int, row_bytes: int, capacity: int, policy: str = "lru", hot_rows=None):
        if policy not in CACHE_POLICIES:
            raise ValueError(f"DRAM cache policy {policy!r} is not one of {list(CACHE_POLICIES)}")
        self.policy = policy
        self.capacity = int(min(max(0, capacity), rows))
        self.data = np.zeros((max(1, self.capacity), row_bytes), dtype=np.uint8)
        self.slot_of = np.full(rows if self.capacity else 1, -1, dtype=np.int32)
        self.slot_row = np.full(max(1, self.capacity), -1, dtype=np.int64)
        self.heap = np.arange(max(1, self.capacity), dtype=np.int64)
        self.pos = np.arange(max(1, self.capacity), dtype=np.int64)
        self.hi = np.zeros(max(1, self.capacity), dtype=np.int64)
        self.lo = np.zeros(max(1, self.capacity), dtype=np.int64)
        self.counts = np.zeros(rows if policy == "lfu" and self.capacity else 1, dtype=np.int32)
        self.state = np.array([0, self.capacity, 0], dtype=np.int64)
        self.hot = np.zeros(0, np.int64)
        if policy == "static_topk" and hot_rows is not None and self.capacity:
            hot = np.asarray(hot_rows, dtype=np.int64).reshape(-1)
            _, first = np.unique(hot, return_index=True)
            self.hot = hot[np.sort(first)][:self.capacity]   # distinct, in the given (frequency) order
            self.slot_of[self.hot] = np.arange(self.hot.size)
            self.slot_row[:self.hot.size] = self.hot

    @property
    def needs_hot_data(self) -> bool:
        """static_topk: the hot rows' bytes are still to be given (fill_hot)."""
        return self.hot.size > 0

    def fill_hot(self, hot_bytes: np.ndarray) -> None:
        self.data[:self.hot.size] = hot_bytes
        self.hot = np.zeros(0, np.int64)

    def slots(self, uniq: np.ndarray) -> np.ndarray:
        """Each row's slot now (-1: a miss)."""
        if not self.capacity:
            return np.full(uniq.size, -1, dtype=np.int64)
        return self.slot_of[uniq].astype(np.int64)

    def update(self, uniq: np.ndarray) -> None:
        """Touch the hits and insert the misses of one fetch (sorted unique rows); read the hits' bytes first."""
        if self.capacity and self.policy != "static_topk":
            _access(uniq, self.slot_of, self.slot_row, self.heap, self.pos, self.hi, self.lo, self.counts,
                    self.state, self.policy == "lfu")

    def fill(self, miss_ids: np.ndarray, miss_bytes: np.ndarray) -> None:
        """After update: the bytes of the misses that stayed in the cache."""
        if not self.capacity or self.policy == "static_topk" or not miss_ids.size:
            return
        slots = self.slot_of[miss_ids]
        kept = slots >= 0
        self.data[slots[kept]] = miss_bytes[kept]

    @property
    def cached_rows(self) -> int:
        return int(self.state[0]) if self.policy != "static_topk" else int((self.slot_row >= 0).sum())
