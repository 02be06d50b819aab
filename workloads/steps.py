"""A workload's tokens packed into steps: the one packing rule of prediction and measurement.

workloads/trace.py hashes these tokens for the simulator and real_runs feeds the
very same tokens to the real model, so a measured step is the predicted step.

Decode (`decode_steps`): `workload.sequences` sequences with context lengths
from `workload.lengths`; each step adds one token to every sequence. Only a
sequence's last N-1 context tokens reach its N-grams, so only those are drawn,
left-padded with the compressed pad id where the context is shorter.

Prefill (`prefill_steps`): a stream of prompts (lengths from `workload.lengths`,
drawn a batch of `workload.sequences` at a time) cut into steps of exactly
`workload.tokens_per_step` tokens (chunked prefill: a prompt may span steps, a
step holds several prompt chunks). The last prompt is cut where the steps end.

Both give `contexts()`: one row per new token, column k = the token k places
before it (pad id before its sequence or prompt starts), the matrix the
N-gram hashes read. Random draws, in this order, from the caller's rng: the
lengths, then the tokens (workloads.tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from vocab.config import RunConfig
from workloads.requests import sample_lengths
from workloads.tokens import make_token_source


@dataclass(frozen=True)
class DecodeSteps:
    context: np.ndarray   # [B] context lengths before the first step
    tokens: np.ndarray    # [B, N-1 + S] each sequence's last N-1 context tokens (pad id where shorter), then S new
    back: int             # N-1: how far back a token's N-grams reach

    @property
    def steps(self) -> int:
        return self.tokens.shape[1] - self.back

    @property
    def sequences(self) -> int:
        return self.tokens.shape[0]

    def windows(self) -> np.ndarray:
        """[S, B, N] read-only view: step s's N-gram window per sequence, oldest token first, the new one last."""
        return sliding_window_view(self.tokens, self.back + 1, axis=1).transpose(1, 0, 2)

    def contexts(self) -> np.ndarray:
        """[S * B, N], step-major: row s * B + b, column k = the token k places before step s's token of b."""
        return np.ascontiguousarray(self.windows()[:, :, ::-1]).reshape(-1, self.back + 1)


@dataclass(frozen=True)
class PrefillSteps:
    prompt_lengths: np.ndarray  # [P] prompts in stream order (the last one cut where the steps end)
    tokens: np.ndarray          # [S * T] the stream of prompt tokens
    position: np.ndarray        # [S * T] each token's position within its prompt
    tokens_per_step: int
    back: int                   # N-1: how far back a token's N-grams reach
    pad_id: int

    @property
    def steps(self) -> int:
        return self.tokens.size // self.tokens_per_step

    @property
    def bounds(self) -> np.ndarray:
        """[S + 1] each step's first token in the stream, and the stream's end."""
        return np.arange(self.steps + 1, dtype=np.int64) * self.tokens_per_step

    @cached_property
    def chunk_end(self) -> np.ndarray:
        """[S * T] True at a chunk's last token: a step's last token, or where the next token starts a prompt."""
        end = np.ones(self.tokens.size, dtype=bool)
        end[:-1] = self.position[1:] == 0
        end[self.bounds[1:] - 1] = True
        return end

    def chunk_starts(self, step: int) -> np.ndarray:
        """Stream indices of the first tokens of step `step`'s chunks, in order."""
        a, b = self.bounds[step], self.bounds[step + 1]
        starts = np.empty(b - a, dtype=bool)
        starts[0] = True
        starts[1:] = self.chunk_end[a:b - 1]
        return a + np.flatnonzero(starts)

    def contexts(self, at: np.ndarray | None = None) -> np.ndarray:
        """[len(at), N] for stream indices `at` (default: every token): column k = the token k places before
        (pad id before its prompt's start)."""
        at = np.arange(self.tokens.size) if at is None else np.asarray(at, dtype=np.int64)
        ctx = np.empty((at.size, self.back + 1), dtype=np.int64)
        ctx[:, 0] = self.tokens[at]
        pos = self.position[at]
        for k in range(1, self.back + 1):
            ctx[:, k] = np.where(pos >= k, self.tokens[np.maximum(at - k, 0)], self.pad_id)
        return ctx


def decode_steps(cfg: RunConfig, n_steps: int, rng: np.random.Generator, source=None) -> DecodeSteps:
    """`n_steps` decode steps of cfg's workload; `source` defaults to make_token_source(cfg)."""
    eng, work = cfg.engram, cfg.workload
    back = eng.max_ngram_size - 1
    source = make_token_source(cfg) if source is None else source
    context = sample_lengths(work.lengths, work.sequences, rng)
    kept = np.minimum(context, back)          # only the last N-1 context tokens matter for the hashes
    streams = source.sequences(kept + n_steps, rng)
    tokens = np.full((work.sequences, back + n_steps), eng.compressed_pad_id, dtype=np.int64)
    for b, (k, seq) in enumerate(zip(kept, streams)):
        tokens[b, back - k:] = seq
    return DecodeSteps(context=context, tokens=tokens, back=back)


def prefill_steps(cfg: RunConfig, n_steps: int, rng: np.random.Generator, source=None) -> PrefillSteps:
    """`n_steps` full prefill steps of cfg's workload; `source` defaults to make_token_source(cfg)."""
    eng, work = cfg.engram, cfg.workload
    source = make_token_source(cfg) if source is None else source
    need = n_steps * work.tokens_per_step
    batches, total = [], 0
    while total < need:  # draw prompts a batch at a time until the steps are full
        batches.append(sample_lengths(work.lengths, work.sequences, rng))
        total += int(batches[-1].sum())
    lengths = np.concatenate(batches)
    lengths = lengths[: np.searchsorted(np.cumsum(lengths), need) + 1]
    lengths[-1] -= int(lengths.sum()) - need  # the last prompt is cut where the steps end
    tokens = np.concatenate(source.sequences(lengths, rng)).astype(np.int64, copy=False)
    position = np.arange(need) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return PrefillSteps(prompt_lengths=lengths, tokens=tokens, position=position,
                        tokens_per_step=work.tokens_per_step, back=eng.max_ngram_size - 1,
                        pad_id=eng.compressed_pad_id)
