"""Sweeps: one configuration across table sizes, placements and phases.

Each (phase, table size) point builds one token trace and simulates every
placement on it (ssd, whose caches replay their own stream, on its own), plus the same run with the table in HBM (capacity ignored),
the baseline for `overhead_vs_hbm`, and the backbone alone (placement none),
the baseline for `overhead_vs_none` (the paper's). Points run in worker processes
(tools.executor: a local pool, or Ray tasks), each as one Parquet shard.
"""

from __future__ import annotations

import os
import time

import pandas as pd
from tqdm import tqdm

from profiles import HardwareProfile, load_profile
from sim.engine import simulate, trace_for
from tools.executor import LOCAL, run_tasks
from vocab.config import RunConfig
from vocab.errors import ConfigError
from vocab.memory import host_usable_bytes
from vocab.placements import ENGRAM_PLACEMENTS, HBM, HBM_CACHE, HBM_CACHED, SSD
from vocab.records import overhead, window_use
from vocab.tables import OVERHEAD_BASELINES, SWEEP_COLUMNS
from vocab.units import GiB

DEFAULT_CACHE_GIB = 8.0
# ssd's DRAM cache when the config gives none: this share of the host memory left to the serving process.
DEFAULT_DRAM_CACHE_SHARE = 0.5


def default_dram_cache_gib(profile: HardwareProfile) -> float:
    """The ssd placement's DRAM cache in a sweep whose config sets none: half the host's usable memory."""
    return DEFAULT_DRAM_CACHE_SHARE * host_usable_bytes(profile.host.memory_gib) / GiB


def point_config(cfg: RunConfig, table_gib: float, placement: str, phase: str, cache_gib: float,
                 dram_cache_gib: float | None = None) -> RunConfig:
    options = {}
    if placement == HBM_CACHE and cfg.placement.cache_gib is None and cfg.placement.cache_fraction is None:
        options["cache_gib"] = cache_gib
    if placement == SSD and cfg.placement.dram_cache_gib is None and dram_cache_gib:
        options["dram_cache_gib"] = dram_cache_gib
    return cfg.with_table_gib(table_gib).with_phase(phase).with_placement(placement, **options)


def tier_columns(result, trace) -> dict:
    """Rows per step served by each tier (HBM, host DRAM, the drive), drive reads, and the caches' warm-up."""
    f = result.fetches
    per_step = f.groupby("step")[["unique_rows", "host_rows", "cache_hits", "dram_hits", "ssd_reads"]].sum().mean()
    kind = result.config.placement.kind
    from_host = per_step["host_rows"]
    dram = per_step["dram_hits"] if kind == SSD else from_host
    drive = from_host - per_step["dram_hits"] if kind == SSD else 0.0
    tiers = trace.tiers if kind in HBM_CACHED else None
    return {
        "rows_per_step": per_step["unique_rows"],
        "rows_hbm_per_step": per_step["unique_rows"] - from_host,
        "rows_dram_per_step": dram,
        "rows_drive_per_step": drive,
        "drive_reads_per_step": per_step["ssd_reads"],
        "cache_warmup_steps": max(t.warmup_steps for t in tiers) if tiers else 0,
        # False: a cache too large to fill within the replay; its hit rate is then a lower bound.
        "cache_filled": all(t.filled for t in tiers) if tiers else True,
    }


def run_point(cfg: RunConfig, profile: HardwareProfile, table_gib: float, phase: str, placements: list[str],
              steps: int, threshold: float, cache_gib: float,
              dram_cache_gib: float | None = None) -> tuple[list[dict], float]:
    """Rows for one (table size, phase), and the seconds spent in the event simulation itself."""
    sim_s = 0.0

    base = point_config(cfg, table_gib, HBM, phase, cache_gib)
    # One hashing pass serves every placement but ssd: the cache trace holds all the fields the
    # others read, and they ignore its cache hits. ssd replays its own caches.
    trace = trace_for(point_config(cfg, table_gib, HBM_CACHE, phase, cache_gib) if HBM_CACHE in placements else base)
    t0 = time.perf_counter()
    # The baselines, once per point: the table in HBM, and the backbone alone (cheap: no fetch side).
    baselines = {kind: simulate(point_config(cfg, table_gib, kind, phase, cache_gib), profile, trace, steps=steps,
                                check_capacity=False) for kind in OVERHEAD_BASELINES.values()}
    sim_s += time.perf_counter() - t0
    rows = []
    for placement in placements:
        pcfg = point_config(cfg, table_gib, placement, phase, cache_gib, dram_cache_gib)
        own = trace_for(pcfg) if placement == SSD else trace
        if placement in baselines:
            result = baselines[placement]
        else:
            t0 = time.perf_counter()
            result = simulate(pcfg, profile, own, steps=steps, check_capacity=False)
            sim_s += time.perf_counter() - t0
        s = result.summary
        fits = result.memory.fits_hbm and result.memory.fits_host and result.memory.fits_ssd
        losses = {m: overhead(s["tokens_per_s"], baselines[kind].summary["tokens_per_s"])
                  for m, kind in OVERHEAD_BASELINES.items()}
        loss = losses["overhead_vs_hbm"]
        rows.append({
            "table_bytes": pcfg.engram.total_table_bytes,
            "table_gib": pcfg.engram.total_table_bytes / GiB,
            "table_gib_asked": table_gib,     # the real table is a little larger (prime row counts)
            "placement": placement,
            "phase": phase,
            "step_time_s": s["step_time_s"],
            "tokens_per_s": s["tokens_per_s"],
            "exposed_stall_s": s["exposed_stall_s"],
            "fetch_time_s": s["fetch_time_s"],
            "overlap_fraction": s["overlap_fraction"],
            **losses,
            "host_bytes_per_step": s["host_bytes_per_step"],
            "hbm_bytes_per_step": s["hbm_bytes_per_step"],
            "link_utilisation": s["link_utilisation"],
            "window_use": window_use(result.fetches),
            "fits_hbm": result.memory.fits_hbm,
            "fits_host": result.memory.fits_host,
            "fits_ssd": result.memory.fits_ssd,
            # A configuration that does not fit the machine is never counted as hidden.
            "fits": fits,
            "capacity": result.memory.verdict(),
            "hidden": bool(loss <= threshold) and fits,
            "dram_cache_gib": pcfg.placement.dram_cache_gib or 0.0,
            **tier_columns(result, own),
            "steps": s["steps"],
            "sim_events": result.sim_events,
            "replayed_steps": result.replayed_steps,
        })
    return rows, sim_s


def _point_table(args) -> pd.DataFrame:
    """One (table size, phase) as a table, with the seconds spent in the event simulation in its attrs."""
    rows, sim_s = run_point(*args)
    df = pd.DataFrame(rows, columns=SWEEP_COLUMNS)
    df.attrs["simulate_s"] = sim_s
    return df


def sweep(cfg: RunConfig, table_gib: list[float], placements: list[str] | None = None,
          phases: list[str] | None = None, *, profile: HardwareProfile | None = None, steps: int | None = None,
          threshold: float = 0.01, cache_gib: float = DEFAULT_CACHE_GIB, dram_cache_gib: float | None = None,
          jobs: int | None = None, progress: bool = True, executor: str = LOCAL, address: str | None = None,
          shard_dir: str | os.PathLike | None = None, resume: bool = False) -> pd.DataFrame:
    """Simulate every (table size, placement, phase); one row each (SWEEP_COLUMNS).

    Each (phase, table size) is one task of tools.executor.run_tasks (executor, address, jobs); with
    shard_dir each lands there as a Parquet shard, and resume reuses the shards already there."""
    profile = profile or load_profile(cfg.profile)
    if placements is None:  # every placement the machine has: ssd only where the profile describes a drive
        placements = [k for k in ENGRAM_PLACEMENTS if k != SSD or profile.ssd is not None]
    placements = list(placements)
    dram_cache_gib = default_dram_cache_gib(profile) if dram_cache_gib is None else dram_cache_gib
    phases = list(phases or [cfg.workload.phase])
    if "serve" in phases:
        raise ConfigError("workload.phase", "a sweep steps a steady batch (decode or prefill); a serving run "
                          "(serve) is simulated one configuration at a time", "use `engram-sim simulate` for "
                          "serving, or pass --phases decode,prefill")
    steps = steps or cfg.workload.steps
    # Heaviest points first (prefill, big tables), so that workers finish together.
    order = sorted(((ph, t) for ph in phases for t in table_gib), key=lambda p: (p[0] != "prefill", -p[1]))
    tasks = [(cfg, profile, t, ph, placements, steps, threshold, cache_gib, dram_cache_gib) for ph, t in order]
    bar = tqdm(total=len(tasks) * len(placements), desc="sweep", unit="run", disable=not progress)
    resumed = []

    def arrived(index: int, table: pd.DataFrame, from_shard: bool) -> None:
        bar.update(len(table))
        if from_shard:
            resumed.append(index)

    try:
        tables = run_tasks(_point_table, tasks, executor=executor, address=address, jobs=jobs,
                           shard_dir=shard_dir, resume=resume, on_result=arrived)
    finally:
        bar.close()
    df = pd.concat(tables, ignore_index=True)[SWEEP_COLUMNS]
    simulate_s = sum(t.attrs.get("simulate_s", 0.0) for t in tables)
    df = df.sort_values(["phase", "placement", "table_bytes"], kind="stable").reset_index(drop=True)
    # CPU seconds inside the event simulation (kept out of the table since timings vary run to run), and how
    # many of the (phase, table size) points were read back from shard_dir rather than simulated.
    df.attrs = {"simulate_s": simulate_s, "points": len(tasks), "resumed_points": len(resumed)}
    return df
