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


@pytest.mark.parametrize("policy", ["lru", "lfu", "static_topk"])
def test_caches_that_evict_nothing_follow_from_the_counts_as_the_replay_finds(policy):
    """unevicted_tiers, wherever it answers, gives replay_tiers' rates to the bit; it declines where a cache
    evicts (or the oracle), and some answers are seen (not a test of None only)."""
    rng = np.random.default_rng(5)
    answered = 0
    for _ in range(400):
        dense, counts, n_rows = random_steps(rng, repeats=False)
        bounds = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        seen = np.zeros(n_rows, dtype=bool)
        earlier = np.zeros(counts.size, dtype=np.int64)
        for s in range(counts.size):  # rows an earlier step had, by brute force
            step = dense[bounds[s]:bounds[s + 1]]
            earlier[s] = int(seen[step].sum())
            seen[step] = True
        n_distinct = int(seen.sum())
        table = int(rng.integers(max(n_distinct, 1), 2 * n_rows + 2))
        hbm, dram = (int(rng.choice([0, rng.integers(1, n_rows + 3), table + 1])) for _ in range(2))
        got = cache.unevicted_tiers(counts, earlier, n_distinct, table, hbm, policy, dram, policy)
        if got is not None:
            answered += 1
            assert got == cache.replay_tiers(dense, counts, table, hbm, policy, dram, policy)
    assert answered > (50 if policy != "static_topk" else 10)  # (the oracle: only whole-table and empty caches)


def test_an_evicting_cache_is_left_to_the_replay():
    counts, earlier = np.array([3, 3]), np.array([0, 1])  # 5 distinct rows
    assert cache.unevicted_tiers(counts, earlier, 5, 100, 4, "lru") is None     # 4 rows hold fewer: it evicts
    assert cache.unevicted_tiers(counts, earlier, 5, 100, 5, "lru") is not None
    assert cache.unevicted_tiers(counts, earlier, 5, 100, 5, "static_topk") is None
    assert cache.unevicted_tiers(counts, earlier, 5, 100, 5, "lru", 7, "lru") is None  # two caches at work


@pytest.mark.parametrize("phase", ["decode", "prefill"])
def test_a_scanned_stream_counts_and_lists_what_the_step_sets_and_a_relabelling_give(phase, monkeypatch):
    """The replay's scan (one map per head table over the stream) against the trace's per-step sets, with
    bitmaps and with hash tables: the same distinct and reused rows; its rows seen in earlier steps are an
    unbounded cache's hits; its listed rows' dense ids are dense_ids of them."""
    from vocab.config import load_config
    from workloads import trace as trace_mod

    cfg = load_config("engram-27b").with_table_gib(2).with_phase(phase).with_workload(tokens_per_step=512)
    scanned = trace_mod._hash_steps(cfg, 6, np.random.default_rng(3), list_ids=True)
    for limit in (1 << 28, 0):
        monkeypatch.setattr(trace_mod, "BITMAP_MAX_ROWS", limit)
        counted = trace_mod._hash_steps(cfg, 6, np.random.default_rng(3), list_ids=False)
        assert np.array_equal(counted.distinct, scanned.distinct) and np.array_equal(counted.reused, scanned.reused)
    assert scanned.reused.sum() > 0 and (scanned.earlier >= scanned.reused).all()
    for col, layer in enumerate(scanned.layers):
        counts = scanned.distinct[:, col]
        rows, (dense, n) = layer.rows()
        rows = rows[: counts.sum()]
        assert n == layer.n_distinct and np.array_equal(dense, cache.dense_ids(rows)[0])
        hits = cache.replay_flags(dense, counts, n, n, "lru")[0]
        assert np.array_equal(hits, scanned.earlier[:, col])
        assert len(np.unique(rows)) == n


def test_memoised_step_compute_is_the_computed_one_and_keyed_on_what_it_reads():
    from profiles import load_profile
    from sim.compute import StepShape, compute_key, compute_segments
    from sim.placements import placement_for
    from vocab.config import load_config

    cfg, profile = load_config("engram-27b"), load_profile("h100-sxm")
    shape = StepShape(tokens=512, attn_context_sum=3e5, sequences=512, lookups=8192)
    for c in (cfg, cfg.with_table_gib(300), cfg.with_placement("none"), cfg.with_phase("prefill")):
        placement = placement_for(c)
        key = compute_key(c, profile, placement)
        plain = compute_segments(c, profile, shape, placement)
        assert np.array_equal(compute_segments(c, profile, shape, placement, key), plain)
        assert np.array_equal(compute_segments(c, profile, shape, placement, key), plain)  # from the memo
    hbm = placement_for(cfg)
    assert compute_key(cfg, profile, hbm) == compute_key(cfg.with_table_gib(300), profile, hbm)
    others = [compute_key(cfg.with_workload(launch="cuda_graphs"), profile, hbm),
              compute_key(cfg, load_profile("h200-sxm"), hbm),
              compute_key(cfg.with_engram(d_mem=2560), profile, hbm),
              compute_key(cfg, profile, placement_for(cfg.with_placement("none")))]
    assert compute_key(cfg, profile, hbm) not in others and len(set(others)) == len(others)


def test_token_streams_are_shared_by_table_sizes_only():
    from vocab.config import load_config
    from workloads import trace as trace_mod

    cfg = load_config("engram-27b").with_phase("decode")
    small, large = (trace_mod._stream(cfg.with_table_gib(g), 4, False) for g in (1, 64))
    assert small is large
    other_vocab = trace_mod._stream(cfg.with_engram(compressed_vocab_size=50000), 4, False)
    assert other_vocab is not small and not np.array_equal(other_vocab[0], small[0])
    assert trace_mod._stream(cfg, 4, True) is not small


def test_a_plan_batches_the_profiles_of_one_trace_together():
    from profiles import load_profile
    from tools.plan import PointSpec, _batches, make_plans
    from vocab.config import load_config

    cfg = load_config("engram-27b")
    plans = make_plans(cfg, [(n, load_profile(n)) for n in ("h100-sxm", "h200-sxm")], ["hbm", "host_dma"],
                       [[1], [5]], [512], [8.0])
    specs = [PointSpec(k, p, i, 1.0 + i, False, 10, 0.03) for k, p in enumerate(plans) for i in (0, 1)]
    batches = _batches(specs)
    assert sorted(n for b in batches for n in b) == list(range(len(specs)))
    assert len(batches) == 4  # (layers 1, layers 5) x 2 sizes, each with both profiles and both placements
    for b in batches:
        assert {specs[n].plan.profile.name for n in b} == {"h100-sxm", "h200-sxm"}
        assert len({(specs[n].plan.config.engram.layer_ids[0], specs[n].grid_index) for n in b}) == 1
