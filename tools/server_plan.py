"""The server planner: per placement, the deployment of one server that keeps the Engram table's cost lowest.

For each tensor-parallel width, table size and placement, every deployment option the placement has is
simulated on the whole server (sim.server):

- the table replicated on every GPU, or sharded: over the tensor-parallel group (an all-gather of the rows) or,
  with one GPU per replica, over the server (an all-to-all);
- a replicated host table as one copy per NUMA node, or one copy interleaved over the nodes;
- the CPU hash and gather threads pinned to their GPU's node, or spread by the OS;
- placements whose CPU threads gather rows (host_dma, ssd, hbm_cache missing through host_dma): how many.

Each option's server throughput is set against the same server without Engram (or with the table in HBM,
capacity aside), its memory checked per GPU and per NUMA node. The answer is the option that fits with the
least overhead, beside the single-GPU answer (GPU 0 alone, with its NUMA node's host to itself), so that a
reader sees what the full server changes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import pandas as pd
from tqdm import tqdm

from profiles import HardwareProfile, server_topology
from sim.server import simulate_server
from tools.executor import LOCAL, run_tasks
from tools.sweep import DEFAULT_CACHE_GIB, default_dram_cache_gib, point_config
from vocab.config import RunConfig
from vocab.placements import HBM, HBM_CACHE, HOST_DMA, HOST_UVA, NONE, SSD
from vocab.records import overhead
from vocab.units import GiB

# Placements whose table (or cache behind the HBM one) is in host memory: host copies matter.
HOST_TABLES = (HOST_DMA, HOST_UVA, HBM_CACHE)
NOT_SET = "-"  # an option the placement does not have

OPTION_COLUMNS = [
    "tensor_parallel", "replicas", "table_gib", "placement", "table", "shard_over", "host_copies", "gather_numa",
    "gather_threads", "fits", "capacity", "overhead", "overhead_vs_none", "overhead_vs_hbm", "within_budget",
    "tokens_per_s", "tokens_per_s_per_gpu", "step_time_s", "exposed_stall_s", "fetch_time_s", "busiest_pipe",
    "busiest_pipe_full", "hbm_per_gpu_gib", "host_per_node_gib", "single_gpu_overhead", "simplest_overhead", "reason",
    "best",
]


@dataclass(frozen=True)
class Option:
    """One way to deploy a placement on the server."""
    table: str = "replicate"
    shard_over: str = "group"
    host_copies: str = "per_numa"
    gather_numa: str = "local"
    gather_threads: int | None = None   # None: the config's

    def apply(self, cfg: RunConfig) -> RunConfig:
        cfg = cfg.with_deployment(table=self.table, shard_over=self.shard_over, host_copies=self.host_copies,
                                  gather_numa=self.gather_numa)
        return cfg if self.gather_threads is None else cfg.with_placement(gather_threads=self.gather_threads)


def gathers_on_cpu(cfg: RunConfig) -> bool:
    """Whether the placement's rows are gathered by CPU threads (placement.gather_threads matters)."""
    p = cfg.placement
    return p.kind in (HOST_DMA, SSD) or (p.kind == HBM_CACHE and p.misses_via == HOST_DMA)


def options_for(cfg: RunConfig, profile: HardwareProfile, gather_threads: list[int]) -> list[Option]:
    """Every deployment option of cfg's placement on the profile's server (cfg.deployment sets gpus and tp)."""
    d, nodes = cfg.deployment, len(server_topology(profile).numa)
    tables = [("replicate", "group")]
    if d.gpus > 1 and cfg.placement.kind != NONE:
        tables.append(("shard", "group" if d.tensor_parallel > 1 else "server"))
    numa = ["local", "any"] if nodes > 1 else ["local"]
    threads = gather_threads if gathers_on_cpu(cfg) and gather_threads else [None]
    out = []
    for table, over in tables:
        copies = ["per_numa", "per_server"] if (table == "replicate" and nodes > 1
                                                and cfg.placement.kind in HOST_TABLES) else ["per_numa"]
        out += [Option(table, over, c, n, t) for c in copies for n in numa for t in threads]
    return out


@dataclass(frozen=True)
class Task:
    """One server simulation (picklable): `key` says which answer it is."""
    key: tuple
    config: RunConfig
    profile: HardwareProfile
    steps: int


def run_one(task: Task) -> pd.DataFrame:
    r = simulate_server(task.config, task.profile, steps=task.steps, check_capacity=False)
    s = r.summary
    hbm = max(b.hbm_needed_bytes for b in r.memory) / GiB
    host = max(b.table_host_bytes for b in r.memory) / GiB
    row = {"tokens_per_s": [s["tokens_per_s"]], "tokens_per_s_per_gpu": s["tokens_per_s_per_gpu"],
           "step_time_s": s["step_time_s"], "exposed_stall_s": s["exposed_stall_s"],
           "fetch_time_s": s["fetch_time_s"], "busiest_pipe": s["busiest_pipe"],
           "busiest_pipe_full": s["busiest_pipe_full"], "capacity": r.capacity, "hbm_per_gpu_gib": hbm,
           "host_per_node_gib": host}
    return pd.DataFrame(row)


def server_dram_cache_gib(profile: HardwareProfile, gpus: int) -> float:
    """ssd's DRAM cache per GPU where the config sets none: the single-GPU default (half the usable host memory)
    of the fullest NUMA node, shared by the GPUs of the deployment on it."""
    server = server_topology(profile)
    per_node = [len([g for g in node.gpus if g < gpus]) for node in server.numa]
    k = max(range(len(per_node)), key=lambda i: per_node[i])
    node = replace(profile, host=replace(profile.host, memory_gib=server.numa[k].memory_gib))
    return default_dram_cache_gib(node) / max(per_node[k], 1)


def _point(cfg: RunConfig, table_gib: float, placement: str, profile: HardwareProfile) -> RunConfig:
    dram = server_dram_cache_gib(profile, cfg.deployment.gpus) if placement == SSD else None
    return point_config(cfg, table_gib, placement, cfg.workload.phase, DEFAULT_CACHE_GIB, dram)


def _reason(row: dict, base: dict, placement: str, max_overhead: float) -> str:
    """Why an option is not within budget: the capacity verdict, else where the step time goes."""
    if row["capacity"]:
        return row["capacity"]
    if row["overhead"] <= max_overhead:
        return ""
    lost = row["step_time_s"] - base["step_time_s"]
    stall = row["exposed_stall_s"] - base["exposed_stall_s"]
    if stall >= lost / 2:
        return (f"exposed stall ({stall * 1e6:,.0f} of {lost * 1e6:,.0f} us lost per step; {row['busiest_pipe']} "
                f"full {row['busiest_pipe_full']:.0%} of the run)")
    # What the stall does not explain: zero-copy blocks holding SMs, or a tensor-parallel group's waits.
    other = "SM interference" if placement in (HOST_UVA, HBM_CACHE, SSD) else "waits and compute"
    return f"{other} ({(lost - stall) * 1e6:,.0f} of {lost * 1e6:,.0f} us lost per step)"


@dataclass
class ServerPlan:
    options: pd.DataFrame  # OPTION_COLUMNS, every option simulated
    answers: pd.DataFrame  # the best option per (tensor_parallel, table_gib, placement)
    meta: dict


def plan_server(cfg: RunConfig, profile: HardwareProfile, *, placements: list[str], table_gib: list[float],
                tensor_parallel: list[int], gpus: int | None = None, gather_threads: list[int] | None = None,
                max_overhead: float = 0.03, baseline: str = "none", steps: int | None = None, jobs: int = 1,
                executor: str = LOCAL, address: str | None = None, progress: bool = True) -> ServerPlan:
    """Every option of every (tp, size, placement) on `gpus` GPUs of the profile's server (None: all), its
    overhead against `baseline` (none | hbm), the best option that fits, and the single-GPU answer beside it."""
    t0 = time.perf_counter()
    gpus = gpus or server_topology(profile).gpus
    steps = steps or cfg.workload.steps
    gather_threads = gather_threads or []
    tasks, options = [], []
    single_threads = {}  # (size, placement) -> the thread counts whose single-GPU answer is needed
    for tp in tensor_parallel:
        server = cfg.with_deployment(gpus=gpus, tensor_parallel=tp, table="replicate", shard_over="group")
        for size in table_gib:
            tasks.append(Task(("none", tp, size), _point(server, size, NONE, profile), profile, steps))
            for placement in placements:
                point = _point(server, size, placement, profile)
                for opt in options_for(point, profile, gather_threads):
                    options.append((tp, size, placement, opt))
                    tasks.append(Task(("option", tp, size, placement, opt), opt.apply(point), profile, steps))
                    if baseline == "hbm":  # the table in HBM, spread as this option spreads it
                        hbm = Option(opt.table, opt.shard_over).apply(_point(server, size, HBM, profile))
                        tasks.append(Task(("hbm", tp, size, opt.table, opt.shard_over), hbm, profile, steps))
                    single_threads.setdefault((size, placement), set()).add(opt.gather_threads)
    one = cfg.with_deployment(gpus=1, tensor_parallel=1, table="replicate", shard_over="group")
    for (size, placement), threads in single_threads.items():
        for t in threads:
            point = Option(gather_threads=t).apply(_point(one, size, placement, profile))
            tasks.append(Task(("single", size, placement, t), point, profile, steps))
        tasks.append(Task(("single none", size), _point(one, size, NONE, profile), profile, steps))
        if baseline == "hbm":
            tasks.append(Task(("single hbm", size), _point(one, size, HBM, profile), profile, steps))
    tasks = list({t.key: t for t in tasks}.values())  # a baseline asked by several options runs once
    with tqdm(total=len(tasks), desc="plan-server", unit="simulation", disable=None if progress else True) as bar:
        tables = run_tasks(run_one, tasks, executor=executor, address=address, jobs=jobs,
                           on_result=lambda *_: bar.update(1))
    got = {t.key: table.iloc[0].to_dict() for t, table in zip(tasks, tables)}
    rows = [_option_row(got, tp, size, placement, opt, gpus, max_overhead, baseline)
            for tp, size, placement, opt in options]
    table = pd.DataFrame(rows, columns=OPTION_COLUMNS)
    answers = _answers(table)
    meta = {"config": cfg.name, "profile": profile.name, "provenance": profile.provenance.source, "gpus": gpus,
            "max_overhead": max_overhead, "baseline": baseline, "steps": steps, "simulations": len(tasks),
            "elapsed_s": time.perf_counter() - t0}
    return ServerPlan(table, answers, meta)


def _option_row(got: dict, tp: int, size: float, placement: str, opt: Option, gpus: int, max_overhead: float,
                baseline: str) -> dict:
    own, none = got[("option", tp, size, placement, opt)], got[("none", tp, size)]
    vs_none = overhead(own["tokens_per_s"], none["tokens_per_s"])
    vs_hbm = (overhead(own["tokens_per_s"], got[("hbm", tp, size, opt.table, opt.shard_over)]["tokens_per_s"])
              if baseline == "hbm" else math.nan)
    base = none if baseline == "none" else got[("hbm", tp, size, opt.table, opt.shard_over)]
    single = got[("single", size, placement, opt.gather_threads)]
    single_base = got[("single none", size)] if baseline == "none" else got[("single hbm", size)]
    row = {
        "tensor_parallel": tp, "replicas": gpus // tp, "table_gib": size, "placement": placement,
        "table": opt.table, "shard_over": opt.shard_over if opt.table == "shard" else NOT_SET,
        "host_copies": opt.host_copies if opt.table == "replicate" and placement in HOST_TABLES else NOT_SET,
        "gather_numa": opt.gather_numa, "gather_threads": opt.gather_threads or 0,
        "fits": not own["capacity"], "capacity": own["capacity"] or "fits",
        "overhead": vs_none if baseline == "none" else vs_hbm, "overhead_vs_none": vs_none, "overhead_vs_hbm": vs_hbm,
        **{k: own[k] for k in ("tokens_per_s", "tokens_per_s_per_gpu", "step_time_s", "exposed_stall_s",
                               "fetch_time_s", "busiest_pipe", "busiest_pipe_full", "hbm_per_gpu_gib",
                               "host_per_node_gib")},
        "single_gpu_overhead": overhead(single["tokens_per_s"], single_base["tokens_per_s"]),
    }
    row["within_budget"] = bool(row["fits"] and row["overhead"] <= max_overhead)
    row["reason"] = _reason({**row, "capacity": own["capacity"]}, base, placement, max_overhead)
    row["best"] = False
    return row


def _answers(table: pd.DataFrame) -> pd.DataFrame:
    """Per (tp, size, placement): the option that fits with the least overhead (ties: the first listed, the
    simplest), else the least bad one; `best` marks it in the options table too. simplest_overhead is the first
    option's (replicated, a host copy per node, threads on the GPU's node: what one would deploy untold)."""
    picks = []
    for _, group in table.groupby(["tensor_parallel", "table_gib", "placement"], sort=False):
        fitting = group[group["fits"]]
        pool = fitting if len(fitting) else group
        picks.append(pool["overhead"].idxmin())
        table.loc[group.index, "simplest_overhead"] = group["overhead"].iloc[0] if group["fits"].iloc[0] else math.nan
    table.loc[picks, "best"] = True
    return table.loc[picks].reset_index(drop=True)
