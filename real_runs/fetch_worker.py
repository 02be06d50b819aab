"""The fetch side of a real run: one worker thread hashes a step's tokens and starts its Engram fetches.

A step is submitted as soon as its tokens exist and the run asks for it
(decode: when the previous step ends, earlier with decode_lookahead; prefill:
prefill_prefetch_ahead steps early). The worker hashes the step's tokens for
every Engram layer (Numba, CPU) and calls each layer's store.prefetch, in
submission order: one worker, one fetch stream. The compute side collects a
layer's fetch with `fetch(step, layer)`, which re-raises the worker's error.
"""

from __future__ import annotations

# real_runs modules are imported only to run real things: torch, their own dependency, is imported at the top.
import concurrent.futures as cf
import time
from dataclasses import dataclass, field

import numba
import torch

from real_runs.inputs import StepInput, step_rows
from real_runs.stores import Fetch
from vocab.records import CPU_HASH


@dataclass
class StepLog:
    """What one step recorded: host times (ns) and timeline marks."""
    start_ns: int = 0
    end_ns: int = 0
    fetch_start_ns: int = 0
    compute: list = field(default_factory=list)       # (index, start mark, end mark); see record.compute_name
    waits: dict = field(default_factory=dict)         # layer -> (fetch, wait start mark, wait end mark)


class FetchWorker:
    """Hashing and fetch issue for the steps of `inputs`, one worker thread, in submission order."""

    def __init__(self, inputs: list[StepInput], logs: list[StepLog], layers: list[int], hasher, offsets: dict,
                 stores: dict, timeline, device: str, hash_threads: int, gather_threads: int):
        self.inputs, self.logs, self.layers = inputs, logs, layers
        self.hasher, self.offsets, self.stores, self.timeline = hasher, offsets, stores, timeline
        self.device = torch.device(device)
        self.hash_threads, self.gather_threads = hash_threads, gather_threads
        self.submitted = 0
        self._futures: dict[int, dict[int, cf.Future]] = {}
        self._pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="engram-fetch")

    def submit_through(self, last: int) -> None:
        """Submit every step up to `last` (and within the run) not yet submitted."""
        while self.submitted < len(self.inputs) and self.submitted <= last:
            s = self.submitted
            self._futures[s] = {layer: cf.Future() for layer in self.layers}
            # The fetch starts when the tokens exist and it is asked for: the worker's pick-up delay counts.
            self.logs[s].fetch_start_ns = time.perf_counter_ns()
            if self.layers:
                self._pool.submit(self._job, s)
            self.submitted += 1

    def fetch(self, step: int, layer: int) -> Fetch:
        """The layer's fetch of `step` once issued (blocks until then)."""
        return self._futures[step][layer].result()

    def forget(self, step: int) -> None:
        del self._futures[step]

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def _job(self, s: int) -> None:
        fut = self._futures[s]
        try:
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            t0 = time.perf_counter_ns()
            ids = {layer: step_rows(self.hasher, self.inputs[s], layer, self.offsets[layer]) for layer in self.layers}
            self.timeline.add(CPU_HASH, "hash", t0, time.perf_counter_ns(), s)
            numba.set_num_threads(self.gather_threads)
            for layer in self.layers:
                fut[layer].set_result(self.stores[layer].prefetch(ids[layer], tag=(s, layer)))
            numba.set_num_threads(self.hash_threads)
        except BaseException as exc:  # hand the error to the compute side
            for f in fut.values():
                if not f.done():
                    f.set_exception(exc)
