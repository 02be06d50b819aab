"""HBM cache replay: each Numba policy against a tiny pure-Python reference."""

from collections import Counter, OrderedDict

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from workloads.cache import bench_cache, dense_ids, replay, zipf_trace


def ref_lru(steps, capacity):
    cache, hits = OrderedDict(), []
    for step in steps:
        step = [int(r) for r in step]
        hit = [r for r in step if r in cache]
        hits.append(len(hit))
        if capacity == 0:
            continue
        for r in hit:
            cache.move_to_end(r)
        for r in step:
            if r in hit:
                continue
            if len(cache) == capacity:
                cache.popitem(last=False)
            cache[r] = True
    return hits


def ref_lfu(steps, capacity):
    cache, count, last, clock, hits = set(), Counter(), {}, 0, []
    for step in steps:
        step = [int(r) for r in step]
        hit = [r for r in step if r in cache]
        hits.append(len(hit))
        if capacity == 0:
            continue
        for r in hit:
            clock += 1
            count[r] += 1
            last[r] = clock
        for r in step:
            if r in hit:
                continue
            if len(cache) == capacity:
                cache.remove(min(cache, key=lambda c: (count[c], last[c])))
            clock += 1
            count[r] += 1
            last[r] = clock
            cache.add(r)
    return hits


def ref_static_topk(steps, capacity):
    count, first = Counter(), {}
    for i, r in enumerate(int(r) for step in steps for r in step):
        count[r] += 1
        first.setdefault(r, i)
    cache = set(sorted(count, key=lambda r: (-count[r], first[r]))[:capacity])
    return [sum(int(r) in cache for r in step) for step in steps]


REFERENCES = {"lru": ref_lru, "lfu": ref_lfu, "static_topk": ref_static_topk}


@st.composite
def zipf_steps(draw):
    """Steps of unique ids with Zipf-like popularity, sparse and possibly huge ids included."""
    n_rows = draw(st.integers(1, 60))
    n_steps = draw(st.integers(0, 25))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    ids = rng.choice(2**40, size=n_rows, replace=False) if draw(st.booleans()) else np.arange(n_rows)
    p = 1.0 / np.arange(1, n_rows + 1) ** draw(st.floats(0.0, 2.0))
    p /= p.sum()
    steps = []
    for _ in range(n_steps):
        k = int(rng.integers(0, n_rows + 1))
        steps.append(ids[np.unique(rng.choice(n_rows, size=k, p=p))].astype(np.int64))
    return steps


@pytest.mark.parametrize("policy", sorted(REFERENCES))
@settings(max_examples=150, deadline=None)
@given(steps=zipf_steps(), capacity=st.integers(0, 70))
def test_policy_matches_reference(policy, steps, capacity):
    hits = replay(steps, capacity, policy)
    assert hits.dtype == np.int64
    assert hits.tolist() == REFERENCES[policy](steps, capacity)


@pytest.mark.parametrize("policy", ["lru", "lfu"])
def test_capacity_edges(policy):
    steps = zipf_trace(20_000, 5_000, 1_000, seed=3)
    sizes = np.array([len(s) for s in steps])
    assert np.all(replay(steps, 0, policy) == 0)
    distinct = len(np.unique(np.concatenate(steps)))
    seen, first_touches = set(), []
    for s in steps:
        first_touches.append(len(set(s.tolist()) - seen))
        seen |= set(s.tolist())
    for capacity in (distinct, distinct + 10):
        assert np.array_equal(replay(steps, capacity, policy), sizes - np.array(first_touches))


def test_static_topk_full_capacity_hits_everything():
    steps = zipf_trace(5_000, 1_000, 500, seed=1)
    distinct = len(np.unique(np.concatenate(steps)))
    assert np.array_equal(replay(steps, distinct, "static_topk"), [len(s) for s in steps])
    assert np.all(replay(steps, 0, "static_topk") == 0)


def test_larger_trace_matches_reference():
    steps = zipf_trace(30_000, 3_000, 800, s=1.0, seed=7)
    for policy, ref in REFERENCES.items():
        assert replay(steps, 300, policy).tolist() == ref(steps, 300), policy


def test_dense_ids_first_access_order():
    ids = np.array([50, 7, 50, 2**45, 7, 3])
    dense, n = dense_ids(ids)
    assert n == 4 and dense.tolist() == [0, 1, 0, 2, 1, 3]
    dense, n = dense_ids(ids[[0, 1, 2, 4, 5]])  # the direct-lookup path (small ids)
    assert n == 3 and dense.tolist() == [0, 1, 0, 1, 2]


def test_bad_arguments():
    with pytest.raises(ValueError, match="policy"):
        replay([np.array([1])], 1, "fifo")
    with pytest.raises(ValueError, match="capacity"):
        replay([np.array([1])], -1, "lru")


def test_bench_runs():
    out = bench_cache(n_accesses=20_000, n_rows=10_000, draws_per_step=2_000)
    assert all(out[f"{p}_accesses_per_s"] > 0 for p in REFERENCES)


def test_dense_ids_of_sparse_huge_ids_match_first_seen_order():
    from workloads.cache import dense_ids

    rng = np.random.default_rng(3)
    ids = rng.integers(0, 40_000_000_000, 50_000)
    ids[::4] = ids[1::4][: ids[::4].size]  # repeats
    dense, n = dense_ids(ids)
    _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    relabel = np.empty(first.size, dtype=np.int64)
    relabel[np.argsort(first, kind="stable")] = np.arange(first.size)
    assert n == first.size and np.array_equal(dense, relabel[inverse.ravel()])


def test_a_cache_that_holds_the_whole_table_has_no_misses_once_warm():
    from vocab.config import load_config
    from vocab.memory import cache_rows_per_layer
    from workloads.trace import build_trace

    cfg = load_config("engram-27b").with_table_gib(1).with_placement("hbm_cache", cache_gib=8).with_steps(8)
    rows = cache_rows_per_layer(cfg)
    assert rows >= max(cfg.engram.layer_rows(layer) for layer in cfg.engram.layer_ids)
    trace = build_trace(cfg, cache_rows=rows)
    assert (trace.cache_hits == trace.distinct_rows).all()
    # A cache smaller than the table still misses.
    small = cfg.with_placement(cache_gib=0.05)
    trace = build_trace(small, cache_rows=cache_rows_per_layer(small))
    assert (trace.cache_hits < trace.distinct_rows).any()
