"""A simulation's results: the shared record tables (vocab.records) from the DES's step logs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from profiles import HardwareProfile
from vocab.config import RunConfig
from vocab.memory import MemoryBudget
from vocab.records import RunRecord, event_table, fetch_table, step_table, summarise
from vocab.serving import serving_extra


@dataclass
class StepLog:
    """What the DES saw of one step (times in seconds; per Engram layer where a list)."""
    start: float = math.nan
    end: float = math.nan
    fetch_start: float = math.nan
    fetch_end: list = field(default_factory=list)
    wait_start: list = field(default_factory=list)
    stall: list = field(default_factory=list)


@dataclass
class SimResult:
    config: RunConfig
    profile: HardwareProfile
    steps: pd.DataFrame
    fetches: pd.DataFrame
    events: pd.DataFrame
    summary: dict
    memory: MemoryBudget
    sim_events: int = 0
    # Steps replayed from an identical earlier step (same trace steps, idle fetch side).
    replayed_steps: int = 0
    # Bytes that crossed each physical pipe (one GPU: pcie_h2d, host_dram, ssd_drive), from the bandwidth model.
    pipe_bytes: dict = field(default_factory=dict)
    # Serving runs (sim.serve): requests and batches (vocab.serving tables) and the serving summary.
    requests: pd.DataFrame | None = None
    batches: pd.DataFrame | None = None
    serving: dict | None = None

    def to_record(self) -> RunRecord:
        extra = serving_extra(self.requests, self.batches, self.serving) if self.serving is not None else {}
        return RunRecord(kind="simulated", config=self.config.to_dict(),
                         machine={"profile": self.profile.name, "provenance": self.profile.provenance.source},
                         summary=self.summary, steps=self.steps, fetches=self.fetches, events=self.events,
                         extra=extra)


def collect(sim, budget: MemoryBudget) -> SimResult:
    """The SimResult of a finished sim.engine.Simulation."""
    rb = sim.cfg.engram.row_bytes
    logs, plans, layer_ids = sim.logs, sim.plans, sim.layer_ids
    n, n_layers = len(logs), len(layer_ids)
    idx = np.arange(n) % len(plans)  # trace step behind each simulated step

    def per_plan(attr):  # [n] or [n, layers] array of a StepPlan field, per simulated step
        return np.array([getattr(p, attr) for p in plans])[idx]

    def per_layer(attr):  # [n, layers] array of a StepLog list field
        return np.array([getattr(log, attr) for log in logs]).reshape(n, n_layers)

    start = np.array([log.start for log in logs])
    fetch_start = np.array([log.fetch_start for log in logs])
    fetch_end, wait_start, stall = per_layer("fetch_end"), per_layer("wait_start"), per_layer("stall")
    fetch_time = fetch_end - fetch_start[:, None]
    lookups, unique, host, hits, dram, reads = (per_plan(a) for a in ("lookups", "unique_rows", "host_rows",
                                                                      "cache_hits", "dram_hits", "ssd_reads"))
    host_bytes = host.sum(axis=1) * rb
    steps = step_table(
        step=np.arange(n), start_s=start, step_time_s=np.array([log.end for log in logs]) - start,
        compute_time_s=per_plan("compute_time"), tokens=per_plan("tokens"),
        exposed_stall_s=stall.sum(axis=1), fetch_time_s=fetch_time.sum(axis=1),
        host_bytes=host_bytes, hbm_bytes=lookups.sum(axis=1) * rb, link_bytes=host_bytes)
    fetches = fetch_table(
        step=np.repeat(np.arange(n), n_layers), layer=np.tile(np.asarray(layer_ids, dtype=np.int64), n),
        fetch_start_s=np.repeat(fetch_start, n_layers), fetch_end_s=fetch_end.ravel(),
        fetch_time_s=fetch_time.ravel(), wait_start_s=wait_start.ravel(), exposed_stall_s=stall.ravel(),
        lookups=lookups.ravel(), unique_rows=unique.ravel(), host_rows=host.ravel(), cache_hits=hits.ravel(),
        dram_hits=dram.ravel(), ssd_reads=reads.ravel())
    events = event_table(sim.res.events)
    summary = summarise(steps, sim.profile.link.h2d_gbps * 1e9)
    return SimResult(sim.cfg, sim.profile, steps, fetches, events, summary, budget,
                     sim_events=next(sim.env._eid), replayed_steps=sim.memos.replayed,
                     pipe_bytes=sim.res.pipe_bytes())
