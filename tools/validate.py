"""The simulator against every published measurement shipped under profiles/reference/.

    engram-sim validate [--sets e2e,fetch,table4] [--profile P] [--out DIR]

Three reference sets:

- e2e: the H100 end-to-end decode experiment (h100-e2e-decode-b512.json), one
  simulation per run of the preset `h100-e2e-dense4b` with the run's placement,
  table size, batch, context and tokens (typed edits, `e2e_config`);
- fetch: the H100 per-step fetch table (h100-step-fetch.json): the zero-copy
  gather of fresh sorted ids (sim.costs.uva_gather_time), the CPU gather alone,
  and the CPU gather plus its H2D copy (sim.placements.HostDMA's closed form);
- table4: the paper's Table 4 (paper-table4.json), Dense-4B and Dense-8B with a
  100B-parameter table on the H800 profile, as serving runs of the presets
  paper-table4-dense4b / -dense8b (tools/table4.py).

Every set gives a wide table (one row per reference run or shape) and long
points (POINT_COLUMNS, one row per measured figure). Errors: for times and
rates, predicted / measured - 1 in %; for overheads (unit "%"), predicted -
measured in percentage points. An overhead is the throughput lost against a
baseline run (vocab.records.overhead: 1 - tokens/s / baseline tokens/s, the
paper's definition), computed the same way from the measured and the predicted
step times; the e2e file's own overhead fields (step / baseline step - 1) are
not used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd
from tqdm import tqdm

from profiles import HardwareProfile, load_profile
from profiles.reference import reference_e2e, reference_step_fetch
from sim import costs
from sim.engine import simulate
from sim.placements import HostDMA
from tools.points import POINT_COLUMNS, TARGET_COLUMNS, abs_stat, join_notes, point, target_rows
from tools.table4 import (
    simulations as table4_simulations,
    table4_notes,
    table4_points,
    table4_predict,
    table4_runs,
    table4_targets,
)
from vocab.config import RunConfig, load_config
from vocab.errors import CapacityError
from vocab.placements import HBM, HOST_DMA, HOST_UVA, NONE
from vocab.records import overhead
from vocab.schema import to_dict
from vocab.units import DTYPE_BYTES, GiB, MiB

SETS = ("e2e", "fetch", "table4")

E2E_PRESET = "h100-e2e-dense4b"
# Steps simulated per e2e run: the trace cycles, and the runs have a fixed context, so the steps are steady.
E2E_STEPS = 20
MODE_PLACEMENT = {"none": NONE, "hbm": HBM, "uva": HOST_UVA, "cpu": HOST_DMA}
TOKEN_SOURCES = {"uniform": {"source": "uniform"}, "zipf": {"source": "zipf_clipped", "zipf_s": 1.1}}
HOST_MODES = ("uva", "cpu")

FETCH_PROFILE = "h100-sxm"
# The harness's CPU gather: Numba on 16 threads (H100.md, "Per-step fetch cost").
FETCH_GATHER_THREADS = 16
FETCH_SERIES = {"uva": "UVA gather, fresh ids", "cpu_gather": "CPU gather", "cpu_path": "CPU gather + H2D"}
FETCH_MEASURED = {"uva": "uva_s", "cpu_gather": "cpu_gather_s", "cpu_path": "cpu_path_s"}

@dataclass
class Validation:
    """What `validate` found: per set a wide table and notes; all points; summary figures; targets."""
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)
    points: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=POINT_COLUMNS))
    summary: dict = field(default_factory=dict)
    targets: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=TARGET_COLUMNS))


def rel_err_pct(predicted: float, measured: float) -> float:
    return (predicted / measured - 1.0) * 100.0 if measured else math.nan


def loss_pct(step_s: float, baseline_step_s: float) -> float:
    """Throughput lost against the baseline, in %, from step times at the same batch."""
    return overhead(1.0 / step_s, 1.0 / baseline_step_s) * 100.0


def simulate_summary(cfg: RunConfig, profile: HardwareProfile) -> tuple[dict, str]:
    """(summary, note): simulated with the capacity check; only if the run does not fit, without it (noted)."""
    try:
        return simulate(cfg, profile).summary, ""
    except CapacityError as e:
        return simulate(cfg, profile, check_capacity=False).summary, f"simulated with check_capacity=False: {e.problem}"


# -- e2e: the H100 end-to-end decode experiment -------------------------------------------------------

def e2e_runs(reference: dict | None = None) -> tuple[list[dict], list[dict]]:
    """(runs to predict, drift checks): the repeated baseline ("none_again") is a drift check, not a run."""
    runs = (reference or reference_e2e())["runs"]
    return [r for r in runs if r["mode"] in MODE_PLACEMENT], [r for r in runs if r["mode"] not in MODE_PLACEMENT]


def e2e_label(run: dict) -> str:
    if run["mode"] == "none":
        return "none"
    return f"{run['mode']} {run['table_gib']:g} GiB {run['tokens']}"


def e2e_config(base: RunConfig, run: dict) -> RunConfig:
    """The preset edited to what one e2e run ran (placement, table, batch, context, tokens; E2E_STEPS steps)."""
    cfg = base.with_placement(MODE_PLACEMENT[run["mode"]])
    if run.get("table_gib") is not None:  # none runs have no table; the preset's size stands (unused)
        cfg = cfg.with_table_gib(run["table_gib"])
    tokens = {**to_dict(cfg.workload.tokens), **TOKEN_SOURCES[run.get("tokens", "uniform")]}
    length = int(run.get("L", cfg.workload.lengths.high))
    lengths = {**to_dict(cfg.workload.lengths), "dist": "fixed", "low": length, "high": length, "grow": False}
    return cfg.with_workload(sequences=int(run["B"]), tokens=tokens, lengths=lengths, steps=E2E_STEPS)


def e2e_predict(runs: list[dict], profile_name: str | None = None, bar=None) -> pd.DataFrame:
    """One row per run: measured and predicted step time and tokens/s, and their errors."""
    base = load_config(E2E_PRESET)
    if profile_name:
        base = base.with_profile(profile_name)
    profile = load_profile(base.profile)
    rows = []
    for run in runs:
        summary, note = simulate_summary(e2e_config(base, run), profile)
        rows.append({
            "run": e2e_label(run), "mode": run["mode"], "table_gib": run.get("table_gib", math.nan),
            "tokens": run.get("tokens", ""), "B": int(run["B"]),
            "measured_step_ms": run["step_s"] * 1e3, "predicted_step_ms": summary["step_time_s"] * 1e3,
            "measured_tok_s": run["tok_s"], "predicted_tok_s": summary["tokens_per_s"], "note": note})
        if bar is not None:
            bar.update()
    df = pd.DataFrame(rows)
    df["step_err_pct"] = [rel_err_pct(p, m) for p, m in zip(df.predicted_step_ms, df.measured_step_ms)]
    df["tok_s_err_pct"] = [rel_err_pct(p, m) for p, m in zip(df.predicted_tok_s, df.measured_tok_s)]
    return e2e_overheads(df)


def e2e_overheads(df: pd.DataFrame) -> pd.DataFrame:
    """Overheads vs none (every Engram run) and vs hbm (host runs; the hbm run with the same tokens, 4 GiB,
    the only HBM size measured), measured and predicted alike, from step times."""
    df = df.copy()
    none = df[df["mode"] == "none"]
    hbm = df[df["mode"] == "hbm"].set_index("tokens")
    for side in ("measured", "predicted"):
        step = df[f"{side}_step_ms"]
        base_none = float(none[f"{side}_step_ms"].iloc[0]) if len(none) else math.nan
        df[f"{side}_vs_none_pct"] = [loss_pct(s, base_none) if m != "none" else math.nan
                                     for s, m in zip(step, df["mode"])]
        base_hbm = [float(hbm.loc[t, f"{side}_step_ms"]) if m in HOST_MODES and t in hbm.index else math.nan
                    for m, t in zip(df["mode"], df["tokens"])]
        df[f"{side}_vs_hbm_pct"] = [loss_pct(s, b) for s, b in zip(step, base_hbm)]
    df["vs_none_err_pp"] = df["predicted_vs_none_pct"] - df["measured_vs_none_pct"]
    df["vs_hbm_err_pp"] = df["predicted_vs_hbm_pct"] - df["measured_vs_hbm_pct"]
    df["hbm_baseline"] = [f"hbm {hbm.loc[t, 'table_gib']:g} GiB {t}" if m in HOST_MODES and t in hbm.index
                          else "" for m, t in zip(df["mode"], df["tokens"])]
    return df


def e2e_notes(df: pd.DataFrame, drift_runs: list[dict], profile_name: str) -> list[str]:
    notes = [f"profile {profile_name}; preset {E2E_PRESET}, {E2E_STEPS} steps simulated per run",
             "overhead = throughput lost against the baseline run (1 - tok/s / baseline tok/s), measured and "
             "predicted from step times; vs hbm: the hbm run with the same tokens (4 GiB, the only HBM size "
             "measured); vs none: the backbone alone"]
    notes += [drift_note(r) for r in drift_runs]
    notes += [f"{run}: {note}" for run, note in zip(df["run"], df["note"]) if note]
    return notes


def drift_note(run: dict) -> str:
    """The repeated baseline: how far the machine drifted over the experiment (not predicted)."""
    return (f"drift check '{run['mode']}' (not predicted): the baseline repeated at the end took "
            f"{run['step_s'] * 1e3:.3f} ms, {run.get('drift', math.nan) * 100:+.2f} % against the first")


def e2e_summary(df: pd.DataFrame) -> dict:
    host, hbm = df[df["mode"].isin(HOST_MODES)], df[df["mode"] == "hbm"]
    return {
        "runs": int(len(df)),
        "throughput_abs_err_pct_median": abs_stat(df["tok_s_err_pct"], "median"),
        "throughput_abs_err_pct_max": abs_stat(df["tok_s_err_pct"], "max"),
        "vs_hbm_abs_err_pp_max": abs_stat(host["vs_hbm_err_pp"], "max"),
        "vs_hbm_within_1pp": f"{int((host['vs_hbm_err_pp'].abs() <= 1.0).sum())}/{len(host)}",
        "hbm_vs_none_abs_err_pp_max": abs_stat(hbm["vs_none_err_pp"], "max"),
    }


def e2e_targets(df: pd.DataFrame) -> pd.DataFrame:
    """The e2e set's targets, each with its figure and pass/FAIL (a missing figure fails)."""
    s = e2e_summary(df)
    rows = [
        ("throughput error, median |error|", s["throughput_abs_err_pct_median"], 2.0, "%"),
        ("throughput error, max |error|", s["throughput_abs_err_pct_max"], 4.0, "%"),
        (f"overhead vs hbm at every host point (uva, cpu), max |error| ({s['vs_hbm_within_1pp']} within)",
         s["vs_hbm_abs_err_pp_max"], 1.0, "pp"),
        ("hbm overhead vs none, max |error|", s["hbm_vs_none_abs_err_pp_max"], 0.5, "pp"),
    ]
    return target_rows("e2e", rows)


def e2e_points(df: pd.DataFrame, drift_note: str = "") -> pd.DataFrame:
    rows = []
    for r in df.itertuples():
        note = join_notes(r.note, drift_note if r.mode == "none" else "")
        rows.append(point("e2e", f"{r.run}: step time", r.measured_step_ms, r.predicted_step_ms,
                           r.step_err_pct, "ms", "", note))
        rows.append(point("e2e", f"{r.run}: tokens/s", r.measured_tok_s, r.predicted_tok_s, r.tok_s_err_pct,
                           "tok/s", "", note))
        if r.mode != "none":
            rows.append(point("e2e", f"{r.run}: overhead vs none", r.measured_vs_none_pct,
                               r.predicted_vs_none_pct, r.vs_none_err_pp, "%", "none", note))
        if r.mode in HOST_MODES:
            rows.append(point("e2e", f"{r.run}: overhead vs hbm", r.measured_vs_hbm_pct, r.predicted_vs_hbm_pct,
                               r.vs_hbm_err_pp, "%", r.hbm_baseline, note))
    return pd.DataFrame(rows, columns=POINT_COLUMNS)


# -- fetch: the H100 per-step fetch table -------------------------------------------------------------

def _dma_for(base: RunConfig, row_bytes: int, rows: int) -> HostDMA:
    """host_dma with `row_bytes` rows, the harness's threads, and one staging chunk for the whole step
    (the harness gathers every row, then makes one copy)."""
    e = base.engram
    d_mem = row_bytes // DTYPE_BYTES[e.table_dtype] * e.tables_per_layer
    cfg = base.with_engram(d_mem=d_mem).with_placement(
        HOST_DMA, gather_threads=FETCH_GATHER_THREADS, staging_chunk_mib=max(1.0, rows * row_bytes / MiB))
    assert cfg.engram.row_bytes == row_bytes, (row_bytes, cfg.engram.row_bytes)
    return HostDMA(cfg)


def fetch_predict(shapes: list[dict], profile_name: str = FETCH_PROFILE) -> pd.DataFrame:
    """One row per shape (table GiB, row bytes, rows per step): measured and predicted seconds per series."""
    profile, base = load_profile(profile_name), load_config(E2E_PRESET)
    rows = []
    for s in shapes:
        rb, n = int(s["row_bytes"]), int(s["rows"])
        dma = _dma_for(base, rb, n)
        # fixed + body; the benchmark runs its gathers back to back (nothing evicts the page table from L2)
        predicted = {"uva": sum(costs.uva_gather_time(profile, n, rb, s["gib"] * GiB, work_between=False)),
                     "cpu_gather": dma.gather_alone(profile, n * rb), "cpu_path": dma.rows_alone(profile, None, 0, n)}
        row = {"table_gib": s["gib"], "row_bytes": rb, "rows": n}
        for key, column in FETCH_MEASURED.items():
            row[f"measured_{key}_us"] = s[column] * 1e6
            row[f"predicted_{key}_us"] = predicted[key] * 1e6
            row[f"{key}_err_pct"] = rel_err_pct(predicted[key], s[column])
        rows.append(row)
    return pd.DataFrame(rows)


def fetch_summary(df: pd.DataFrame) -> dict:
    out = {"shapes": int(len(df))}
    for key in FETCH_SERIES:
        out[f"{key}_abs_err_pct_median"] = abs_stat(df[f"{key}_err_pct"], "median")
        out[f"{key}_abs_err_pct_max"] = abs_stat(df[f"{key}_err_pct"], "max")
    return out


def fetch_points(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for r in df.to_dict("records"):
        shape = f"{r['table_gib']:g} GiB, {r['row_bytes']} B x {r['rows']}"
        for key, what in FETCH_SERIES.items():
            rows.append(point("fetch", f"{what}: {shape}", r[f"measured_{key}_us"], r[f"predicted_{key}_us"],
                               r[f"{key}_err_pct"], "us", "", ""))
    return pd.DataFrame(rows, columns=POINT_COLUMNS)


def fetch_notes(profile_name: str = FETCH_PROFILE) -> list[str]:
    return [f"profile {profile_name}; UVA: sim.costs.uva_gather_time (fixed + body, no warm translation, "
            "back to back: work_between=False); "
            f"CPU: host_dma's closed form on {FETCH_GATHER_THREADS} threads, one staging chunk per step "
            "(+ H2D: the gather, then one copy); the CPU columns are noisy (H100.md)"]


# -- all sets -----------------------------------------------------------------------------------------------

def simulations(sets: list[str]) -> int:
    """How many simulations `validate` runs for these sets (the progress bar's length)."""
    n = len(e2e_runs()[0]) if "e2e" in sets else 0
    if "table4" in sets:
        n += table4_simulations(table4_runs())
    return n


def validate(sets: list[str] | None = None, e2e_profile: str | None = None, progress: bool = True) -> Validation:
    """Predict every reference point of `sets` (default: all); progress bar on a terminal only."""
    sets = sets or list(SETS)
    out = Validation()
    points = []
    with tqdm(total=simulations(sets), desc="validate", unit="run", disable=None if progress else True) as bar:
        if "e2e" in sets:
            runs, drift = e2e_runs()
            df = e2e_predict(runs, e2e_profile, bar)
            out.tables["e2e"], out.summary["e2e"], out.targets = df, e2e_summary(df), e2e_targets(df)
            out.notes["e2e"] = e2e_notes(df, drift, e2e_profile or load_config(E2E_PRESET).profile)
            points.append(e2e_points(df, join_notes(*(drift_note(r) for r in drift))))
        if "fetch" in sets:
            df = fetch_predict(reference_step_fetch())
            out.tables["fetch"], out.notes["fetch"], out.summary["fetch"] = df, fetch_notes(), fetch_summary(df)
            points.append(fetch_points(df))
        if "table4" in sets:
            df = table4_predict(table4_runs(), bar)
            out.tables["table4"], out.notes["table4"] = df, table4_notes(df)
            out.summary["table4"] = {"points": int(len(df))}
            out.targets = pd.concat([out.targets, table4_targets(df)], ignore_index=True)
            points.append(table4_points(df))
    out.points = pd.concat(points, ignore_index=True) if points else out.points
    return out
