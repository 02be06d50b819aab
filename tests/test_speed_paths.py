"""The fast paths give what the general ones give: same hits, same hit flags, same fill step."""

import numpy as np
import pytest

from workloads import cache


def random_steps(rng, repeats: bool):
    n_rows = int(rng.integers(1, 60))
    counts = np.minimum(rng.integers(0, 12, int(rng.integers(1, 20))), n_rows)
    dense = [rng.choice(n_rows, size=c, replace=repeats) for c in counts]
    return np.concatenate(dense).astype(np.int64), counts.astype(np.int64), n_rows


@pytest.mark.parametrize("policy", ["lru", "lfu"])
@pytest.mark.parametrize("repeats", [False, True])
def test_fast_replays_match_the_linked_lists(policy, repeats):
    """The touch-log LRU and the no-eviction pass against the linked-list replay, flags and fill step too."""
    rng = np.random.default_rng(11)
    for _ in range(300):
        dense, counts, n_rows = random_steps(rng, repeats)
        bounds = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        capacity = int(rng.integers(1, n_rows + 3))
        max_count = int(np.bincount(dense).max()) if dense.size else 0
        want = cache._replay_lists(dense, bounds, n_rows, capacity, max_count, policy == "lfu")
        got = cache.replay_flags(dense, counts, n_rows, capacity, policy)
        assert np.array_equal(want[0], got[0]) and np.array_equal(want[1], got[1]) and want[2] == got[2]


def test_the_no_eviction_pass_gives_up_at_the_first_eviction():
    dense, bounds = np.array([0, 1, 2, 0], dtype=np.int64), np.array([0, 2, 4], dtype=np.int64)
    assert not cache._replay_unevicted(dense, bounds, 3, 2)[3]
    hits, is_hit, filled, ok = cache._replay_unevicted(dense, bounds, 3, 3)
    assert ok and hits.tolist() == [0, 1] and is_hit.tolist() == [False, False, False, True] and filled == 1


def test_bitmaps_and_hash_table_count_the_same_rows(monkeypatch):
    """Whichever sets use_bitmaps picks, a trace's counts are the same (here: all bitmaps, then none)."""
    from vocab.config import load_config
    from workloads import trace as trace_mod

    cfg = load_config("engram-27b").with_table_gib(1).with_phase("decode").with_steps(4)
    counts = []
    for limit in (1 << 28, 0):
        monkeypatch.setattr(trace_mod, "BITMAP_MAX_ROWS", limit)
        hashed = trace_mod._hash_steps(cfg, 4, np.random.default_rng(0), list_ids=True)
        listed = [hashed.ids[col, : hashed.distinct[:, col].sum()] for col in range(hashed.distinct.shape[1])]
        counts.append((hashed.distinct, hashed.reused, *listed))  # (past the listed rows: unwritten)
    for a, b in zip(*counts):
        assert np.array_equal(a, b)


def test_bench_yardsticks():
    from tools.bench import bare_simpy_events_per_s, spread

    assert bare_simpy_events_per_s(1000) > 0
    assert spread([3.0, 1.0, 2.0]) == (1.0, 2.0, 3.0)


def test_hash_tables_of_tables_past_4g_rows_count_the_same(monkeypatch):
    """The int64 hash table (tables of 4 G rows or more) counts as the uint32 one does."""
    from vocab.config import load_config
    from workloads import trace as trace_mod

    cfg = load_config("engram-27b").with_table_gib(1).with_phase("prefill").with_steps(3)
    monkeypatch.setattr(trace_mod, "BITMAP_MAX_ROWS", 0)
    narrow = trace_mod._hash_steps(cfg, 3, np.random.default_rng(0), list_ids=False)
    table = trace_mod._hash_table
    assert table(5, 100).dtype == np.uint32 and table(5, 1 << 33).dtype == np.int64 and table(5, 100).shape == (8, 2)
    monkeypatch.setattr(trace_mod, "_hash_table", lambda entries, n_rows: table(entries, 1 << 40))
    wide = trace_mod._hash_steps(cfg, 3, np.random.default_rng(0), list_ids=False)
    assert narrow.distinct.sum() > 0
    assert np.array_equal(narrow.distinct, wide.distinct) and np.array_equal(narrow.reused, wide.reused)
