"""A measured serving run: requests arrive, the scheduler forms each step, the real backbone computes it.

    from real_runs.serve import run_serving
    record = run_serving(load_config("my-serve.toml"), device="cpu", out=Path("out/serve.json"))

`engram-sim run CONFIG` comes here when workload.phase = "serve". The requests
are the simulator's (workloads.requests.make_requests with the workload's
seed) and so is the step formation: workloads.scheduler.Scheduler, asked at
the wall clock (seconds since the run's start; when it has nothing to run,
the loop sleeps until the next arrival). Each step's chunks run as one
forward pass, packed along the tokens (real_runs/backbone.Packed): chunk i
computes its request's tokens starts[i] .. starts[i] + counts[i] - 1, the
very tokens the simulator hashes (outputs are teacher-forced). Every request
keeps its KV cache and its Engram convolution history in a slot between
steps (slots x the longest request's positions); a preempted request gives
its slot back and recomputes into a fresh one.

A step's Engram rows are hashed and fetched once the scheduler has formed it,
as the simulator assumes: a decode step when it is formed, the prefill steps
the scheduler forms ahead (Scheduler.ahead, prefill_first) while the step
before them runs. The fetch worker hashes the step's tokens with the N-1
before each in its request and calls each layer's store, overlapping the
layers before the first Engram layer, as a steady-state step does
(real_runs/runner.StepLoop). A step's time runs from
the call that forms it to the read-back of its tokens.

The KV blocks the scheduler counts are the simulator's (sim/serve.serving_parts):
`kv_blocks_for` builds the same HBM budget from vocab.memory's parts for the
config's profile. The record holds the steady-state tables (times from the
run's start) and, in `extra`, vocab.serving's batches, requests and summary.
"""

from __future__ import annotations

# real_runs modules are imported only to run real things: torch, their own dependency, is imported at the top.
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from profiles import HardwareProfile, load_profile
from real_runs.backbone import Backbone, KVCache, Packed
from real_runs.fetch_worker import StepLog
from real_runs.inputs import StepInput, step_rows
from real_runs.instrument import Timeline
from real_runs.record import collect
from real_runs.runner import (
    KV_FREE_FRACTION,
    EngramTables,
    Model,
    StepLoop,
    build_model,
    check_placement,
    describe,
    engram_tables,
    measure,
    resolve_device,
)
from real_runs.stores import TORCH_DTYPES
from vocab.config import RunConfig
from vocab.errors import CapacityError
from vocab.memory import (
    MemoryBudget,
    activation_bytes,
    cache_bytes,
    hbm_usable_bytes,
    kv_cache_bytes,
    landed_bytes,
    serving_kv_blocks,
    weights_bytes,
)
from vocab.placements import HBM, HBM_CACHED, NONE
from vocab.records import RunRecord, write_record
from vocab.serving import batch_table, serving_extra, serving_summary
from vocab.units import GiB
from workloads.requests import Requests, make_requests
from workloads.scheduler import Scheduler, ServeStep
from workloads.serving_rows import step_contexts

# Host memory a CPU run's KV slots may take, as a share of what is available (the tables need the rest).
KV_HOST_FRACTION = 0.5


def kv_blocks_for(cfg: RunConfig, profile: HardwareProfile) -> int:
    """The KV blocks sim/serve.serving_parts gives the scheduler: the profile's HBM less the weights, the
    table or cache in HBM, the staging of rows landed for the current and prefetched steps, and one step's
    activations (tests check the two agree for every placement)."""
    s, e, kind = cfg.workload.scheduler, cfg.engram, cfg.placement.kind
    table_hbm = e.total_table_bytes if kind == HBM else cache_bytes(cfg) if kind in HBM_CACHED else 0
    staging = 0
    if kind not in (HBM, NONE):  # every other placement lands its rows in HBM staging
        staging = landed_bytes(cfg, s.max_batched_tokens * e.tables_per_layer)
    budget = MemoryBudget(
        weights_bytes=weights_bytes(cfg, with_engram=kind != NONE), kv_cache_bytes=0, table_hbm_bytes=table_hbm,
        staging_hbm_bytes=staging, activation_bytes=activation_bytes(cfg.backbone, s.max_batched_tokens),
        hbm_usable_bytes=hbm_usable_bytes(profile.gpu.hbm_gib, profile.gpu.hbm_reserved_gib),
        table_host_bytes=0, host_usable_bytes=0)
    return serving_kv_blocks(cfg, budget)


class Slots:
    """Which KV slot each running request holds; a request leaving the running set frees its slot."""

    def __init__(self, count: int):
        self.free = list(range(count - 1, -1, -1))
        self.of: dict[int, int] = {}

    def assign(self, step: ServeStep, running) -> np.ndarray:
        """The slots of the step's requests: released for requests no longer running (finished or preempted),
        a fresh one for a request whose chunk starts at position 0."""
        running = set(running)
        for r in [r for r in self.of if r not in running]:
            self.free.append(self.of.pop(r))
        out = np.empty(step.sequences, dtype=np.int64)
        for i, (r, start) in enumerate(zip(step.requests.tolist(), step.starts.tolist())):
            if start == 0 and r in self.of:      # recomputed after a preemption in the same step's forming
                self.free.append(self.of.pop(r))
            if r not in self.of:
                self.of[r] = self.free.pop()
            out[i] = self.of[r]
        return out


def step_input(cfg: RunConfig, requests: Requests, step: ServeStep) -> StepInput:
    """The step's tokens packed [1, T], chunk lengths, and the N-gram window of each token (what it hashes)."""
    e = cfg.engram
    ctx = step_contexts(requests, step, e.max_ngram_size - 1, e.compressed_pad_id)
    return StepInput(ids=ctx[None, :, 0].copy(), lengths=step.counts.astype(np.int64),
                     window=np.ascontiguousarray(ctx[:, ::-1]))


def slot_cache(cfg: RunConfig, backbone: Backbone, requests: Requests, kv_blocks: int) -> KVCache:
    """A KV slot for each request that can run at once (at most every request, and one per KV block), each
    as long as the longest request."""
    slots = max(1, min(requests.count, kv_blocks))
    capacity = int((requests.prompt + requests.output).max())
    dtype = next(name for name, t in TORCH_DTYPES.items() if t == backbone.dtype)
    need = kv_cache_bytes(dataclasses.replace(cfg.backbone, dtype=dtype), slots * capacity, as_run=True)
    if backbone.device.type == "cuda":
        room, where = KV_FREE_FRACTION * torch.cuda.mem_get_info(backbone.device)[0], "free on the GPU"
    else:
        room, where = KV_HOST_FRACTION * os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "of host memory"
    if need > room:
        raise CapacityError("workload.requests.count",
                            f"the KV slots ({slots} requests at once x {capacity} positions, "
                            f"{need / GiB:.1f} GiB) do not fit the {room / GiB:.1f} GiB {where} a run may take",
                            "use fewer requests, shorter prompts or outputs, or fewer KV blocks")
    return backbone.new_cache(slots, capacity, np.zeros(slots, dtype=np.int64))


class ServeLoop(StepLoop):
    """The serving steps on the compute side: form, fetch, compute, finish, until every request is done."""

    def __init__(self, cfg: RunConfig, device: str, backbone: Backbone, requests: Requests, kv_blocks: int,
                 engram: EngramTables, timeline: Timeline):
        super().__init__(cfg, device, Model(backbone), [], engram, timeline)
        self.requests = requests
        self.scheduler = Scheduler(cfg, requests, kv_blocks)
        self.cache = slot_cache(cfg, backbone, requests, kv_blocks)
        slots = self.cache.lengths.numel()
        self.slots = Slots(slots)
        self.states = backbone.new_states(slots)
        self.served: list[ServeStep] = []
        self.t0_ns = 0

    def clock(self) -> float:
        return (time.perf_counter_ns() - self.t0_ns) * 1e-9

    def run(self, progress=None) -> list[StepLog]:
        sched = self.scheduler
        try:
            self.warm_up()
            self.t0_ns = time.perf_counter_ns()
            while not sched.done:
                start_ns = time.perf_counter_ns()
                step = sched.schedule(self.clock())
                if step is None:   # nothing can run: wait for the next request
                    arrival = sched.next_arrival()
                    if arrival is None:
                        raise RuntimeError("serving scheduler stalled with requests unfinished (a bug)")
                    time.sleep(max(0.0, arrival - self.clock()))
                    continue
                s = len(self.served)
                # This step and the prefill steps formed ahead of it: their rows are fetched from now on.
                for formed in [step, *sched.ahead][len(self.inputs) - s:]:
                    self.inputs.append(step_input(self.cfg, self.requests, formed))
                    self.logs.append(StepLog())
                self.served.append(step)
                self.logs[s].start_ns = start_ns
                self.worker.submit_through(len(self.inputs) - 1)
                self.forward(s, step)
                self.worker.forget(s)
                self.logs[s].end_ns = time.perf_counter_ns()
                sched.finish(step, (self.logs[s].end_ns - self.t0_ns) * 1e-9)
                if progress:
                    progress(sched.finished, self.requests.count)
        finally:
            self.worker.close()
        return self.logs

    def forward(self, s: int, step: ServeStep) -> None:
        """Step s on the backbone: the chunks packed, each in its request's slot; a read-back at the end."""
        slots = self.slots.assign(step, self.scheduler.running)
        packed = Packed.build(self.cache, self.states, slots, step.starts, step.counts, self.device)
        ids = torch.from_numpy(self.inputs[s].ids % self.cfg.backbone.vocab_size).to(self.device)
        last = torch.from_numpy(np.cumsum(step.counts) - 1).to(self.device)
        logits = self.model.backbone(ids, lambda layer: self.rows(s, layer, None), last_index=last,
                                     hook=self.layer_hook(self.logs[s]), packed=packed)
        self.read_back(logits)

    def warm_up(self) -> None:
        """One prompt chunk and one decode of request 0 in slot 0, unrecorded: the first calls' one-off costs
        (allocations, Numba and kernel first calls) stay out of the measured steps. Later steps overwrite
        what they leave in the slot."""
        r, n = 0, int(min(self.requests.prompt[0], 8))
        shapes = [(np.array([0]), np.array([n])), (np.array([n]), np.array([1]))]
        for starts, counts in shapes:
            fake = ServeStep(-1, np.array([r]), starts, counts, counts == 1, 0, 0, 0)
            inp = step_input(self.cfg, self.requests, fake)
            packed = Packed.build(self.cache, self.states, np.array([0]), starts, counts, self.device)
            ids = torch.from_numpy(inp.ids % self.cfg.backbone.vocab_size).to(self.device)
            self.read_back(self.model.backbone(ids, lambda layer: self._warm_rows(inp, layer), packed=packed,
                                               last_index=torch.tensor([int(counts[0]) - 1], device=self.device)))
        self.timeline.anchor()

    def _warm_rows(self, inp: StepInput, layer: int) -> torch.Tensor:
        e = self.engram
        store = e.stores[layer]
        f = store.prefetch(step_rows(e.hasher, inp, layer, e.offsets[layer]), tag=(-1, layer))
        store.wait_ready(f)
        return store.finish(f)


def run_serving(cfg: RunConfig, device: str | None = None, out: Path | None = None, *, progress=None,
                nvml_interval_s: float = 0.02) -> RunRecord:
    """Serve cfg's requests (workload.phase = "serve") for real; return (and write to `out`) the record."""
    device = resolve_device(device)
    check_placement(cfg, device)
    requests = make_requests(cfg, np.random.default_rng(cfg.workload.seed))
    kv_blocks = kv_blocks_for(cfg, load_profile(cfg.profile))
    timeline = Timeline(cuda=torch.device(device).type == "cuda", device=device)
    model = build_model(cfg, device, None, 0)
    with engram_tables(cfg, device, timeline) as engram:
        loop = ServeLoop(cfg, device, model.backbone, requests, kv_blocks, engram, timeline)
        logs, nvml = measure(loop, nvml_interval_s, progress)
        record = serving_record(cfg, loop, logs, timeline)
        extra = record.extra
        describe(record, cfg, device, warmup=0, nvml=nvml, engram=engram, backbone=model.backbone)
        record.extra = {**record.extra, **extra}
    if out is not None:
        write_record(record, out)
    return record


def serving_record(cfg: RunConfig, loop: ServeLoop, logs: list[StepLog], timeline: Timeline) -> RunRecord:
    """The steady-state tables of the served steps, times from the run's start, and the serving tables."""
    record = collect(cfg, timeline, logs, loop.inputs, timeline.resolve(), 0, loop.engram.layers)
    shift = (logs[0].start_ns - loop.t0_ns) * 1e-9    # collect's times are from the first step's start
    for table, columns in ((record.steps, ["start_s"]), (record.events, ["start_s", "end_s"]),
                           (record.fetches, ["fetch_start_s", "fetch_end_s", "wait_start_s"])):
        if len(table):
            table[columns] = table[columns].astype(float) + shift
    served = loop.served
    batches = batch_table(
        step=np.arange(len(served)), start_s=record.steps.start_s.to_numpy(),
        step_time_s=record.steps.step_time_s.to_numpy(), sequences=[s.sequences for s in served],
        prefill_tokens=[int(s.counts[~s.decodes].sum()) for s in served],
        decode_tokens=[int(s.decodes.sum()) for s in served], graph_batch=[s.graph_batch for s in served],
        kv_blocks_used=[s.kv_blocks_used for s in served], waiting=[s.waiting for s in served])
    requests = loop.scheduler.request_table()
    summary = serving_summary(requests, batches)
    summary["kv_blocks"] = int(loop.scheduler.kv.blocks)
    record.extra = serving_extra(requests, batches, summary)
    return record


def progress_bar(done: int, total: int) -> None:
    """Requests finished so far, on one stderr line (redrawn)."""
    width = 30
    fill = width * done // max(total, 1)
    end = "\n" if done >= total else ""
    print(f"\rserving [{'#' * fill}{'.' * (width - fill)}] {done}/{total} requests", end=end, file=sys.stderr,
          flush=True)


def main_serve(cfg: RunConfig, out: Path, device: str | None) -> int:
    """`engram-sim run CONFIG` of a serving workload: run it, write the record, print one summary line."""
    record = run_serving(cfg, device=device, out=out, progress=progress_bar if sys.stderr.isatty() else None)
    s = record.extra["serving"]
    print(f"{cfg.name} [{record.extra['device']}, {cfg.placement.kind}, serve]: {s['requests']} requests, "
          f"{s['steps']} steps ({s['prefill_steps']} with prompt work), {s['output_tokens_per_s']:.1f} output "
          f"tok/s over {s['elapsed_s']:.2f} s, TTFT p50 {s['ttft_p50_s'] * 1e3:.1f} ms, TPOT p50 "
          f"{s['tpot_p50_s'] * 1e3:.1f} ms -> {out}")
    return 0
