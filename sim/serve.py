"""A serving run in the DES: requests arrive, the scheduler forms each step, Engram's fetch is in the loop.

The host actor of sim.engine gains the scheduler: when the previous step ends
(or, when nothing can run, at the next arrival) it asks
workloads.scheduler.Scheduler for the next step at the DES's clock, hashes
that step's tokens (workloads.serving_rows) and plans it (sim.plan.plan_step);
the step then runs exactly as a steady-state step does: the host's critical
path, the fetch per Engram layer through the placement's path, the layers on
the compute stream. A step's rows are fetched once the scheduler has formed
it: decode tokens exist only then. Prompts are known sooner: with
prefill_first and workload.prefill_prefetch_ahead > 0 the scheduler forms the
next prefill steps from the prompts waiting (Scheduler.ahead), and their rows
are fetched while the current step runs.

Steps with prompt tokens run eagerly; decode-only steps run the CUDA graph of
the next captured batch size when workload.launch = "cuda_graphs" (padded).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from profiles import HardwareProfile, load_profile
from sim.compute import StepShape
from sim.engine import Simulation
from sim.memory import check_fits, memory_budget
from sim.placements import Placement, placement_for
from sim.plan import StepPlan, StepRows, plan_step
from sim.result import SimResult, StepLog, collect
from vocab.config import RunConfig
from vocab.memory import kv_block_bytes, serving_kv_blocks
from vocab.serving import batch_table, serving_summary
from workloads.requests import Requests, make_requests
from workloads.scheduler import Scheduler, ServeStep
from workloads.serving_rows import ServingRows


class ServingSimulation(Simulation):
    def __init__(self, cfg: RunConfig, profile: HardwareProfile, scheduler: Scheduler, rows: ServingRows | None,
                 placement: Placement, record_events: bool = False):
        super().__init__(cfg, profile, plans=[], steps=0, record_events=record_events, memoize=False,
                         placement=placement)
        self.scheduler = scheduler
        self.rows = rows
        self.eager = cfg.with_workload(launch="eager")
        self.served: list[ServeStep] = []
        self._no_rows = np.zeros(len(cfg.engram.layer_ids), dtype=np.int64)

    def plan(self, step: int) -> StepPlan:
        return self.plans[step]

    def plan_for(self, step: ServeStep) -> StepPlan:
        shape = StepShape(tokens=step.tokens, attn_context_sum=step.attn_context_sum, sequences=step.sequences,
                          lookups=0, kv_read_tokens=float(step.kv_tokens), graph_batch=step.graph_batch)
        if self.layer_ids:
            counts = self.rows.rows(step)
        else:  # no Engram: nothing hashed or fetched
            lookups = np.full_like(self._no_rows, step.tokens * self.cfg.engram.tables_per_layer)
            counts = dict(lookups=lookups, distinct=self._no_rows, reused=self._no_rows,
                          cache_hits=self._no_rows, dram_hits=self._no_rows)
        cfg = self.cfg if step.graph_batch else self.eager
        return plan_step(cfg, self.profile, self.placement, shape, StepRows(**counts))

    def gpu_stream(self):
        sched = self.scheduler
        fetched = 0  # steps whose fetch has been launched
        while not sched.done:
            step = sched.schedule(self.env.now)
            if step is None:  # nothing runs and nothing waiting fits: the next request's arrival
                arrival = sched.next_arrival()
                if arrival is None:
                    raise RuntimeError("serving scheduler stalled with requests unfinished (a bug)")
                yield self.env.timeout(max(arrival - self.env.now, 0.0))
                continue
            # This step, and the prefill steps the scheduler formed ahead of it (planned once, in order).
            for formed in [step, *sched.ahead][len(self.plans) - step.index:]:
                self.plans.append(self.plan_for(formed))
                self.logs.append(StepLog())
                self.served.append(formed)
            self.steps += 1
            log = self.logs[step.index]
            log.start = self.env.now
            new = list(range(fetched, len(self.plans)))  # their rows are fetched from now on
            fetched = len(self.plans)
            yield from self.host(step.index, new)
            yield from self.compute(step.index)
            log.end = self.env.now
            sched.finish(step, self.env.now)


def serving_parts(cfg: RunConfig, profile: HardwareProfile, placement: Placement, check_capacity: bool = True):
    """(memory budget with the KV cache the run gets, KV blocks): the budget of everything but the KV cache,
    then the blocks that fill what is left."""
    s = cfg.workload.scheduler
    budget = memory_budget(cfg, profile, max_kv_tokens=0, max_step_tokens=s.max_batched_tokens,
                           max_unique_rows=s.max_batched_tokens * cfg.engram.tables_per_layer, placement=placement)
    if check_capacity:
        check_fits(budget, cfg, profile)
    # Capacity aside (e.g. the table-in-HBM baseline of a table HBM cannot hold): the KV cache gets what it
    # would beside the rest if the table fitted, as on a GPU with room for the table.
    fitted = budget if budget.fits_hbm else dataclasses.replace(budget, table_hbm_bytes=0)
    blocks = serving_kv_blocks(cfg, fitted)
    budget.kv_cache_bytes = blocks * kv_block_bytes(cfg.backbone, s.kv_block_tokens)
    return budget, blocks


def simulate_serving(cfg: RunConfig, profile: HardwareProfile | None = None, *, requests: Requests | None = None,
                     record_events: bool = False, check_capacity: bool = True) -> SimResult:
    """Simulate cfg's serving workload (workload.phase = "serve") to its last request's last token."""
    profile = profile or load_profile(cfg.profile)
    placement = placement_for(cfg)
    placement.check_profile(profile)
    if requests is None:
        requests = make_requests(cfg, np.random.default_rng(cfg.workload.seed))
    budget, blocks = serving_parts(cfg, profile, placement, check_capacity)
    scheduler = Scheduler(cfg, requests, blocks)
    rows = None
    if placement.layer_ids:
        rows = ServingRows(cfg, requests, placement.trace_cache_rows(), placement.trace_dram_rows())
    sim = ServingSimulation(cfg, profile, scheduler, rows, placement, record_events)
    sim.run()
    result = collect(sim, budget)
    served = sim.served
    result.batches = batch_table(
        step=np.arange(len(served)), start_s=result.steps.start_s.to_numpy(),
        step_time_s=result.steps.step_time_s.to_numpy(), sequences=[s.sequences for s in served],
        prefill_tokens=[int(s.counts[~s.decodes].sum()) for s in served],
        decode_tokens=[int(s.decodes.sum()) for s in served], graph_batch=[s.graph_batch for s in served],
        kv_blocks_used=[s.kv_blocks_used for s in served], waiting=[s.waiting for s in served])
    result.requests = scheduler.request_table()
    result.serving = serving_summary(result.requests, result.batches)
    result.serving["kv_blocks"] = blocks
    return result
