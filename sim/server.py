"""Several GPUs of one server in one DES: a sim.engine.Simulation per GPU on shared pipes and core pools.

Each GPU has its own compute stream, copy engines, fetch streams, staging and SM share (sim.resources);
all of them share one SharedBandwidth whose pipes are the server's physical ones (sim.topology: each GPU's
link, the switch uplinks, each NUMA node's DRAM, the socket link, NVLink, the drives), and the CPU cores
of a NUMA node (gather_numa = "local") or of the whole host ("any").

Deployment (vocab.config.DeploymentConfig):
- tensor parallel: a GPU of a group of tp computes the layers in (layer time - kernel launches) / tp, plus
  two ring all-reduces of the step's hidden states per layer over NVLink (closed form, in the compute
  segments); the group waits at each Engram layer for its slowest member (a barrier).
- data-parallel replicas run the same token trace side by side (the worst case for bursts on shared pipes).
- shard: each GPU fetches its slice's share of the rows (over the group: 1/g of the step's rows; over the
  server: 1/g of the union of what every replica asks, the replicas' rows counted on a trace of the whole
  server's batch), then, after a barrier over the shard group, sends and receives (g-1)/g of the step's
  rows over its NVLink, plus one collective's latency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import simpy

from profiles import HardwareProfile, ServerProfile, load_profile, server_topology
from sim.bandwidth import SharedBandwidth
from sim.compute import ENGRAM_KERNELS, launch_time
from sim.engine import Simulation, trace_for
from sim.memory import memory_budget
from sim.placements import Placement, placement_for
from sim.plan import StepPlan, plan_steps
from sim.resources import NVLINK_IN, NVLINK_OUT, SharedResources, is_core_pipe
from sim.result import SimResult, collect
from sim.topology import Topology
from vocab.config import RunConfig
from vocab.errors import ConfigError, ProfileError
from vocab.memory import MemoryBudget, host_usable_bytes, kv_share, node_host_bytes
from vocab.placements import HBM, SSD
from vocab.records import RunRecord, overhead
from vocab.tables import OVERHEAD_BASELINES
from vocab.units import DTYPE_BYTES
from workloads.trace import Trace, build_trace

NVLINK = "nvlink"  # the timeline's actor for a shard group's row exchange
ROW_FIELDS = ("unique_rows", "distinct_rows", "host_rows", "reused_rows", "cache_hits", "dram_hits", "ssd_reads")


@dataclass
class ServerResult:
    config: RunConfig
    profile: HardwareProfile
    gpus: list[SimResult]        # per GPU, in GPU order (each one's pipe_bytes: the bytes its own transfers moved)
    summary: dict                # the server's figures (summarise_server)
    pipes: pd.DataFrame          # per physical pipe: capacity_gbps, bytes, bytes_per_step, utilisation
    memory: list[MemoryBudget]   # per GPU: its HBM, its NUMA node's host memory, its drive
    capacity: str                # "" when everything fits, else the first "does not fit: ..." (which GPU, node)
    pipe_bytes: dict             # bytes that crossed each physical pipe, all GPUs together
    sim_events: int = 0
    cores: pd.DataFrame | None = None  # per core pool (CORE_COLUMNS): its cores, core-seconds, use, time full

    def to_record(self) -> RunRecord:
        """GPU 0's record, the server's summary, pipes and per-GPU summaries beside it."""
        record = self.gpus[0].to_record()
        record.extra.update({"server": self.summary, "pipes": self.pipes.to_dict("records"),
                             "gpu_summaries": [r.summary for r in self.gpus]})
        return record


class SaturationTracking(SharedBandwidth):
    """SharedBandwidth that also counts, per pipe, the time its transfers fill it (what binds in the bursts
    a mean utilisation hides)."""

    def __init__(self, env: simpy.Environment, capacities: dict[str, float]):
        super().__init__(env, capacities)
        self.full_s = {name: 0.0 for name in capacities}

    def _advance(self) -> None:
        dt = self.env.now - self._last
        if dt > 0:
            load: dict[str, float] = {}
            for t in self.active:
                for name, w in t.uses.items():
                    load[name] = load.get(name, 0.0) + t.rate * w
            for name, used in load.items():
                if used >= (1 - 1e-6) * self.capacities[name]:
                    self.full_s[name] += dt
        super()._advance()


class Barrier:
    """Per key, an event that fires when all `parties` have arrived."""

    def __init__(self, env: simpy.Environment, parties: int):
        self.env = env
        self.parties = parties
        self.waiting: dict = {}

    def wait(self, key) -> simpy.Event:
        event, arrived = self.waiting.get(key, (None, 0))
        event = event or self.env.event()
        if arrived + 1 == self.parties:
            del self.waiting[key]
            event.succeed()
        else:
            self.waiting[key] = (event, arrived + 1)
        return event


class ServerGpu(Simulation):
    """One GPU of the server: waits for its tensor-parallel group, exchanges its shard group's rows."""

    def __init__(self, cfg: RunConfig, profile: HardwareProfile, plans: list[StepPlan], steps: int,
                 placement: Placement, res: SharedResources, group: Barrier | None, shard: Barrier | None,
                 exchange: np.ndarray, latency_s: float):
        super().__init__(cfg, profile, plans, steps, res.record_events, memoize=False, placement=placement, res=res)
        self.group, self.shard = group, shard
        self.exchange = exchange  # [trace step, Engram layer] bytes sent (and received) over NVLink
        self.latency_s = latency_s

    def group_wait(self, step: int, k: int):
        if self.group is not None:
            yield self.group.wait((step, k))

    def exchange_rows(self, step: int, k: int, plan: StepPlan):
        if self.shard is None:
            return
        yield self.shard.wait((step, k))
        t = self.env.now
        yield self.env.timeout(self.latency_s)
        yield self.res.transfer(float(self.exchange[step % len(self.plans), k]), {NVLINK_OUT: 1.0, NVLINK_IN: 1.0})
        layer = self.layer_ids[k]
        self.res.log(NVLINK, f"exchange L{layer}", t, step, layer)


# -- checks ---------------------------------------------------------------------------------------------

def check_deployment(cfg: RunConfig, profile: HardwareProfile) -> None:
    """ConfigError or ProfileError, one line, if the deployment cannot run on the profile's server."""
    d, s = cfg.deployment, server_topology(profile)
    if d.gpus > s.gpus:
        where = f"server.gpus = {s.gpus}" if profile.server else "one GPU (no [server] section)"
        raise ConfigError("deployment.gpus", f"{d.gpus} is more than {profile.name} has ({where})",
                          f"use at most {s.gpus}, or a server profile such as dgx-h100")
    if (d.tensor_parallel > 1 or d.shard_size > 1) and s.nvlink_gbps <= 0:
        raise ProfileError(f"{profile.name}: server.nvlink_gbps", "is 0: no NVLink for tensor parallelism or "
                           "a sharded table", "use tensor_parallel = 1 and table = 'replicate', or a profile "
                           "with NVLink")
    if cfg.workload.phase == "serve" and d.gpus > 1:
        raise ConfigError("workload.phase", "a server of several GPUs is simulated in decode or prefill, not serve",
                          "use --phase decode or prefill, or deployment.gpus = 1")


# -- plans: tensor parallelism and shards --------------------------------------------------------------

def allreduce_time(s: ServerProfile, gpus: int, nbytes: float) -> float:
    """One ring all-reduce of `nbytes` over `gpus` GPUs on NVLink: its latency, and 2 (g-1)/g of the bytes
    through each GPU's link."""
    return s.nvlink_latency_us * 1e-6 + 2 * (gpus - 1) / gpus * nbytes / (s.nvlink_gbps * 1e9)


def tensor_parallel_plans(cfg: RunConfig, profile: HardwareProfile, server: ServerProfile, placement: Placement,
                          plans: list[StepPlan]) -> list[StepPlan]:
    """Plans of one rank of a tensor-parallel group: each segment's work over tp (its kernel launches whole),
    plus two all-reduces of the step's hidden states per backbone layer in it."""
    tp = cfg.deployment.tensor_parallel
    if tp == 1:
        return plans
    layers = cfg.backbone.layers
    bounds = [0, *placement.layer_ids, layers]
    per_segment = np.diff(bounds)
    launches = per_segment * launch_time(cfg, profile, profile.gpu.kernels_per_layer)
    launches[1:] += launch_time(cfg, profile, ENGRAM_KERNELS)  # the Engram module opens every later segment
    hidden = cfg.backbone.hidden_size * DTYPE_BYTES[cfg.backbone.dtype]
    out = []
    for p in plans:
        reduce = 2 * allreduce_time(server, tp, p.tokens * hidden)
        segments = (p.segments - launches) / tp + launches + per_segment * reduce
        out.append(replace(p, segments=segments, compute_time=float(segments.sum())))
    return out


def shard_plans(plans: list[StepPlan], member: int, g: int, ratio: np.ndarray, lookups_factor: int) -> list[StepPlan]:
    """Plans of shard member `member` of g: its slice's share of the group's rows (ratio: [trace step, layer]
    rows of the whole shard group per row of this GPU's step; lookups_factor: the same for lookups)."""
    def share(total: np.ndarray) -> np.ndarray:
        total = np.asarray(total, dtype=np.int64)
        return total // g + (member < total % g)

    out = []
    for s, p in enumerate(plans):
        rows = {f: share(np.rint(getattr(p, f) * ratio[s]).astype(np.int64)) for f in ROW_FIELDS}
        out.append(replace(p, lookups=share(p.lookups * lookups_factor), **rows))
    return out


def server_rows_ratio(cfg: RunConfig, trace: Trace, placement: Placement) -> np.ndarray:
    """[trace step, Engram layer in placement order]: the shard group's rows per row of one GPU's step. Over a
    group the same rows (1); over the server, the distinct rows of all replicas' batches together (a trace of
    the whole server's batch) per distinct row of one replica's."""
    d, order = cfg.deployment, placement.layer_order
    shape = (len(trace.tokens), len(order))
    if d.shard_over == "group" or d.shard_size == 1 or not len(order):
        return np.ones(shape)
    w = cfg.workload
    whole = (cfg.with_workload(sequences=w.sequences * d.gpus) if w.phase == "decode"
             else cfg.with_workload(tokens_per_step=w.tokens_per_step * d.gpus))
    server = build_trace(whole)
    # Another draw of tokens than the replicas': its union may exceed what g replicas' rows could be; cap it there.
    return np.minimum(server.unique_rows / np.maximum(trace.unique_rows, 1), d.gpus)[:, order]


# -- memory -------------------------------------------------------------------------------------------

def gpu_budgets(cfg: RunConfig, topo: Topology, trace: Trace, placement: Placement) -> list[MemoryBudget]:
    """Per GPU: its HBM (weights and KV over tensor parallel, an HBM table over its shard group), its NUMA
    node's host memory (every copy or slice and every GPU's own host bytes on that node), its drive."""
    d, s = cfg.deployment, topo.server
    base = memory_budget(cfg, topo.gpu_view(0), max_kv_tokens=int(np.max(trace.kv_tokens)),
                         max_step_tokens=int(np.max(trace.tokens)), max_unique_rows=int(np.max(trace.unique_rows)),
                         placement=placement)
    g = d.shard_size
    table_host, private = (0, base.table_host_bytes) if cfg.placement.kind == SSD else (base.table_host_bytes, 0)
    nodes = node_host_bytes(table_host, private, [s.node_of(i) for i in topo.gpus], len(s.numa), d)
    tp = d.tensor_parallel
    out = []
    for i in topo.gpus:
        k = s.node_of(i)
        out.append(replace(
            base, weights_bytes=-(-base.weights_bytes // tp),
            kv_cache_bytes=math.ceil(base.kv_cache_bytes * kv_share(cfg.backbone, tp)),
            table_hbm_bytes=-(-base.table_hbm_bytes // g) if cfg.placement.kind == HBM else base.table_hbm_bytes,
            table_host_bytes=nodes[k], host_usable_bytes=host_usable_bytes(s.numa[k].memory_gib),
            table_ssd_bytes=-(-base.table_ssd_bytes // g)))
    return out


def _where(profile: HardwareProfile, topo: Topology, gpu: int) -> str:
    return f"{profile.name} GPU {gpu} (NUMA node {topo.server.node_of(gpu)})"


def capacity_verdict(budgets: list[MemoryBudget], profile: HardwareProfile, topo: Topology) -> str:
    for i, b in enumerate(budgets):
        if b.verdict():
            return f"{b.verdict()} on {_where(profile, topo, i)}"
    return ""


# -- the run --------------------------------------------------------------------------------------------

def simulate_server(cfg: RunConfig, profile: HardwareProfile | None = None, trace: Trace | None = None, *,
                    steps: int | None = None, record_events: bool = False, check_capacity: bool = True,
                    baselines: bool = False) -> ServerResult:
    """Simulate cfg.deployment on the profile's server (a profile without [server]: one GPU whose host is
    [host]). baselines: also the same deployment with placement hbm and none, for summary's overheads."""
    if profile is None:
        profile = load_profile(cfg.profile)
    check_deployment(cfg, profile)
    d = cfg.deployment
    topo = Topology(profile, d)
    placement = placement_for(cfg)
    trace = trace if trace is not None else trace_for(cfg, placement)
    steps = steps or cfg.workload.steps
    budgets = gpu_budgets(cfg, topo, trace, placement)
    verdict = capacity_verdict(budgets, profile, topo)
    if check_capacity and verdict:
        i = next(i for i, b in enumerate(budgets) if b.verdict())
        budgets[i].check(cfg.placement.kind, _where(profile, topo, i))
    sims = _build_sims(cfg, topo, placement, trace, steps, record_events)
    for sim in sims:
        sim.env.process(sim.gpu_stream())
    env = sims[0].env
    env.run()
    results = [collect(sim, b) for sim, b in zip(sims, budgets)]
    net = sims[0].res.net
    pipes, cores = pipe_table(net, env.now, steps), core_table(net, env.now)
    summary = summarise_server(cfg, results, pipes, verdict, cores)
    moved = {name: v for name, v in net.bytes_moved.items() if not is_core_pipe(name)}
    result = ServerResult(cfg, profile, results, summary, pipes, budgets, verdict, moved,
                          sim_events=next(env._eid), cores=cores)
    if baselines:
        summary.update(server_overheads(cfg, profile, result, steps))
    return result


def _build_sims(cfg: RunConfig, topo: Topology, placement: Placement, trace: Trace, steps: int,
                record_events: bool) -> list[ServerGpu]:
    """One ServerGpu per GPU of the deployment, on one environment and one set of pipes."""
    d = cfg.deployment
    env = simpy.Environment()
    net = SaturationTracking(env, topo.pipes())
    g, tp = d.shard_size, d.tensor_parallel
    groups = [Barrier(env, tp) if tp > 1 else None for _ in range(d.replicas)]
    shards = [Barrier(env, g) if g > 1 else None for _ in range(d.gpus // g)]
    ratio = server_rows_ratio(cfg, trace, placement)
    lookups_factor = g if d.shard_over == "server" else 1
    latency = topo.server.nvlink_latency_us * 1e-6
    base_plans: dict[tuple, list[StepPlan]] = {}  # GPUs whose view of the host is the same plan the same
    sims = []
    for i in topo.gpus:
        view = topo.gpu_view(i)
        key = (view.host.cpu_cores, view.host.dram_gbps, view.host.memory_gib)
        if key not in base_plans:
            base_plans[key] = tensor_parallel_plans(cfg, view, topo.server, placement,
                                                    plan_steps(cfg, view, trace, placement))
        plans = base_plans[key]
        exchange = np.zeros((len(plans), len(placement.layer_ids)))
        if g > 1:
            unique = np.array([p.unique_rows for p in plans], dtype=float).reshape(exchange.shape)
            exchange = (g - 1) / g * unique * cfg.engram.row_bytes
            plans = shard_plans(plans, i % g, g, ratio, lookups_factor)
        member = placement_for(cfg)
        if g > 1:  # a zero-copy gather walks the translations of this GPU's slice only
            member.footprints = [f / g for f in member.footprints]
        res = SharedResources(env, view, cfg.placement, record_events, net=net, routes=topo.routes(i))
        sims.append(ServerGpu(cfg, view, plans, steps, member, res, groups[i // tp], shards[i // g], exchange,
                              latency))
    return sims


# -- results --------------------------------------------------------------------------------------------

PIPE_COLUMNS = ["pipe", "capacity_gbps", "bytes", "bytes_per_step", "utilisation", "full"]


def pipe_table(net: SaturationTracking, elapsed_s: float, steps: int) -> pd.DataFrame:
    """Per physical pipe: its capacity, the bytes it carried (in all and per step), its mean utilisation, and the
    share of the run it was full."""
    moved, span = net.bytes_moved, elapsed_s if elapsed_s > 0 else math.inf
    rows = [{"pipe": name, "capacity_gbps": cap / 1e9, "bytes": moved[name], "bytes_per_step": moved[name] / steps,
             "utilisation": moved[name] / (cap * span), "full": net.full_s[name] / span}
            for name, cap in net.capacities.items() if not is_core_pipe(name)]
    return pd.DataFrame(rows, columns=PIPE_COLUMNS)


CORE_COLUMNS = ["pool", "cores", "core_seconds", "utilisation", "full"]


def core_table(net: SaturationTracking, elapsed_s: float) -> pd.DataFrame:
    """Per core pool: its cores, the core-seconds its threads ran, its mean use, and the share of the run every
    core was busy (threads then wait for a share of a core)."""
    span = elapsed_s if elapsed_s > 0 else math.inf
    rows = [{"pool": name, "cores": cap, "core_seconds": net.bytes_moved[name],
             "utilisation": net.bytes_moved[name] / (cap * span), "full": net.full_s[name] / span}
            for name, cap in net.capacities.items() if is_core_pipe(name)]
    return pd.DataFrame(rows, columns=CORE_COLUMNS)


def summarise_server(cfg: RunConfig, results: list[SimResult], pipes: pd.DataFrame, verdict: str,
                     cores: pd.DataFrame) -> dict:
    """Tokens per second of the server (each tensor-parallel group's tokens once) and per GPU, the mean step,
    stall and fetch, the busiest pipe and core pool, and whether the deployment fits."""
    d = cfg.deployment
    leaders = [results[r * d.tensor_parallel].summary for r in range(d.replicas)]
    server = float(sum(s["tokens_per_s"] for s in leaders))
    busiest, top = _busiest(pipes), _busiest(cores)

    def mean(key: str) -> float:  # over every GPU
        return float(np.mean([r.summary[key] for r in results]))

    return {
        "gpus": d.gpus, "tensor_parallel": d.tensor_parallel, "replicas": d.replicas,
        "table": d.table if d.shard_size == 1 else f"shard over {d.shard_size} GPUs ({d.shard_over})",
        "steps": leaders[0]["steps"],
        "tokens_per_s": server, "tokens_per_s_per_gpu": server / d.gpus,
        "step_time_s": float(np.mean([s["step_time_s"] for s in leaders])),
        "exposed_stall_s": mean("exposed_stall_s"), "fetch_time_s": mean("fetch_time_s"),
        "host_bytes_per_step": mean("host_bytes_per_step"),  # per GPU
        "busiest_pipe": busiest["pipe"] if busiest is not None else "",
        "busiest_pipe_full": float(busiest["full"]) if busiest is not None else 0.0,
        "busiest_pipe_use": float(busiest["utilisation"]) if busiest is not None else 0.0,
        "capacity": verdict or "fits",
        **({"busiest_cores": top["pool"], "busiest_cores_use": float(top["utilisation"]),
            "busiest_cores_full": float(top["full"])} if top is not None else {}),
    }


def _busiest(table: pd.DataFrame):
    """The row (pipe or core pool) full for the longest share of the run (ties, e.g. none ever full: the most
    used); None for an empty table."""
    return table.sort_values(["full", "utilisation"], ascending=False).iloc[0] if len(table) else None


def server_overheads(cfg: RunConfig, profile: HardwareProfile, result: ServerResult, steps: int) -> dict:
    """Server throughput lost against the same deployment with the table in HBM (capacity aside) and with no
    Engram."""
    out = {}
    for name, kind in OVERHEAD_BASELINES.items():
        base = result if kind == cfg.placement.kind else simulate_server(
            cfg.with_placement(kind), profile, steps=steps, check_capacity=False)
        out[name] = overhead(result.summary["tokens_per_s"], base.summary["tokens_per_s"])
    return out
