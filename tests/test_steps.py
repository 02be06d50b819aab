"""One step packing (workloads/steps.py) for prediction and measurement: both sides see the same tokens."""

import numpy as np
import pytest

from real_runs.hashing import NgramHasher
from real_runs.inputs import decode_inputs, prefill_inputs, step_rows, workload_inputs
from tests.conftest import edited
from vocab.config import load_config
from vocab.geometry import table_offsets
from workloads import trace as trace_mod
from workloads.steps import decode_steps, prefill_steps
from workloads.tokens import make_token_source
from workloads.trace import build_trace

STEPS = 5


def config(phase, source="zipf", high=30):
    # Short lengths: prompts start and end inside steps, contexts shorter than N-1 get padded.
    changes = {"workload.phase": phase, "workload.tokens_per_step": 40, "workload.sequences": 8,
               "workload.tokens": {"source": source},
               "workload.lengths": {"dist": "uniform", "low": 1, "high": high}}
    if source == "text":   # the built-in BPE's compressed ids (at most its 32000 tokens)
        changes["engram.compressed_vocab_size"] = 32000
    return edited(load_config("tiny"), changes)


def trace_tokens(cfg, steps=STEPS):
    """The trace's context matrix, bounds and per-step sums, from the seed the trace uses."""
    make = trace_mod._decode_tokens if cfg.workload.phase == "decode" else trace_mod._prefill_tokens
    return make(cfg, steps, make_token_source(cfg), np.random.default_rng(cfg.workload.seed))


@pytest.mark.parametrize("source", ["zipf", "text"])
def test_runner_decode_windows_are_the_trace_context_rows(source):
    cfg = config("decode", source, high=3)
    ctx, bounds, _ = trace_tokens(cfg)
    context, inputs = decode_inputs(cfg, STEPS, np.random.default_rng(cfg.workload.seed))
    assert len(inputs) == STEPS
    for s, step in enumerate(inputs):
        rows = ctx[bounds[s]:bounds[s + 1]]
        assert np.array_equal(step.window, rows[:, ::-1])            # oldest token first in a window
        assert np.array_equal(step.ids[:, 0], rows[:, 0]) and (step.lengths == 1).all()
    short = context < cfg.engram.max_ngram_size - 1
    assert short.any() and (inputs[0].window[short, 0] == cfg.engram.compressed_pad_id).all()


@pytest.mark.parametrize("source", ["zipf", "text"])
def test_runner_prefill_chunks_are_the_trace_stream(source):
    cfg = config("prefill", source)
    ctx, bounds, step = trace_tokens(cfg)
    inputs = prefill_inputs(cfg, STEPS, np.random.default_rng(cfg.workload.seed))
    back = cfg.engram.max_ngram_size - 1
    for s, st in enumerate(inputs):
        rows = ctx[bounds[s]:bounds[s + 1]]
        chunks = [st.ids[i, :n] for i, n in enumerate(st.lengths)]
        assert np.array_equal(np.concatenate(chunks), rows[:, 0])    # the step's tokens, in stream order
        assert st.lengths.size == step["sequences"][s]               # as many chunks as the trace counts
        firsts = np.cumsum(st.lengths) - st.lengths
        # a chunk's context: what the trace's row of its first token holds before it, oldest first
        assert np.array_equal(st.context, rows[firsts][:, back:0:-1])
        padding = np.arange(st.ids.shape[1])[None, :] >= st.lengths[:, None]
        assert (st.ids[padding] == cfg.engram.compressed_pad_id).all()
    assert any(st.lengths.size > 1 for st in inputs)                 # prompts do end inside steps


def test_the_real_run_and_the_trace_hash_the_same_rows():
    """Same config and seed: the real run's row ids per step are the ones the trace counts as distinct."""
    for phase in ("decode", "prefill"):
        cfg = config(phase).with_steps(STEPS)
        trace = build_trace(cfg)
        hasher = NgramHasher.from_config(cfg.engram)
        _, inputs = workload_inputs(cfg, STEPS, np.random.default_rng(cfg.workload.seed))
        for col, layer in enumerate(cfg.engram.layer_ids):
            offsets = table_offsets(hasher.table_sizes(layer))
            distinct = [np.unique(step_rows(hasher, st, layer, offsets)).size for st in inputs]
            assert distinct == trace.distinct_rows[:, col].tolist()


def test_prefill_steps_are_full_and_chunked():
    cfg = config("prefill")
    steps = prefill_steps(cfg, STEPS, np.random.default_rng(0))
    assert steps.steps == STEPS and steps.tokens.size == STEPS * 40 == steps.prompt_lengths.sum()
    ends, last = steps.chunk_end, steps.bounds[1:] - 1
    assert ends[last].all()                                          # a step's last token ends its last chunk
    inner = np.setdiff1d(np.arange(ends.size - 1), last)
    assert np.array_equal(ends[inner], steps.position[inner + 1] == 0)   # elsewhere: the next token starts a prompt
    for s in range(STEPS):
        starts = steps.chunk_starts(s)
        assert starts[0] == steps.bounds[s]
        assert (steps.position[starts[1:]] == 0).all()              # a chunk past the first starts a prompt
    at = np.array([0, 7, 41, 199])
    assert np.array_equal(steps.contexts(at), steps.contexts()[at])
    first = steps.contexts()[steps.position == 0]
    assert (first[:, 1:] == cfg.engram.compressed_pad_id).all()      # nothing before a prompt's start


def test_decode_steps_slide_one_token_per_step():
    cfg = config("decode")
    steps = decode_steps(cfg, STEPS, np.random.default_rng(0))
    w = steps.windows()
    assert w.shape == (STEPS, cfg.workload.sequences, cfg.engram.max_ngram_size)
    assert np.array_equal(w[1:, :, :-1], w[:-1, :, 1:])
    assert np.array_equal(steps.contexts().reshape(w.shape)[:, :, ::-1], w)
