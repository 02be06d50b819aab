"""The discrete-event model of the Engram prefetch path (SimPy).

Actors, each a generator process:

- the host: when a step may begin (decode: the previous step has ended), it
  does the step's critical path (sim.plan: the engine's step work, and with
  placement.hash_on = "critical_path" the hashing and sorting of the row ids)
  and then launches the step;
- the GPU compute stream runs each step's layers in order; at an Engram layer
  it waits until that layer's rows are in HBM (the wait is the exposed stall).
  It runs slower while zero-copy gather blocks hold SMs (resources.compute_rate);
- a fetch process per step: CPU hashing (and dedup) on the host's cores as soon
  as the step's tokens exist (or nothing, if the host hashed already), then one
  fetch per Engram layer on the fetch stream(s), through the placement's path
  (sim.placements says how each placement moves its rows).

Shared resources model contention (sim.resources): CPU cores, copy engines
and staging buffers, and the PCIe H2D direction and host DRAM as fluid pipes.
When do a step's tokens exist? In decode, when the previous step ends
(optionally `decode_lookahead` steps earlier); in prefill, the whole prompt is
known, so a step's fetch starts when the step `prefill_prefetch_ahead` before
it starts. Steps that repeat with the fetch side idle are replayed (sim.memo).
"""

from __future__ import annotations

import math

import numpy as np
import simpy

from profiles import HardwareProfile, load_profile
from sim.memo import StepMemos
from sim.memory import check_fits, memory_budget
from sim.placements import Placement, placement_for
from sim.plan import StepPlan, plan_steps
from sim.resources import SharedResources
from sim.result import SimResult, StepLog, collect
from vocab.config import RunConfig
from vocab.records import CPU_HASH, GPU_COMPUTE, HOST, STALL
from workloads.trace import Trace, build_trace

__all__ = ["SimResult", "Simulation", "StepPlan", "plan_steps", "simulate"]


class Simulation:
    def __init__(self, cfg: RunConfig, profile: HardwareProfile, plans: list[StepPlan], steps: int,
                 record_events: bool = False, memoize: bool = True, placement: Placement | None = None,
                 res: SharedResources | None = None):
        """res: resources made on a server's shared environment (sim.server), else this GPU's own."""
        self.cfg = cfg
        self.profile = profile
        self.plans = plans
        self.steps = steps
        self.placement = placement or placement_for(cfg)
        self.layer_ids = self.placement.layer_ids
        self.env = res.env if res is not None else simpy.Environment()
        self.res = res or SharedResources(self.env, profile, cfg.placement, record_events)
        self.hash_threads = min(cfg.placement.hash_threads, profile.host.cpu_cores)
        self.ready: dict[int, list[simpy.Event]] = {}  # per step: one event per Engram layer, rows in HBM
        self.logs = [StepLog() for _ in range(steps)]
        self.inflight = 0  # layer fetches launched and not yet in HBM
        self.memos = StepMemos(len(plans), memoize)

    def plan(self, step: int) -> StepPlan:
        return self.plans[step % len(self.plans)]

    # -- the GPU compute stream ------------------------------------------------
    def gpu_stream(self):
        w = self.cfg.workload
        ahead = w.decode_lookahead if w.phase == "decode" else w.prefill_prefetch_ahead
        launched = 0
        for step in range(self.steps):
            log = self.logs[step]
            log.start = t0 = self.env.now
            new = list(range(launched, min(self.steps, step + ahead + 1)))
            launched += len(new)
            quiet = self.inflight == 0
            key = self.memos.key(step, new)
            memo = self.memos.find(key, quiet)
            if memo is not None:
                yield from self.memos.replay(self, memo, step, new)
                continue
            mark = self.memos.mark(self)
            yield from self.host(step, new)
            yield from self.compute(step)
            log.end = self.env.now
            if quiet and self.inflight == 0:
                self.memos.keep(self, key, step, new, t0, mark)

    # -- the host ----------------------------------------------------------------------------
    def host(self, step: int, new: list[int]):
        """The step's critical path on the host, then its launch. Worker threads start hashing the new
        steps' tokens as soon as they exist; a host that hashes itself hands over finished ids."""
        plan = self.plan(step)
        critical = self.cfg.placement.hash_on == "critical_path"
        if not critical:
            for n in new:
                self.launch_fetch(n)
        if plan.host_time > 0:
            t = self.env.now
            yield self.env.timeout(plan.host_time)
            self.res.log(HOST, "step work" + (" + hash ids" if critical and self.layer_ids else ""), t, step)
        if critical:
            for n in new:
                self.launch_fetch(n)

    def run_layers(self, seconds: float):
        """`seconds` of compute at full rate, slower while gather blocks hold SMs."""
        if self.profile.gpu.uva_interference == 0.0:  # nothing can take SMs: one timeout, as fast as it gets
            yield self.env.timeout(seconds)
            return
        remaining = seconds
        while remaining > 0:
            rate, changed = self.res.compute_rate, self.res.rate_changed
            if rate <= 0.0:  # every SM taken: wait for blocks to leave
                yield changed
                continue
            start = self.env.now
            done = self.env.timeout(remaining / rate)
            fired = yield done | changed
            if done in fired:
                return
            remaining -= (self.env.now - start) * rate

    def compute(self, step: int):
        """One step's layers; before each Engram layer, wait for its rows."""
        plan, log = self.plan(step), self.logs[step]
        t = self.env.now
        yield from self.run_layers(plan.segments[0])
        self.res.log(GPU_COMPUTE, "layers", t, step)
        for k, layer in enumerate(self.layer_ids):
            log.wait_start.append(self.env.now)
            t = self.env.now
            if self.ready[step][k] is not None:
                yield self.ready[step][k]
            yield from self.group_wait(step, k)
            log.stall.append(self.env.now - t)
            if self.env.now > t:
                self.res.log(STALL, f"wait rows L{layer}", t, step, layer)
            t = self.env.now
            yield from self.run_layers(plan.segments[k + 1])
            self.res.log(GPU_COMPUTE, "layers", t, step)
        del self.ready[step]

    # -- the fetch side ----------------------------------------------------------
    def launch_fetch(self, step: int) -> None:
        self.ready[step] = [self.env.event() for _ in self.layer_ids]
        if self.layer_ids:  # no Engram layer (placement none): nothing to hash or fetch
            self.inflight += len(self.layer_ids)
            self.res.spawn(self.fetch(step))

    def fetch(self, step: int):
        plan = self.plan(step)
        log = self.logs[step]
        log.fetch_start = self.env.now
        log.fetch_end = [math.nan] * len(self.layer_ids)
        thread = self.res.thread()
        pickup = self.profile.host.fetch_pickup_us * 1e-6
        if pickup > 0:  # the fetch worker starts the fetch this long after it is submitted
            yield self.env.timeout(pickup)
        if plan.hash_time > 0:  # worker threads hash (with hash_on = "critical_path" the host did)
            t = self.env.now
            yield from thread.run_parallel(plan.hash_time * self.hash_threads, self.hash_threads)
            self.res.log(CPU_HASH, "hash+dedup", t, step)
        # The thread that hashed goes on to the first layer's fetch without giving up its core.
        for k in range(len(self.layer_ids)):
            self.res.spawn(self.fetch_layer(step, k, plan), thread if k == 0 else None)

    def fetch_layer(self, step: int, k: int, plan: StepPlan):
        with self.res.fetch_streams.request() as stream:
            yield from self.res.thread().wait(stream)
            yield from self.placement.fetch_layer(self.res, step, k, plan)
        yield from self.exchange_rows(step, k, plan)
        self.logs[step].fetch_end[k] = self.env.now
        self.inflight -= 1
        self.ready[step][k].succeed()

    # -- what a GPU of a server adds (sim.server); one GPU alone waits for nobody ----------------------
    def group_wait(self, step: int, k: int):
        """DES process: at Engram layer k, wait for the rest of the tensor-parallel group."""
        return
        yield

    def exchange_rows(self, step: int, k: int, plan: StepPlan):
        """DES process: after this GPU's fetch of layer k, the rows its shard group exchanges."""
        return
        yield

    def run(self) -> None:
        self.env.process(self.gpu_stream())
        self.env.run()


def trace_for(cfg: RunConfig, placement: Placement | None = None) -> Trace:
    """The token trace `cfg` runs on, with the HBM cache replayed where the placement has one."""
    placement = placement or placement_for(cfg)
    return build_trace(cfg, cache_rows=placement.trace_cache_rows(), dram_rows=placement.trace_dram_rows())


def simulate(cfg: RunConfig, profile: HardwareProfile | None = None, trace=None, *, steps: int | None = None,
             record_events: bool = False, check_capacity: bool = True, memoize: bool = True) -> SimResult:
    """Simulate `cfg` and return per-step, per-fetch and summary results."""
    if profile is None:
        profile = load_profile(cfg.profile)
    placement = placement_for(cfg)
    if trace is None:
        trace = trace_for(cfg, placement)
    steps = steps or cfg.workload.steps
    budget = memory_budget(cfg, profile, max_kv_tokens=int(np.max(trace.kv_tokens)),
                           max_step_tokens=int(np.max(trace.tokens)),
                           max_unique_rows=int(np.max(trace.unique_rows)), placement=placement)
    if check_capacity:
        check_fits(budget, cfg, profile)
    plans = plan_steps(cfg, profile, trace, placement)
    sim = Simulation(cfg, profile, plans, steps, record_events, memoize, placement)
    sim.run()
    return collect(sim, budget)
