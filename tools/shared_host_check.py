"""The shared-host measurement (real_runs/shared_host.py) against the server DES (sim.server).

A shared-host record holds, per point (worker processes x gather threads each), per step: the fetch makespan
(from the step's start, when every worker starts together as the fetch workers of a server's GPUs would, to
the last worker's rows in staging: hashing, dedup, gathers) and the span of the workers' CPU gathers alone.
The fetch makespan is what a server's GPUs wait for, and it depends only on how much work the cores must do;
the gathers' span also depends on the order the OS runs the workers in (its time slices let the first ones
run their whole fetch before the others start; the DES shares the cores evenly), so it is shown beside. The
DES predicts both: the record's config on `workers` GPUs of a one-node
server whose cores, DRAM and memory are the profile's [host] (the machine the record was measured on), each
GPU a data-parallel replica, the gather and hash threads of every GPU drawn from the node's one core pool.
The per-GPU fetches start together at every step (the Engram rows of step n are fetched while step n runs,
prefill_prefetch_ahead = 0), as the measured workers do at their barrier.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from profiles import HardwareProfile, NumaNode, ServerProfile, load_profile
from sim.server import simulate_server
from vocab.config import RunConfig, from_dict, helper_threads_for
from vocab.errors import UserError
from vocab.records import CPU_GATHER

SCHEMA = "engram-sim.shared-host/1"
COLUMNS = ["workers", "gather_threads", "quiet", "measured_ms", "predicted_ms", "error_pct", "measured_min_ms",
           "measured_max_ms", "predicted_min_ms", "predicted_max_ms", "one_worker_ratio_measured",
           "one_worker_ratio_predicted", "gather_span_measured_ms", "gather_span_predicted_ms", "gather_span_error_pct"]


class SharedHostRecordError(UserError):
    """A shared-host record that cannot be read or compared."""


def is_shared_host_record(path: str | Path) -> bool:
    """Whether the file is a shared-host record (its schema field), without failing on anything else."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(record, dict) and record.get("schema") == SCHEMA


def read_shared_host(path: str | Path) -> dict:
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SharedHostRecordError(str(path), f"cannot be read as a shared-host record ({e})",
                                    "give a record written by engram-sim shared-host") from None
    if record.get("schema") != SCHEMA or not record.get("points"):
        raise SharedHostRecordError(str(path), f"is not a {SCHEMA} record with points",
                                    "give a record written by engram-sim shared-host")
    return record


def one_node_server(profile: HardwareProfile, workers: int) -> HardwareProfile:
    """The profile as a server of `workers` GPUs on one NUMA node that is its [host] (no switches, no NVLink)."""
    h = profile.host
    server = ServerProfile(gpus=workers, numa=[NumaNode(h.cpu_cores, h.dram_gbps, h.memory_gib, list(range(workers)))])
    # The measured workers start hashing as the barrier lets them go: no fetch thread to hand the step to.
    return dataclasses.replace(profile, server=server, host=dataclasses.replace(h, fetch_pickup_us=0.0))


def point_config(cfg: RunConfig, workers: int, gather_threads: int, policy: str = "") -> RunConfig:
    """The record's config as the DES runs one point: every worker a replica, fetches launched with their step,
    its gathers' helper threads sleeping between calls where the record's OpenMP wait policy was passive."""
    return (cfg.with_deployment(gpus=workers)
            .with_placement(gather_threads=gather_threads, helper_threads=helper_threads_for(policy))
            .with_workload(prefill_prefetch_ahead=0, decode_lookahead=0))


def makespans(cfg: RunConfig, profile: HardwareProfile, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Per simulated step, seconds: (the fetch makespan: the GPUs' first fetch start to the last one's rows in
    staging, i.e. its last gather's end; the span of every GPU's CPU gathers, first start to last end)."""
    result = simulate_server(cfg, profile, steps=steps, record_events=True, check_capacity=False)
    starts = pd.concat([r.fetches[["step", "fetch_start_s"]] for r in result.gpus]).groupby("step")["fetch_start_s"]
    events = pd.concat([r.events for r in result.gpus], ignore_index=True)
    gathers = events[events["actor"] == CPU_GATHER].groupby("step").agg(start=("start_s", "min"),
                                                                         end=("end_s", "max"))
    return ((gathers["end"] - starts.min().reindex(gathers.index)).to_numpy(),
            (gathers["end"] - gathers["start"]).to_numpy())


def compare_shared_host(record: dict, profile: HardwareProfile | None = None) -> pd.DataFrame:
    """Per measured point: the median fetch makespan measured and predicted (and their spread), each one's ratio
    to one worker's at the same thread count, and the gathers' span beside."""
    cfg = from_dict(record["config"])
    profile = profile or load_profile(record.get("profile") or cfg.profile)
    rows = []
    for p in record["points"]:
        workers, threads = int(p["workers"]), int(p["gather_threads"])
        measured = p["summary"]["fetch_makespan_s"]
        fetch, gather = makespans(point_config(cfg, workers, threads, str(record.get("omp_wait_policy", ""))),
                                  one_node_server(profile, workers),
                                  int(p["steps"]))
        rows.append({"workers": workers, "gather_threads": threads, "quiet": bool(p.get("quiet", False)),
                     "measured_ms": measured["median"] * 1e3, "predicted_ms": float(np.median(fetch)) * 1e3,
                     "measured_min_ms": measured["min"] * 1e3, "measured_max_ms": measured["max"] * 1e3,
                     "predicted_min_ms": float(fetch.min()) * 1e3, "predicted_max_ms": float(fetch.max()) * 1e3,
                     "gather_span_measured_ms": p["summary"]["gather_makespan_s"]["median"] * 1e3,
                     "gather_span_predicted_ms": float(np.median(gather)) * 1e3})
    df = pd.DataFrame(rows)
    df["error_pct"] = (df["predicted_ms"] / df["measured_ms"] - 1) * 100
    df["gather_span_error_pct"] = (df["gather_span_predicted_ms"] / df["gather_span_measured_ms"] - 1) * 100
    for kind in ("measured", "predicted"):
        one = df[df["workers"] == 1].set_index("gather_threads")[f"{kind}_ms"]
        df[f"one_worker_ratio_{kind}"] = [r[f"{kind}_ms"] / one.get(r["gather_threads"], math.nan)
                                          for _, r in df.iterrows()]
    return df[COLUMNS]


def summarise(df: pd.DataFrame) -> dict:
    """|error| over the points: min, median, max (in %), and how many points were measured on a quiet machine."""
    err = df["error_pct"].abs()
    return {"points": len(df), "quiet_points": int(df["quiet"].sum()), "abs_error_min_pct": float(err.min()),
            "abs_error_median_pct": float(err.median()), "abs_error_max_pct": float(err.max())}
