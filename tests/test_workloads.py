"""Token sources, request lengths, and the trace the simulator consumes."""

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

import workloads.tokens as tokens_mod
from vocab.config import LengthDistribution, from_dict
from vocab.errors import ConfigError
from vocab.geometry import table_offsets
from workloads import trace as trace_mod
from workloads.hashing import hash_layer, layer_multipliers
from workloads.requests import sample_lengths
from workloads.tokens import ZipfSource, make_token_source
from workloads.trace import build_trace


def make_cfg(engram=None, workload=None, placement=None, tokens=None):
    data = {
        "name": "test",
        "backbone": {"name": "tiny", "layers": 4, "hidden_size": 64,
                     "attention": {"heads": 2, "kv_heads": 2, "head_dim": 32}, "intermediate_size": 128},
        "engram": {"layer_ids": [1, 3], "table_rows_per_order": [5000, 7000], "heads_per_order": 4, "d_mem": 64,
                   **(engram or {})},
        "workload": {"phase": "decode", "sequences": 16, "steps": 12, "tokens_per_step": 256,
                     "lengths": {"dist": "uniform", "low": 1, "high": 40},
                     "tokens": {"source": "zipf", **(tokens or {})}, **(workload or {})},
        "placement": placement or {},
    }
    return from_dict(data)


@pytest.fixture(autouse=True)
def fresh_memo():
    trace_mod._MEMO.clear()
    yield
    trace_mod._MEMO.clear()


# ---------------------------------------------------------------- lengths

@pytest.mark.parametrize("dist", ["uniform", "fixed", "normal", "lognormal"])
def test_lengths_within_bounds_and_seeded(dist):
    d = LengthDistribution(dist=dist, low=100, high=1024, mean=400, std=300)
    a = sample_lengths(d, 5000, np.random.default_rng(1))
    assert a.dtype == np.int64 and a.min() >= 100 and a.max() <= 1024
    assert np.array_equal(a, sample_lengths(d, 5000, np.random.default_rng(1)))
    if dist == "fixed":
        assert np.all(a == 100)
    if dist == "uniform":
        assert a.min() == 100 and a.max() == 1024 and abs(a.mean() - 562) < 15
    if dist == "lognormal":
        # Mean and std are the lengths' own; clipping at 100 nudges the mean up a little.
        assert 380 < a.mean() < 460


def test_normal_needs_a_mean():
    with pytest.raises(ConfigError, match="mean"):
        sample_lengths(LengthDistribution(dist="normal"), 3, np.random.default_rng(0))


# ---------------------------------------------------------------- token sources

def test_zipf_source_follows_the_law():
    src = ZipfSource(1000, s=1.2, q=2.0, seed=0)
    seqs = src.sequences([3, 0, 50_000], np.random.default_rng(0))
    assert [len(s) for s in seqs] == [3, 0, 50_000]
    ids = np.concatenate(seqs)
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < 1000
    counts = np.bincount(ids, minlength=1000)[src.rank_to_id]  # by rank
    expected = (np.arange(1, 1001) + 2.0) ** -1.2
    expected = expected / expected.sum() * ids.size
    assert np.allclose(counts[:5], expected[:5], rtol=0.1)
    assert counts[0] > counts[10] > counts[200]
    again = src.sequences([3, 0, 50_000], np.random.default_rng(0))
    assert all(np.array_equal(a, b) for a, b in zip(seqs, again))


def test_npy_source(tmp_path):
    stream = np.arange(100) % 50
    np.save(tmp_path / "s.npy", stream)
    cfg = make_cfg(tokens={"source": "npy", "path": str(tmp_path / "s.npy")})
    seqs = make_token_source(cfg).sequences([10, 150], np.random.default_rng(0))
    for s in seqs:  # windows of the stream, wrapping around
        assert np.all(np.diff(s) % 50 == 1)
    np.save(tmp_path / "rows.npy", np.array([[1, 2, 3], [7, 8, 9]]))
    cfg = make_cfg(tokens={"source": "npy", "path": str(tmp_path / "rows.npy")})
    for s in make_token_source(cfg).sequences([2] * 20, np.random.default_rng(0)):
        assert s.tolist() in ([1, 2], [2, 3], [3, 1], [7, 8], [8, 9], [9, 7])


@pytest.mark.parametrize("content, words", [
    (None, "no such file"),
    (np.array([1, 2, 10**6]), "compressed_vocab_size"),
    (np.array([1.0, 2.0]), "float64"),
    (np.zeros((2, 2, 2), dtype=np.int64), "shape"),
])
def test_npy_errors_name_the_field(tmp_path, content, words):
    path = tmp_path / "ids.npy"
    if content is not None:
        np.save(path, content)
    with pytest.raises(ConfigError, match=words) as err:
        make_token_source(make_cfg(tokens={"source": "npy", "path": str(path)}))
    assert err.value.field == "workload.tokens.path" and err.value.fix


def small_tokenizer(path, text):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([text], trainers.BpeTrainer(
        vocab_size=500, special_tokens=["<s>", "</s>", "<pad>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(path))


def test_text_source_with_user_files(tmp_path, monkeypatch):
    monkeypatch.setenv("ENGRAM_SIM_CACHE", str(tmp_path / "cache"))
    text = "The quick brown fox jumps over the lazy dog. Le café est très bon.\n" * 200
    (tmp_path / "t.txt").write_text(text)
    small_tokenizer(tmp_path / "tok.json", text)
    cfg = make_cfg(tokens={"source": "text", "path": str(tmp_path / "t.txt"), "tokenizer": str(tmp_path / "tok.json")})
    seqs = make_token_source(cfg).sequences([30, 5], np.random.default_rng(0))
    assert [len(s) for s in seqs] == [30, 5] and max(s.max() for s in seqs) < 500
    with pytest.raises(ConfigError, match="compressed_vocab_size"):
        make_token_source(make_cfg(engram={"compressed_vocab_size": 10, "compressed_pad_id": 2},
                                   tokens={"source": "text", "path": str(tmp_path / "t.txt"),
                                           "tokenizer": str(tmp_path / "tok.json")}))
    with pytest.raises(ConfigError) as err:
        make_token_source(make_cfg(tokens={"source": "text", "path": str(tmp_path / "missing.txt")}))
    assert err.value.field == "workload.tokens.path"
    with pytest.raises(ConfigError) as err:
        make_token_source(make_cfg(tokens={"source": "text", "tokenizer": str(tmp_path / "missing.json")}))
    assert err.value.field == "workload.tokens.tokenizer"


def test_default_text_source_small(tmp_path, monkeypatch):
    """The default path (stdlib text, BPE trained here), shrunk so the test stays fast."""
    monkeypatch.setenv("ENGRAM_SIM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tokens_mod, "DEFAULT_TEXT_BYTES", 300_000)
    monkeypatch.setattr(tokens_mod, "TRAIN_TEXT_BYTES", 100_000)
    monkeypatch.setattr(tokens_mod, "BPE_VOCAB_SIZE", 2000)
    tokens_mod.stdlib_texts.cache_clear()
    tokens_mod._compressed_corpus.cache_clear()
    try:
        src = make_token_source(make_cfg(tokens={"source": "text"}))
        assert src.rows.size > 10_000 and 0 <= src.rows.min() and src.rows.max() < 2000
        assert len(list((tmp_path / "cache").glob("bpe-stdlib-*.json"))) == 1
        assert len(list((tmp_path / "cache").glob("corpus-*.npy"))) == 1
        trace = build_trace(make_cfg(tokens={"source": "text"}))
        assert trace.distinct_rows.sum() > 0
    finally:
        tokens_mod.stdlib_texts.cache_clear()
        tokens_mod._compressed_corpus.cache_clear()


# ---------------------------------------------------------------- trace

def reference_rows(cfg, ctx):
    """Global rows [tokens, layers, tables] by the NumPy reference, from the trace's context matrix."""
    eng = cfg.engram
    # Each token's context as a short sequence ending at the token; pads are already in place.
    seqs = ctx[:, ::-1]
    out = []
    for layer in eng.layer_ids:
        m = layer_multipliers(eng.seed, layer, eng.max_ngram_size, eng.compressed_vocab_size)
        sizes = eng.table_sizes[layer]
        rows = hash_layer(seqs, m, sizes, eng.max_ngram_size, eng.compressed_pad_id)[:, -1, :]
        out.append(rows + table_offsets(sizes))
    return np.stack(out, axis=1)


def token_contexts(cfg):
    steps = min(cfg.workload.steps, cfg.workload.tokens.trace_steps)
    rng = np.random.default_rng(cfg.workload.seed)
    make = trace_mod._decode_tokens if cfg.workload.phase == "decode" else trace_mod._prefill_tokens
    return make(cfg, steps, make_token_source(cfg), rng)


@pytest.mark.parametrize("phase", ["decode", "prefill"])
@pytest.mark.parametrize("zipf_s", [0.6, 1.5])
@pytest.mark.parametrize("sets", ["bitmap", "hash"])
def test_trace_matches_reference_hashing(phase, zipf_s, sets, monkeypatch):
    # Small tables use bitmaps; forcing the threshold to 0 runs the hash sets big tables use.
    monkeypatch.setattr(trace_mod, "BITMAP_MAX_ROWS", 0 if sets == "hash" else trace_mod.BITMAP_MAX_ROWS)
    monkeypatch.setattr(trace_mod, "_MEMO", type(trace_mod._MEMO)())
    cfg = make_cfg(workload={"phase": phase}, tokens={"zipf_s": zipf_s})
    # A cache just smaller than the table; the trace's steps take the steady hit rate its replay measured.
    cache_rows = min(cfg.engram.layer_rows(layer) for layer in cfg.engram.layer_ids) - 1
    trace = build_trace(cfg, cache_rows=cache_rows)
    for col, tier in enumerate(trace.tiers):
        assert np.array_equal(trace.cache_hits[:, col], np.rint(trace.distinct_rows[:, col] * tier.hbm_hit_rate))
        assert 0 < tier.hbm_hit_rate < 1 and tier.warmup_hbm_hit_rate <= tier.hbm_hit_rate
    # One that holds the whole table misses nothing once warm.
    assert np.array_equal(build_trace(cfg, cache_rows=10**9).cache_hits, trace.distinct_rows)
    ctx, bounds, _ = token_contexts(cfg)
    rows = reference_rows(cfg, ctx)
    prev = [set() for _ in cfg.engram.layer_ids]
    for s in range(trace.steps):
        for col in range(len(cfg.engram.layer_ids)):
            step_rows = set(rows[bounds[s]:bounds[s + 1], col].ravel().tolist())
            assert trace.distinct_rows[s, col] == len(step_rows)
            assert trace.reused_rows[s, col] == (len(step_rows & prev[col]) if s else 0)
            prev[col] = step_rows


def test_decode_contexts_chain_and_pad():
    cfg = make_cfg(workload={"sequences": 8, "lengths": {"dist": "uniform", "low": 1, "high": 3}})
    ctx, bounds, _ = token_contexts(cfg)
    b = cfg.workload.sequences
    assert np.array_equal(ctx[b:, 1], ctx[:-b, 0])  # the previous token is the one added a step before
    assert np.array_equal(ctx[b:, 2], ctx[:-b, 1])
    ctx0 = sample_lengths(cfg.workload.lengths, b, np.random.default_rng(cfg.workload.seed))
    pad = cfg.engram.compressed_pad_id
    for seq in range(b):
        if ctx0[seq] == 1:  # only one token of context: two back is before the start
            assert ctx[seq, 2] == pad


def test_prefill_packing_fixed_lengths():
    cfg = make_cfg(workload={"phase": "prefill", "tokens_per_step": 25, "steps": 3,
                             "lengths": {"dist": "fixed", "low": 10, "high": 10}})
    t = build_trace(cfg)
    assert t.tokens.tolist() == [25, 25, 25]
    # Step 0: prompts 0, 1 whole, prompt 2 positions 0..4. Step 1: prompt 2 5..9, prompt 3, prompt 4.
    assert t.attn_context_sum[:2].tolist() == [55 + 55 + 15, 40 + 55 + 55]
    assert t.kv_tokens[:2].tolist() == [10 + 10 + 5, 10 + 10 + 10]
    assert t.sequences[:2].tolist() == [3, 3]
    ctx, _, _ = token_contexts(cfg)
    pad = cfg.engram.compressed_pad_id
    pos = np.arange(75) % 10
    assert np.all(ctx[pos == 0, 1] == pad) and np.all(ctx[pos <= 1, 2] == pad)
    assert np.array_equal(ctx[pos >= 1, 1], ctx[np.flatnonzero(pos >= 1) - 1, 0])


def test_decode_attention_and_kv():
    cfg = make_cfg(workload={"sequences": 5, "lengths": {"dist": "fixed", "low": 100, "high": 100}})
    t = build_trace(cfg)
    s = np.arange(t.steps)
    assert np.array_equal(t.attn_context_sum, 5 * (100 + s + 1))
    assert np.array_equal(t.kv_tokens, t.attn_context_sum)
    assert np.all(t.tokens == 5) and np.all(t.sequences == 5)


@pytest.mark.parametrize("phase", ["decode", "prefill"])
@pytest.mark.parametrize("policy", ["lru", "lfu", "static_topk"])
def test_trace_invariants(phase, policy):
    cfg = make_cfg(workload={"phase": phase, "steps": 100}, tokens={"trace_steps": 9},
                   placement={"cache_policy": policy})
    t = build_trace(cfg, cache_rows=500)
    n_layers = len(cfg.engram.layer_ids)
    assert t.steps == 9 and t.at(9) == 0 and t.at(13) == 4 and t.layer_ids == [1, 3] and t.column(3) == 1
    for name in ("lookups", "unique_rows", "distinct_rows", "reused_rows", "cache_hits"):
        assert getattr(t, name).shape == (9, n_layers) and getattr(t, name).dtype == np.int64
    assert np.array_equal(t.lookups, np.repeat(t.tokens[:, None] * cfg.engram.tables_per_layer, n_layers, 1))
    assert np.all(t.distinct_rows <= t.lookups) and np.all(t.distinct_rows > 0)
    assert np.array_equal(t.unique_rows, t.distinct_rows)
    assert np.all(t.reused_rows <= t.distinct_rows) and np.all(t.reused_rows[0] == 0)
    assert np.all(t.cache_hits <= t.distinct_rows) and t.cache_hits.sum() > 0
    assert t.cache_rows == 500
    with pytest.raises(ValueError):
        t.tokens[0] = 1  # read-only: traces are shared through the memo


def test_trace_deterministic_and_seeded():
    a = build_trace(make_cfg(workload={"seed": 1}))
    trace_mod._MEMO.clear()
    b = build_trace(make_cfg(workload={"seed": 1}))
    c = build_trace(make_cfg(workload={"seed": 2}))
    for name in ("distinct_rows", "reused_rows", "kv_tokens"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.distinct_rows, c.distinct_rows)
    assert build_trace(make_cfg(workload={"seed": 1})) is b  # memoised


def test_no_dedup_fetches_every_lookup():
    t = build_trace(make_cfg(workload={"phase": "prefill"}, placement={"dedup": False}))
    assert np.array_equal(t.unique_rows, t.lookups)
    assert np.all(t.distinct_rows < t.lookups)  # Zipf tokens repeat N-grams within a step
    assert np.all(t.cache_hits == 0) and t.cache_rows is None


def test_zero_cache_and_steps_cap():
    t = build_trace(make_cfg(workload={"steps": 3}), cache_rows=0)
    assert t.steps == 3 and np.all(t.cache_hits == 0)


def test_clipped_zipf_matches_numpy_and_uniform_covers_the_vocabulary():
    from workloads.tokens import UniformSource, ZipfSource

    z = ZipfSource(99092, 1.1, 0.0, 0, clipped=True)
    ids = np.concatenate(z.sequences([200_000], np.random.default_rng(1)))
    ref = np.minimum(np.random.default_rng(2).zipf(1.1, size=200_000), 99092)
    # numpy.random.zipf clipped to the vocabulary puts about 30 % on its last rank, 9.5 % on rank 1.
    assert abs(np.bincount(ids).max() / ids.size - (ref == 99092).mean()) < 0.01
    assert abs((ids == z.rank_to_id[0]).mean() - (ref == 1).mean()) < 0.01
    u = np.concatenate(UniformSource(50).sequences([50_000], np.random.default_rng(3)))
    assert set(u) == set(range(50)) and np.bincount(u).max() / u.size < 0.03
