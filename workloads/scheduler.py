"""A serving engine's scheduler: which requests' tokens each step computes (the packing rule of serving).

One code for the simulator (sim/serve.py asks it for each step at the DES's
clock) and the real runs (real_runs asks it at the wall clock), so a
predicted serving run and a measured one form the same steps.

A request is known up to prompt + generated tokens; its KV cache holds
`computed` of them. A step gives each scheduled request a chunk: positions
computed .. computed + n - 1. When a request's chunk reaches its last known
token, the step samples its next token; a request is done when it has all
its output tokens (forced: no early end of sequence).

Policies (workload.scheduler.policy):
- prefill_first, nano-vLLM's: if any waiting request's whole known sequence
  fits the token budget, the sequence cap and the free KV blocks, the step is
  prefill only (waiting requests in arrival order, stopping at the first that
  does not fit); else every running request decodes one token, and a request
  that needs a KV block when none is free preempts the most recently admitted
  one (its blocks are freed; it waits again, first in line, and recomputes
  its prompt and the tokens generated so far);
- chunked, vLLM-like: running requests first (a decode token, or the next
  chunk of an unfinished prompt), then waiting requests' prompt chunks, in
  order, while the token budget lasts; preemption as above.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import pandas as pd

from vocab.config import RunConfig
from vocab.errors import CapacityError, ConfigError
from vocab.serving import request_table
from workloads.block_manager import BlockManager
from workloads.requests import Requests


@dataclass(frozen=True)
class ServeStep:
    """One step's chunks: request r computes positions starts[i] .. starts[i] + counts[i] - 1."""
    index: int
    requests: np.ndarray   # [C] request ids
    starts: np.ndarray     # [C] first position computed
    counts: np.ndarray     # [C] tokens computed
    decodes: np.ndarray    # [C] True where the chunk is one generated token (a decode), not prompt work
    graph_batch: int       # the CUDA graph's batch the step is padded to (0: run eagerly)
    kv_blocks_used: int    # KV blocks held once the step's tokens are cached
    waiting: int           # requests arrived and not running when the step was formed

    @property
    def tokens(self) -> int:
        return int(self.counts.sum())

    @property
    def sequences(self) -> int:
        return int(self.requests.size)

    @property
    def decode_only(self) -> bool:
        return bool(self.decodes.all())

    @property
    def prefill_only(self) -> bool:
        return not self.decodes.any()

    @property
    def attn_context_sum(self) -> float:
        """Sum over the step's tokens of the keys each attends to (itself included)."""
        n, s = self.counts.astype(np.float64), self.starts.astype(np.float64)
        return float((n * s + n * (n + 1) / 2).sum())

    @property
    def kv_tokens(self) -> int:
        """Tokens in the KV cache of the step's requests once it ends."""
        return int((self.starts + self.counts).sum())


def graph_batch(cfg: RunConfig, decodes: np.ndarray) -> int:
    """The captured batch a decode-only step is padded to (nano-vLLM), 0 where the step runs eagerly."""
    ladder = cfg.workload.scheduler.graph_batch_sizes
    if cfg.workload.launch != "cuda_graphs" or not ladder or not decodes.all() or decodes.size > ladder[-1]:
        return 0
    return next(b for b in ladder if b >= decodes.size)


class Scheduler:
    def __init__(self, cfg: RunConfig, requests: Requests, kv_blocks: int):
        self.cfg = cfg
        self.sched = s = cfg.workload.scheduler
        self.req = requests
        self.kv = BlockManager(kv_blocks, s.kv_block_tokens)
        n = requests.count
        # Per-request state as Python lists: the scheduler touches every running request every step.
        self.prompt = requests.prompt.tolist()
        self.output = requests.output.tolist()
        self.computed = [0] * n
        self.generated = [0] * n
        self.first_token_s = np.full(n, np.nan)
        self.finish_s = np.full(n, np.nan)
        self.scheduled_s = np.full(n, np.nan)  # first admitted to a step
        self.preemptions = np.zeros(n, dtype=np.int64)
        self.arrived = 0                       # requests[:arrived] have arrived
        self.waiting: deque[int] = deque()
        self.running: deque[int] = deque()
        self.steps = 0
        self.finished = 0
        self.ahead: deque[ServeStep] = deque()   # prefill steps formed ahead of their turn
        self.lookahead = cfg.workload.prefill_prefetch_ahead if s.policy == "prefill_first" else 0
        self._check_fits()

    def _check_fits(self) -> None:
        longest = int((self.req.prompt + self.req.output).max())
        need = self.kv.blocks_for(longest)
        if need > self.kv.blocks:
            raise CapacityError("workload.scheduler.kv_blocks", f"the longest request ({longest:,} tokens) needs "
                                f"{need:,} KV blocks but the HBM left holds {self.kv.blocks:,}",
                                "use shorter requests, a smaller table in HBM, or a GPU with more memory")
        if self.sched.policy == "prefill_first" and longest > self.sched.max_batched_tokens:
            raise ConfigError("workload.scheduler.max_batched_tokens", f"{self.sched.max_batched_tokens:,} is "
                              f"below the longest request ({longest:,} tokens), which could never be (re)computed "
                              "in one prefill step", f"raise it to at least {longest:,} or use policy 'chunked'")

    # -- the clock ------------------------------------------------------------------------------------
    def admit(self, now: float) -> None:
        arrival = self.req.arrival_s
        while self.arrived < arrival.size and arrival[self.arrived] <= now:
            self.waiting.append(self.arrived)
            self.arrived += 1

    def next_arrival(self) -> float | None:
        return float(self.req.arrival_s[self.arrived]) if self.arrived < self.req.count else None

    @property
    def done(self) -> bool:
        return self.finished == self.req.count

    def known(self, r: int) -> int:
        return self.prompt[r] + self.generated[r]

    # -- forming a step -------------------------------------------------------------------------------
    def schedule(self, now: float) -> ServeStep | None:
        """The next step at time `now`, or None when nothing can run (wait for next_arrival()). With
        prefill_first and workload.prefill_prefetch_ahead > 0, a prefill step also forms the prefill steps
        after it from the prompts waiting now (`ahead`): their prompts are known, so their rows can be
        fetched while this step runs; they are served next, in order."""
        self.admit(now)
        if self.ahead:
            step = self.ahead.popleft()
        else:
            waiting = len(self.waiting)
            chunks = self._prefill_first() if self.sched.policy == "prefill_first" else self._chunked()
            if not chunks:
                return None
            step = self._step(chunks, now, waiting)
        while step.prefill_only and len(self.ahead) < self.lookahead:
            more = self._admit(self.sched.max_batched_tokens, self.sched.max_sequences, whole=True)
            if not more:
                break
            self.ahead.append(self._step(more, now, len(self.waiting) + len(more)))
        return step

    def _step(self, chunks: list[tuple[int, int, int]], now: float, waiting: int) -> ServeStep:
        r, start, n = (np.array(c, dtype=np.int64) for c in zip(*chunks))
        for i in r[np.isnan(self.scheduled_s[r])]:
            self.scheduled_s[i] = now
        decodes = (n == 1) & (start >= self.req.prompt[r])
        step = ServeStep(self.steps, r, start, n, decodes, graph_batch(self.cfg, decodes), self.kv.used, waiting)
        self.steps += 1
        return step

    def _admit(self, budget: int, room: int, whole: bool) -> list[tuple[int, int, int]]:
        """Waiting requests, in order, while they fit `room` more sequences, `budget` tokens and the free KV
        blocks: whole known sequences (prefill_first), or as much of each as the budget takes (chunked)."""
        chunks = []
        while self.waiting and len(chunks) < room and budget > 0:
            r = self.waiting[0]
            n = self.known(r) if whole else min(self.known(r), budget)
            if n > budget or not self.kv.can_grow(r, n):
                break
            self.waiting.popleft()
            self.kv.grow(r, n)
            self.running.append(r)
            chunks.append((r, 0, n))
            budget -= n
        return chunks

    def _prefill_first(self) -> list[tuple[int, int, int]]:
        chunks = self._admit(self.sched.max_batched_tokens, self.sched.max_sequences, whole=True)
        if chunks:
            return chunks
        scheduled: list[int] = []
        while self.running and len(scheduled) < self.sched.max_sequences:
            r = self.running.popleft()
            if self._make_room(r, self.known(r)):
                scheduled.append(r)
        self.running.extendleft(reversed(scheduled))
        return [(r, self.known(r) - 1, 1) for r in scheduled]

    def _chunked(self) -> list[tuple[int, int, int]]:
        budget, cap = self.sched.max_batched_tokens, self.sched.max_sequences
        chunks, scheduled = [], []
        while self.running and len(scheduled) < cap and budget > 0:
            r = self.running.popleft()
            start = self.computed[r]
            n = min(self.known(r) - start, budget)
            if self._make_room(r, start + n):
                scheduled.append(r)
                chunks.append((r, start, n))
                budget -= n
        self.running.extendleft(reversed(scheduled))
        return chunks + self._admit(budget, cap - len(chunks), whole=False)

    def _make_room(self, r: int, tokens: int) -> bool:
        """Blocks for request r to cache `tokens`, preempting the most recently admitted running requests
        while none are free; False if r itself had to be preempted."""
        kv = self.kv
        while (extra := kv.extra_for(r, tokens)) > kv.free:
            if self.running:
                self._preempt(self.running.pop())
            else:
                self._preempt(r)
                return False
        if extra:
            kv.grow(r, tokens)
        return True

    def _preempt(self, r: int) -> None:
        self.kv.release(r)
        self.computed[r] = 0
        self.preemptions[r] += 1
        self.waiting.appendleft(r)

    # -- a step ends --------------------------------------------------------------------------------------
    def finish(self, step: ServeStep, now: float) -> None:
        """The step's tokens are computed at `now`: requests whose known tokens are all cached sample one."""
        for r, start, n in zip(step.requests.tolist(), step.starts.tolist(), step.counts.tolist()):
            self.computed[r] = start + n
            if self.computed[r] < self.known(r):
                continue  # a prompt chunk short of the prompt's end: nothing sampled yet
            self.generated[r] += 1
            if self.generated[r] == 1:
                self.first_token_s[r] = now
            if self.generated[r] == self.output[r]:
                self.finish_s[r] = now
                self.finished += 1
                self.kv.release(r)
                self.running.remove(r)

    def request_table(self) -> pd.DataFrame:
        return request_table(arrival_s=self.req.arrival_s, prompt_tokens=self.req.prompt,
                             output_tokens=self.req.output, scheduled_s=self.scheduled_s,
                             first_token_s=self.first_token_s, finish_s=self.finish_s,
                             preemptions=self.preemptions)
