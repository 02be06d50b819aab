"""The Numba hashing kernel against the NumPy reference, and the reference against the rule."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from numba import njit

from real_runs.hashing import NgramHasher, bench_hashing
from vocab.geometry import table_offsets
from workloads.fastmod import mod_prime
from workloads.hashing import hash_layer, layer_multipliers

DEMO = dict(engram_vocab_size=[646400, 646400], max_ngram_size=3, n_head_per_ngram=8, layer_ids=[1, 15],
            compressed_vocab_size=99092, compressed_pad_id=2, seed=0)


@pytest.fixture(scope="module")
def demo():
    return NgramHasher(**DEMO)


def test_demo_first_primes(demo):
    assert demo.table_sizes(1)[0][:2] == [646403, 646411]
    sizes = [p for layer in (1, 15) for heads in demo.table_sizes(layer) for p in heads]
    assert len(set(sizes)) == len(sizes) == 32  # one running set of primes for the whole model


@pytest.mark.parametrize("vocab", [2, 1000, 99092, 2**40])
@pytest.mark.parametrize("layer", [0, 1, 15])
def test_multipliers_odd_and_bounded(vocab, layer):
    m = layer_multipliers(0, layer, 3, vocab)
    half_bound = max(1, (np.iinfo(np.int64).max // vocab) // 2)
    assert m.dtype == np.int64 and m.shape == (3,)
    assert np.all(m % 2 == 1) and np.all(m >= 1) and np.all(m <= 2 * half_bound - 1)
    # Largest id times largest multiplier stays below int64 max: no overflow.
    assert (vocab - 1) * int(m.max()) < 2**63


def test_multipliers_follow_rng_rule(demo):
    rng = np.random.default_rng(0 + 10007 * 15)
    r = rng.integers(0, (np.iinfo(np.int64).max // 99092) // 2, size=3, dtype=np.int64)
    assert np.array_equal(demo.multipliers(15), 2 * r + 1)


def test_reference_by_hand():
    ids = np.array([[5, 7, 11]], dtype=np.int64)
    m = np.array([3, 5, 7], dtype=np.int64)
    sizes = [[13, 17], [19, 23]]
    out = hash_layer(ids, m, sizes, 3, pad_id=2)
    x = [2, 2, 5, 7, 11]  # two pads in front
    for t in range(3):
        mix2 = (x[t + 2] * 3) ^ (x[t + 1] * 5)
        mix3 = mix2 ^ (x[t] * 7)
        assert out[0, t].tolist() == [mix2 % 13, mix2 % 17, mix3 % 19, mix3 % 23]


def test_offsets():
    sizes = [[13, 17], [19, 23]]
    assert table_offsets(sizes).tolist() == [0, 13, 30, 49]


@settings(max_examples=60, deadline=None)
@given(batch=st.integers(0, 4), length=st.integers(0, 9), alphabet=st.integers(1, 99092),
       layer=st.sampled_from([1, 15]), seed=st.integers(0, 2**32 - 1))
def test_numba_matches_reference(demo, batch, length, alphabet, layer, seed):
    # Small alphabets give repeated ids and repeated N-grams.
    ids = np.random.default_rng(seed).integers(0, alphabet, size=(batch, length))
    fast, ref = demo.hash(ids, layer), demo.hash_reference(ids, layer)
    assert fast.shape == ref.shape == (batch, length, 16)
    assert fast.dtype == np.int64
    assert np.array_equal(fast, ref)
    primes = np.array([p for heads in demo.table_sizes(layer) for p in heads])
    assert np.all((ref >= 0) & (ref < primes))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 5), heads=st.integers(1, 4), length=st.integers(0, 7), seed=st.integers(0, 1000))
def test_numba_matches_reference_other_orders(n, heads, length, seed):
    hasher = NgramHasher([1000] * (n - 1), n, heads, [0, 3], compressed_vocab_size=50, compressed_pad_id=0, seed=seed)
    ids = np.random.default_rng(seed).integers(0, 50, size=(3, length))
    for layer in (0, 3):
        assert np.array_equal(hasher.hash(ids, layer), hasher.hash_reference(ids, layer))


def test_long_sequences_and_threads(demo):
    ids = np.random.default_rng(0).integers(0, 99092, size=(8, 4096))
    threaded = NgramHasher(**DEMO, threads=1)
    assert np.array_equal(threaded.hash(ids, 1), demo.hash_reference(ids, 1))


def test_accepts_other_integer_dtypes(demo):
    ids = np.array([[1, 2, 3]], dtype=np.int32)
    assert np.array_equal(demo.hash(ids, 1), demo.hash(ids.astype(np.uint16), 1))
    assert np.array_equal(demo.hash([[1, 2, 3]], 1), demo.hash(ids, 1))


@pytest.mark.parametrize("bad, words", [
    (np.array([[1, 99092]]), "99092"),
    (np.array([[-1, 3]]), "-1"),
    (np.array([[1, 2**63 + 5]], dtype=np.uint64), str(2**63 + 5)),
    (np.array([1, 2, 3]), "2-D"),
    (np.array([[1.5]]), "integers"),
])
def test_rejects_bad_ids(demo, bad, words):
    with pytest.raises(ValueError, match=words):
        demo.hash(bad, 1)
    with pytest.raises(ValueError, match=words):
        demo.hash_reference(bad, 1)


def test_rejects_unknown_layer(demo):
    for method in (demo.hash, demo.hash_reference):
        with pytest.raises(ValueError, match="layer_id 2"):
            method(np.zeros((1, 1), dtype=np.int64), 2)
    with pytest.raises(ValueError, match="layer_id"):
        demo.table_sizes(7)
    with pytest.raises(ValueError, match="layer_id"):
        demo.multipliers(7)


def test_bench_runs():
    result = bench_hashing(tokens=4096, threads=1, repeats=1)
    assert result["numba_tokens_per_s"] > 0 and result["numpy_tokens_per_s"] > 0


@njit
def _mod_all(xs, ps):
    out = np.empty((xs.size, ps.size), dtype=np.int64)
    for i in range(xs.size):
        for j in range(ps.size):
            out[i, j] = mod_prime(xs[i], ps[j], 1.0 / np.float64(ps[j]))
    return out


# Primes around the fast path's threshold, the demo's, and large ones (tables of billions of rows).
MOD_PRIMES = [2, 3, 8191, 8209, 646403, 646411, 2262401, 2147483647, 1000000000039, (1 << 61) - 1]
EDGES = [0, 1, 8208, 8209, 8210, (1 << 53) - 1, 1 << 53, (1 << 53) + 1, (1 << 62) - 1, 1 << 62,
         (1 << 63) - 2, (1 << 63) - 1]


def test_fast_modulo_is_exact_at_the_extremes():
    ps = np.array(MOD_PRIMES, dtype=np.int64)
    xs = [x for x in EDGES] + [k * p + d for p in MOD_PRIMES[2:] for k in (1, 2, (1 << 62) // p, (1 << 63) // p - 1)
                               for d in (-1, 0, 1) if 0 <= k * p + d < 1 << 63]
    got = _mod_all(np.array(xs, dtype=np.int64), ps)
    want = np.array([[x % p for p in MOD_PRIMES] for x in xs], dtype=np.int64)
    assert np.array_equal(got, want)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, (1 << 63) - 1), min_size=1, max_size=50), st.integers(1, (1 << 62)))
def test_fast_modulo_matches_python(xs, p):
    got = _mod_all(np.array(xs, dtype=np.int64), np.array([p], dtype=np.int64))[:, 0]
    assert got.tolist() == [x % p for x in xs]


def test_hash_into_a_reused_output(demo):
    ids = np.random.default_rng(3).integers(0, 99092, size=(3, 17), dtype=np.int64)
    out = np.full((3, 17, 16), -1, dtype=np.int64)
    got = demo.hash(ids, 1, out=out)
    assert got is out and np.array_equal(out, demo.hash_reference(ids, 1))
    with pytest.raises(ValueError, match="out must be a C-contiguous int64 array of shape"):
        demo.hash(ids, 1, out=np.empty((3, 17, 8), dtype=np.int64))
    with pytest.raises(ValueError, match="int64"):
        demo.hash(ids, 1, out=np.empty((3, 17, 16), dtype=np.int32))
