"""The placement planner: per placement, the largest Engram table within a throughput budget.

A plan is one placement (with its cache mix: hbm_cache's HBM cache, ssd's DRAM
cache) at one set of Engram layers, one batch and one hardware profile. For
each, table sizes on a log grid are searched by bisection, between the
smallest grid size and the largest one that fits the machine (the memory
budget, checked first), with the closed form (sim.analytic.estimate); the
answer and its two neighbours are then simulated with the DES, which has the
last word: where it disagrees the search walks on with the DES alone.

Every configuration is a PointSpec and `evaluate_points` is a pure function
of a list of them, so any executor can map it; the search runs in rounds, one
point per plan still searching.

Why a point fails: "does not fit: ..." from the memory budget, else which
mechanism loses most of the step time against the baseline: the exposed stall
(waits at Engram layers for rows), the host's critical path (its step work and,
with hash_on = "critical_path", hashing), the Engram layers' own compute, or SM
interference. The last is what remains of the lost time after the other three:
in the closed form that is exactly the compute slowed by zero-copy gathers; in
the DES it also absorbs any contention the others do not name (not separable).
"""

from __future__ import annotations

import functools
import json
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from tqdm import tqdm

from profiles import HardwareProfile
from sim.analytic import estimate
from sim.engine import plan_steps, simulate, trace_for
from sim.memory import memory_budget
from sim.placements import placement_for
from tools.executor import (
    LOCAL,
    RAY,
    init_worker,
    run_tasks,
    sigint_ignored_while_spawning,
    start_ray,
    stop_ray,
    stop_workers,
)
from tools.sweep import (
    DEFAULT_CACHE_GIB,
    default_dram_cache_gib,
    point_config,
)
from vocab.config import MAX_TABLE_GIB, RunConfig
from vocab.placements import HBM, HBM_CACHE, HBM_CACHED, SSD
from vocab.records import overhead
from vocab.tables import OVERHEAD_BASELINES
from vocab.units import GiB

# The size grid: this many sizes per doubling (9 % apart), from MIN_TABLE_GIB up.
GRID_PER_DOUBLING = 8
MIN_TABLE_GIB = 0.25
CLOSED_FORM, DES = "closed form", "des"
# The mechanisms a lost step time is split into (column lost_<key>_s), and how the reason names them.
MECHANISMS = {"stall": "exposed stall", "sm": "SM interference", "host": "host critical path",
              "compute": "Engram compute"}
BASELINES = {"none": "overhead_vs_none", "hbm": "overhead_vs_hbm"}

POINT_COLUMNS = [
    "plan", "profile", "placement", "mix", "layers", "batch", "phase", "grid_index", "table_gib_asked",
    "table_gib", "table_bytes", "method", "fits", "capacity", "overhead", "overhead_cf", "overhead_des",
    "overhead_vs_hbm", "overhead_vs_none", "within_budget", "within_budget_cf", "des_changed", "tokens_per_s",
    "step_time_s", "exposed_stall_s", *[f"lost_{k}_s" for k in MECHANISMS], "link_utilisation",
    "hbm_needed_gib", "hbm_freed_gib", "reason",
]
PLAN_COLUMNS = [
    "plan", "profile", "placement", "mix", "layers", "batch", "phase", "table_gib", "table_gib_asked",
    "overhead", "overhead_vs_hbm", "overhead_vs_none", "hbm_freed_gib", "link_utilisation", "tokens_per_s",
    "exposed_stall_s", "next_table_gib", "next_reason", "answer_cf_gib", "des_changed", "changed_points",
    "cf_points", "des_points",
]


def size_grid(top_gib: float = MAX_TABLE_GIB) -> list[float]:
    """Table sizes MIN_TABLE_GIB * 2^(k/GRID_PER_DOUBLING) up to top_gib."""
    n = int(math.floor(GRID_PER_DOUBLING * math.log2(top_gib / MIN_TABLE_GIB) + 1e-9)) + 1
    return [MIN_TABLE_GIB * 2.0 ** (k / GRID_PER_DOUBLING) for k in range(n)]


@dataclass(frozen=True)
class PlanSpec:
    """One plan a person can act on: a placement and its cache mix, for one config (layers, batch, profile)."""
    config: RunConfig
    profile: HardwareProfile
    placement: str
    cache_gib: float = DEFAULT_CACHE_GIB     # hbm_cache's HBM cache where the config sets none
    dram_cache_gib: float | None = None      # ssd's DRAM cache where the config sets none

    def at(self, table_gib: float, placement: str | None = None) -> RunConfig:
        return point_config(self.config, table_gib, placement or self.placement, self.config.workload.phase,
                            self.cache_gib, self.dram_cache_gib)


@dataclass(frozen=True)
class PointSpec:
    """One configuration to evaluate (picklable): a plan at one grid size, by the closed form or also the DES."""
    plan_id: int
    plan: PlanSpec
    grid_index: int
    table_gib: float
    des: bool
    steps: int
    max_overhead: float
    baseline: str = "none"


def mix_label(cfg: RunConfig) -> str:
    """The plan's tier/cache mix, as a person would name it."""
    p = cfg.placement
    parts = []
    if p.kind in HBM_CACHED and (p.cache_gib is not None or p.cache_fraction is not None):
        parts.append(f"HBM cache {p.cache_gib:g} GiB" if p.cache_gib is not None
                     else f"HBM cache {p.cache_fraction:.0%}")
    if p.kind == SSD and p.dram_cache_gib:
        parts.append(f"DRAM cache {p.dram_cache_gib:,.3g} GiB")
    return ", ".join(parts) or "-"


def _figures(cfg: RunConfig, profile: HardwareProfile, trace, steps: int, des: bool) -> dict:
    """One configuration by the closed form (and the DES): step time, stall, the contention-free compute and
    host time per step, its memory budget and link bytes."""
    placement = placement_for(cfg)
    plans = plan_steps(cfg, profile, trace, placement)
    budget = memory_budget(cfg, profile, max_kv_tokens=int(np.max(trace.kv_tokens)),
                           max_step_tokens=int(np.max(trace.tokens)),
                           max_unique_rows=int(np.max(trace.unique_rows)), placement=placement)
    est = estimate(cfg, profile, plans)
    link = float(np.mean([p.host_rows.sum() for p in plans])) * cfg.engram.row_bytes
    out = {"budget": budget, "compute_s": float(np.mean([p.compute_time for p in plans])),
           "host_s": float(np.mean([p.host_time for p in plans])),
           CLOSED_FORM: {"tokens_per_s": est["tokens_per_s"], "step_time_s": est["step_time_s"],
                         "exposed_stall_s": est["exposed_stall_s"],
                         "link_utilisation": link / (est["step_time_s"] * profile.link.h2d_gbps * 1e9)}}
    if des:
        s = simulate(cfg, profile, trace, steps=steps, check_capacity=False).summary
        out[DES] = {k: s[k] for k in ("tokens_per_s", "step_time_s", "exposed_stall_s", "link_utilisation")}
    return out


def lost_time(own: dict, base: dict, method: str) -> dict:
    """The step time lost against the baseline, split by mechanism (seconds per step; SM interference is the
    remainder, see the module's docstring)."""
    lost = own[method]["step_time_s"] - base[method]["step_time_s"]
    parts = {"stall": own[method]["exposed_stall_s"] - base[method]["exposed_stall_s"],
             "host": own["host_s"] - base["host_s"], "compute": own["compute_s"] - base["compute_s"]}
    parts["sm"] = lost - sum(parts.values())
    return {k: parts[k] for k in MECHANISMS}


def failure_reason(fits_verdict: str, within: bool, lost: dict) -> str:
    """Why a point is not an answer: the budget's "does not fit: ...", else the mechanism that loses most."""
    if fits_verdict:
        return fits_verdict
    if within:
        return ""
    key = max(lost, key=lambda k: lost[k])
    total = sum(v for v in lost.values() if v > 0)
    return f"{MECHANISMS[key]} ({lost[key] * 1e6:,.0f} of {total * 1e6:,.0f} us lost per step)"


def evaluate_point(spec: PointSpec) -> dict:
    """One POINT_COLUMNS row: the plan's placement at one size, against the table in HBM and without Engram
    (capacity aside), by the closed form and, if asked, by the DES (which then decides)."""
    plan, cfg = spec.plan, spec.plan.config
    own_cfg = plan.at(spec.table_gib)
    plain = trace_for(plan.at(spec.table_gib, HBM))  # the baselines and the placements without a cache
    base = {kind: _figures(plan.at(spec.table_gib, kind), plan.profile, plain, spec.steps, spec.des)
            for kind in OVERHEAD_BASELINES.values()}
    own = base[HBM] if plan.placement == HBM else _figures(
        own_cfg, plan.profile, trace_for(own_cfg) if plan.placement in HBM_CACHED else plain, spec.steps, spec.des)
    method = DES if spec.des else CLOSED_FORM
    losses = {m: {name: overhead(own[m]["tokens_per_s"], base[kind][m]["tokens_per_s"])
                  for name, kind in OVERHEAD_BASELINES.items()} for m in (CLOSED_FORM, method)}
    budget, key = own["budget"], BASELINES[spec.baseline]
    fits = budget.fits_hbm and budget.fits_host and budget.fits_ssd
    within = {m: bool(fits and losses[m][key] <= spec.max_overhead) for m in losses}
    lost = lost_time(own, base[OVERHEAD_BASELINES[key]], method)
    hbm_needed = budget.hbm_needed_bytes
    return {
        "plan": spec.plan_id, "profile": plan.profile.name, "placement": plan.placement, "mix": mix_label(own_cfg),
        "layers": ",".join(map(str, cfg.engram.layer_ids)), "batch": cfg.workload.sequences,
        "phase": cfg.workload.phase, "grid_index": spec.grid_index, "table_gib_asked": spec.table_gib,
        "table_gib": own_cfg.engram.total_table_bytes / GiB, "table_bytes": own_cfg.engram.total_table_bytes,
        "method": method, "fits": fits, "capacity": budget.verdict(), "overhead": losses[method][key],
        "overhead_cf": losses[CLOSED_FORM][key], "overhead_des": losses[DES][key] if spec.des else math.nan,
        **losses[method], "within_budget": within[method], "within_budget_cf": within[CLOSED_FORM],
        "des_changed": spec.des and within[DES] != within[CLOSED_FORM],
        **{k: own[method][k] for k in ("tokens_per_s", "step_time_s", "exposed_stall_s")},
        **{f"lost_{k}_s": v for k, v in lost.items()}, "link_utilisation": own[method]["link_utilisation"],
        "hbm_needed_gib": hbm_needed / GiB,
        # What keeping the same table in HBM would need, less what this placement needs (hbm: 0).
        "hbm_freed_gib": (base[HBM]["budget"].hbm_needed_bytes - hbm_needed) / GiB,
        "reason": failure_reason(budget.verdict(), within[method], lost),
    }


def evaluate_points(specs: Iterable[PointSpec]) -> list[dict]:
    """Pure: one POINT_COLUMNS row per spec, in order."""
    return [evaluate_point(s) for s in specs]


def capacity_top(plan: PlanSpec, grid: list[float]) -> int:
    """The largest grid index whose configuration fits the machine (-1: none), by the memory budget alone.
    Its per-step figures come from the smallest size's trace (they barely depend on the table); the search
    then checks each point's own budget, so a size this lets through that does not fit is still refused."""
    trace = trace_for(plan.at(grid[0], HBM))
    stats = {"max_kv_tokens": int(np.max(trace.kv_tokens)), "max_step_tokens": int(np.max(trace.tokens)),
             "max_unique_rows": int(np.max(trace.unique_rows))}

    def fits(i: int) -> bool:
        b = memory_budget(plan.at(grid[i]), plan.profile, **stats)
        return b.fits_hbm and b.fits_host and b.fits_ssd

    lo, hi = -1, len(grid)  # fits(lo) (virtually), not fits(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


@dataclass
class _Search:
    """One plan's search over the grid: closed-form bisection (the largest size that fits first), then the DES
    on the answer and its neighbours, walking on with the DES alone while it disagrees."""
    top: int                # largest grid index that fits by capacity_top (-1: none)
    size: int               # grid length
    lo: int = -1            # closed form: largest index known within budget (-1: none)
    hi: int = 0             # closed form: smallest index known over it (top + 1 at first: virtually)
    probed_top: bool = False
    des: dict = field(default_factory=dict)  # grid index -> within budget by the DES

    def __post_init__(self):
        self.hi = self.top + 1

    def next_closed_form(self) -> int | None:
        if self.hi - self.lo <= 1:
            return None
        return (self.lo + self.hi) // 2 if self.probed_top else self.top

    def record_closed_form(self, i: int, within: bool) -> None:
        self.probed_top = True
        self.lo, self.hi = (i, self.hi) if within else (self.lo, i)

    def _walk(self) -> tuple[int, int | None]:
        """(the answer so far, the grid index the DES must see next or None): down from the closed form's
        answer while the DES refuses it, else up while the DES passes the next size."""
        a = self.lo
        if a >= 0 and self.des.get(a) is False:
            while a >= 0:
                if a not in self.des:
                    return a, a
                if self.des[a]:
                    return a, None
                a -= 1
            return -1, None
        while a + 1 < self.size:
            if a + 1 not in self.des:
                return a, a + 1
            if not self.des[a + 1]:
                return a, None
            a += 1
        return a, None

    def next_des(self) -> list[int]:
        """Grid indices the DES must still see (empty: the answer stands)."""
        confirm = [i for i in (self.lo - 1, self.lo, self.lo + 1) if 0 <= i < self.size] if self.lo >= 0 else [0]
        missing = [i for i in confirm if i not in self.des]
        if missing:
            return missing
        nxt = self._walk()[1]
        return [] if nxt is None else [nxt]

    @property
    def answer(self) -> int:
        return self._walk()[0]


def make_plans(cfg: RunConfig, profiles: list[tuple[str, HardwareProfile]], placements: list[str],
               layer_sets: list[list[int]], batches: list[int], cache_gib: list[float],
               dram_cache_gib: list[float] | None = None) -> list[PlanSpec]:
    """Every plan: profile x batch x layers x placement x its cache mixes (hbm_cache: each HBM cache size;
    ssd: each DRAM cache size, by default half the host's usable memory)."""
    out = []
    for name, profile in profiles:
        drams = dram_cache_gib or [default_dram_cache_gib(profile)]
        for batch in batches:
            for layers in layer_sets:
                c = cfg.with_profile(name).with_workload(sequences=batch).with_engram(layer_ids=list(layers))
                for placement in placements:
                    if placement == SSD and profile.ssd is None:  # no drive on this machine
                        continue
                    mixes = ([(g, None) for g in cache_gib] if placement == HBM_CACHE
                             else [(DEFAULT_CACHE_GIB, d) for d in drams] if placement == SSD
                             else [(DEFAULT_CACHE_GIB, None)])
                    out += [PlanSpec(c, profile, placement, g, d) for g, d in mixes]
    return out


Mapper = Callable[[Callable, list], Iterable]


def _batches(specs: list[PointSpec]) -> list[list[int]]:
    """Spec positions, batched by what their token traces depend on (the Engram and workload sections, not
    the profile) and table size: a batch's specs, all placements and profiles, share their traces."""
    groups: dict[tuple, list[int]] = {}
    traces: dict[int, str] = {}  # per plan config: the key of its traces
    for n, s in enumerate(specs):
        c = s.plan.config
        if id(c) not in traces:
            traces[id(c)] = json.dumps([asdict(c.engram), asdict(c.workload)], sort_keys=True)
        groups.setdefault((traces[id(c)], s.grid_index), []).append(n)
    return list(groups.values())


def _evaluate(mapper: Mapper, specs: list[PointSpec]) -> list[dict]:
    batches = _batches(specs)
    rows: list[dict | None] = [None] * len(specs)
    for batch, out in zip(batches, mapper(evaluate_points, [[specs[n] for n in b] for b in batches])):
        for n, row in zip(batch, out):
            rows[n] = row
    return rows


class LocalPool:
    """Maps over a process pool kept for the whole plan (jobs > 1), else in this process; a Ctrl-C or a failed
    point ends the workers at once."""

    def __init__(self, jobs: int):
        self.jobs = jobs
        self.pool = None

    def __enter__(self) -> Mapper:
        if self.jobs > 1:
            with sigint_ignored_while_spawning():
                # spawn, not fork: Numba's parallel threading layer is not fork-safe once used.
                self.pool = ProcessPoolExecutor(max_workers=self.jobs, initializer=init_worker,
                                                mp_context=multiprocessing.get_context("spawn"))
                self.pool.submit(int).result()  # start the workers now, while SIGINT is ignored
            return self.pool.map
        return map

    def __exit__(self, kind, value, tb) -> None:
        if self.pool is not None:
            if kind is not None:
                stop_workers(self.pool)
            self.pool.shutdown(cancel_futures=True)


def _as_table(fn: Callable, item) -> pd.DataFrame:
    return pd.DataFrame(fn(item), columns=POINT_COLUMNS)


class RayPool:
    """Maps each round's batches as Ray tasks (tools/executor.run_tasks) on one Ray instance kept for the whole
    plan: at `address`, or a local one started (and stopped) here."""

    def __init__(self, address: str | None, jobs: int | None):
        self.address, self.jobs, self.started = address, jobs, False

    def __enter__(self) -> Mapper:
        self.started = start_ray(self.address, self.jobs)
        return self.map

    def map(self, fn: Callable, items: list) -> list[list[dict]]:
        tables = run_tasks(functools.partial(_as_table, fn), items, executor=RAY, address=self.address)
        return [t.to_dict("records") for t in tables]

    def __exit__(self, kind, value, tb) -> None:
        if self.started:
            stop_ray()


@dataclass
class PlanResult:
    plans: pd.DataFrame   # PLAN_COLUMNS, one row per plan
    points: pd.DataFrame  # POINT_COLUMNS, every point evaluated (a size the DES saw twice: both methods)
    meta: dict            # the question, the profiles' provenance, counts and time


def _rounds(plans: list[PlanSpec], searches: list[_Search], grid: list[float], mapper: Mapper, bar, *,
            max_overhead: float, baseline: str, steps: int) -> list[dict]:
    """The search: closed-form rounds until every bisection ends, then DES rounds until every answer stands."""
    rows = []
    for des in (False, True):
        while True:
            todo = [(k, i) for k, s in enumerate(searches)
                    for i in (s.next_des() if des else [s.next_closed_form()]) if i is not None]
            if not todo:
                break
            specs = [PointSpec(k, plans[k], i, grid[i], des, steps, max_overhead, baseline) for k, i in todo]
            bar.total = max(bar.total or 0, bar.n + len(specs))
            for spec, row in zip(specs, _evaluate(mapper, specs)):
                search = searches[spec.plan_id]
                if des:
                    search.des[spec.grid_index] = row["within_budget"]
                else:
                    search.record_closed_form(spec.grid_index, row["within_budget"])
                rows.append(row)
            bar.update(len(specs))
    return rows


def _plan_row(k: int, search: _Search, points: pd.DataFrame, grid: list[float]) -> dict:
    """The plan's answer (the DES's), why the next size fails, and where the DES changed the closed form."""
    mine = points[points["plan"] == k]
    des = mine[mine["method"] == DES].drop_duplicates("grid_index", keep="last").set_index("grid_index")
    a = search.answer
    answer = des.loc[a] if a >= 0 else None
    nxt = des.loc[a + 1] if a + 1 in des.index else None
    first = mine.iloc[0]
    changed = des[des["des_changed"]]
    row = {c: first[c] for c in ("plan", "profile", "placement", "mix", "layers", "batch", "phase")}
    take = ("table_gib", "table_gib_asked", "overhead", "overhead_vs_hbm", "overhead_vs_none", "hbm_freed_gib",
            "link_utilisation", "tokens_per_s", "exposed_stall_s")
    row.update({c: (answer[c] if answer is not None else math.nan) for c in take})
    row.update({
        "next_table_gib": nxt["table_gib_asked"] if nxt is not None else math.nan,
        "next_reason": (nxt["reason"] if nxt is not None
                        else f"no larger size: the grid ends at {grid[-1]:,.4g} GiB"),
        "answer_cf_gib": grid[search.lo] if search.lo >= 0 else math.nan,
        "des_changed": a != search.lo,
        "changed_points": ", ".join(f"{g:,.4g} GiB" for g in changed["table_gib_asked"]),
        "cf_points": int((mine["method"] == CLOSED_FORM).sum()), "des_points": len(des),
    })
    return row


def plan(plans: list[PlanSpec], *, max_overhead: float, baseline: str = "none", steps: int | None = None,
         jobs: int = 1, progress: bool = True, top_gib: float = MAX_TABLE_GIB, executor: str = LOCAL,
         address: str | None = None) -> PlanResult:
    """Answer every plan: the largest grid size within max_overhead (a fraction) against `baseline`; each
    round's points on this machine (jobs processes) or as Ray tasks (executor "ray", at `address`)."""
    t0 = time.perf_counter()
    grid = size_grid(top_gib)
    searches = [_Search(capacity_top(p, grid), len(grid)) for p in plans]
    steps = steps or plans[0].config.workload.steps
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(plans)))
    pool = RayPool(address, jobs if jobs > 1 else None) if executor == RAY else LocalPool(jobs)
    with tqdm(total=0, desc="plan", unit="point", disable=None if progress else True) as bar, pool as mapper:
        rows = _rounds(plans, searches, grid, mapper, bar, max_overhead=max_overhead, baseline=baseline,
                       steps=steps)
    points = pd.DataFrame(rows, columns=POINT_COLUMNS)
    table = pd.DataFrame([_plan_row(k, s, points, grid) for k, s in enumerate(searches)], columns=PLAN_COLUMNS)
    profiles = {p.profile.name: {"source": p.profile.provenance.source, "machine": p.profile.provenance.machine,
                                 "date": str(p.profile.provenance.date)} for p in plans}
    meta = {"config": plans[0].config.name, "max_overhead": max_overhead, "baseline": baseline,
            "overhead_column": BASELINES[baseline], "steps": steps, "profiles": profiles,
            "grid": {"min_gib": grid[0], "max_gib": grid[-1], "per_doubling": GRID_PER_DOUBLING},
            "closed_form_points": int((points["method"] == CLOSED_FORM).sum()),
            "des_points": int((points["method"] == DES).sum()), "jobs": jobs,
            "elapsed_s": time.perf_counter() - t0}
    return PlanResult(table, points, meta)

