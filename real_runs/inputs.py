"""A real run's step inputs, built from workloads/steps.py: the very tokens the simulator's trace hashes.

Decode: one new token for each of `sequences` sequences; `window` holds the N-1
tokens before it and the new one (what its N-grams hash). Prefill: exactly
`tokens_per_step` tokens per step, a stream of prompts cut into chunks (a prompt
may span steps); a chunk's `context` holds its prompt's N-1 tokens just before
it, so its N-grams see the previous step's tokens.

Token ids are compressed ids; the backbone embeds them modulo its vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vocab.config import RunConfig
from workloads.steps import decode_steps, prefill_steps


@dataclass
class StepInput:
    """One step's tokens: compressed ids [B, T] (right-padded with the pad id) and valid lengths [B].

    Decode: B sequences, T = 1, and `window` [B, N] = the N-1 tokens before plus the new one (hashed).
    Prefill: B prompt chunks; `context` [B, N-1] = the chunk's prompt tokens just before it (pad id at a
    prompt's start), so a chunk's N-grams see the tokens of the previous step."""
    ids: np.ndarray
    lengths: np.ndarray
    window: np.ndarray | None = None
    context: np.ndarray | None = None

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum())


def decode_inputs(cfg: RunConfig, steps: int, rng: np.random.Generator) -> tuple[np.ndarray, list[StepInput]]:
    """Context lengths [B] and `steps` decode steps (one new token per sequence)."""
    packed = decode_steps(cfg, steps, rng)
    ones = np.ones(packed.sequences, np.int64)
    out = []
    for window in packed.windows():
        window = window.copy()
        out.append(StepInput(ids=window[:, -1:].copy(), lengths=ones.copy(), window=window))
    return packed.context, out


def prefill_inputs(cfg: RunConfig, steps: int, rng: np.random.Generator) -> list[StepInput]:
    """`steps` steps of exactly tokens_per_step tokens, each a list of prompt chunks."""
    packed = prefill_steps(cfg, steps, rng)
    out = []
    for s in range(steps):
        starts = packed.chunk_starts(s)
        ends = np.append(starts[1:], packed.bounds[s + 1])
        n = ends - starts
        ids = np.full((n.size, int(n.max())), packed.pad_id, dtype=np.int64)
        for i, (a, b) in enumerate(zip(starts, ends)):
            ids[i, :b - a] = packed.tokens[a:b]
        context = packed.contexts(starts)[:, :0:-1]      # the N-1 tokens before each chunk, oldest first
        out.append(StepInput(ids=ids, lengths=n.astype(np.int64), context=np.ascontiguousarray(context)))
    return out


def workload_inputs(cfg: RunConfig, steps: int, rng: np.random.Generator) -> tuple[np.ndarray | None, list]:
    """(decode context lengths, or None in prefill; the step inputs) of cfg's phase."""
    if cfg.workload.phase == "decode":
        return decode_inputs(cfg, steps, rng)
    return None, prefill_inputs(cfg, steps, rng)


def step_rows(hasher, step: StepInput, layer: int, offsets: np.ndarray) -> np.ndarray:
    """Global row ids (head offset + hashed row) of a step's valid tokens, [tokens * tables] flat."""
    if step.window is not None:
        ids = hasher.hash(step.window, layer)[:, -1, :]
    else:
        back = step.context.shape[1]
        h = hasher.hash_scratch(np.concatenate([step.context, step.ids], axis=1), layer)  # [B, back + T, tables]
        # The valid tokens' rows by flat index (a boolean mask over the sliced view takes a slow, buffered
        # path: 1.3-5x the time on a prefill chunk).
        seq, pos = np.nonzero(np.arange(step.ids.shape[1])[None, :] < step.lengths[:, None])
        ids = h.reshape(-1, h.shape[2]).take(seq * h.shape[1] + back + pos, axis=0)
        ids += offsets[None, :]
        return ids.reshape(-1)
    return (ids + offsets[None, :]).reshape(-1)


# The profiling sample that ranks hot rows has its own seed, apart from the measured steps'.
HOT_ROWS_SEED_OFFSET = 7919


def hot_rows(cfg: RunConfig, hasher, offsets: dict, layers) -> dict[int, np.ndarray]:
    """Per Engram layer, row ids by falling frequency over a profiling sample of the workload."""
    w = cfg.workload
    rng = np.random.default_rng(w.seed + HOT_ROWS_SEED_OFFSET)
    _, sample = workload_inputs(cfg, max(1, min(w.tokens.trace_steps, w.steps)), rng)
    out = {}
    for layer in layers:
        ids = np.concatenate([step_rows(hasher, st, layer, offsets[layer]) for st in sample])
        uniq, counts = np.unique(ids, return_counts=True)
        out[layer] = uniq[np.argsort(-counts, kind="stable")]
    return out
