"""Predicted versus measured: simulate what a measured run ran, and line the two up.

    engram-sim compare RECORDS... [--profile P] [--out DIR] [--trace]

`compare` reads measured run records (written by `engram-sim run`), rebuilds
each record's configuration (vocab.config.from_dict), simulates exactly that
configuration (the recorded number of steps, the same placement, the same
workload seed, so the same token trace from workloads.trace; capacity not
checked) and also the same run with the table in HBM (the predicted
`overhead_vs_hbm`). The measured overhead comes from a measured `hbm` record of
the same configuration (sections other than placement), phase, step count and
machine among the inputs, else NaN.

The hardware profile: --profile if given, else the profile whose GPU matches
the record's machine (the config's own profile first, then the shipped ones;
by full GPU name, then by model, e.g. "H100" -> h100-sxm), else the config's
profile. A CPU run has no hardware profile: it is predicted with the config's
profile and flagged `profile_matched = False`, so its errors measure how far
a CPU is from the profiled GPU, not the model.

Errors are relative, predicted / measured - 1; the overhead error is in
percentage points (predicted - measured) * 100.

A backbone-only record (placement `none`) is compared like any other: the
simulator runs the backbone alone too.

A serving record (workload.phase = "serve", its tables in `extra`) is compared
with sim.serve.simulate_serving of its config on the same profile: one row per
SERVING_METRICS entry (output tokens/s, elapsed, steps, prefill steps, TTFT and
TPOT percentiles), measured, predicted and relative error side by side, in the
summary's "_serving" table (compare.csv keeps the steady-state rows).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from profiles import load_profile, shipped_names
from reports.trace import write_chrome_trace
from sim.engine import simulate
from sim.serve import simulate_serving
from vocab.config import from_dict, helper_threads_for
from vocab.errors import UserError
from vocab.files import staged_dir
from vocab.placements import HBM, NONE
from vocab.records import overhead, read_record
from vocab.serving import serving_tables
from vocab.tables import (
    COMPARE_COLUMNS,
    EXTRA_METRICS,
    METRICS,
    OVERHEAD_BASELINES,
    TIMELINE_COLUMNS,
    summarise_errors,
    write_parquet,
)
from vocab.units import GiB

# A serving record's figures compared (vocab.serving.serving_summary keys), and its table's columns.
SERVING_METRICS = ("output_tokens_per_s", "elapsed_s", "steps", "prefill_steps", "ttft_p50_s", "ttft_p90_s",
                   "tpot_p50_s", "tpot_p90_s")
SERVING_COLUMNS = ["record", "config", "placement", "device", "machine", "profile", "profile_matched", "metric",
                   "measured", "predicted", "rel_err", "note"]


class CompareError(UserError):
    """Nothing could be compared."""


class _Skip(Exception):
    """A record that cannot be compared; the message says why."""


# -- profile matching ---------------------------------------------------------------------------

_MODEL = re.compile(r"\b([A-Z]{1,2}\d{2,3}[A-Z]?)\b")


def _model(name: str) -> str | None:
    """The GPU model token of a device name: 'NVIDIA H100 80GB HBM3' -> 'H100', 'NVIDIA GH200 ...' -> 'GH200'."""
    m = _MODEL.search(name.upper())
    return m.group(1) if m else None


def machine_gpu(record) -> str | None:
    """The GPU a record ran on (None for a CPU run)."""
    device = str(record.extra.get("device") or record.machine.get("device") or "")
    if device.startswith("cpu"):
        return None
    name = record.machine.get("gpu_name") or record.machine.get("gpu_name_nvml")
    return str(name) if name else None


def match_profile(record, config_profile: str) -> tuple[str, bool, str]:
    """(profile name or path, matched to the record's machine?, note)."""
    gpu = machine_gpu(record)
    if gpu is None:
        return (config_profile, False,
                f"CPU run: no hardware profile describes this machine; predicted with the config's profile "
                f"{config_profile}, so the error is CPU versus that GPU, not the model's error")
    candidates = []
    for name in dict.fromkeys([config_profile, *shipped_names()]):
        try:
            candidates.append((name, load_profile(name).gpu.name))
        except UserError:
            continue
    for name, gpu_name in candidates:
        if gpu_name.strip().lower() == gpu.strip().lower():
            return name, True, ""
    model = _model(gpu)
    if model:
        for name, gpu_name in candidates:
            if _model(gpu_name) == model:
                return name, True, f"profile {name} matched by GPU model {model} ({gpu!r} vs {gpu_name!r})"
    return (config_profile, False,
            f"no profile matches GPU {gpu!r}; predicted with the config's profile {config_profile}")


# -- one record -----------------------------------------------------------------------------------

def _baseline_key(record) -> str:
    """What must agree for a measured hbm record to be another record's baseline."""
    cfg = {k: v for k, v in record.config.items() if k not in ("name", "profile", "placement")}
    machine = machine_gpu(record) or f"cpu:{record.machine.get('cpu_model')}"
    return json.dumps([cfg, len(record.steps), machine], sort_keys=True, default=str)


def _rel(pred: float, meas: float) -> float:
    if pred is None or meas is None or not (math.isfinite(pred) and math.isfinite(meas)) or meas == 0:
        return math.nan
    return pred / meas - 1.0


def _load(path: Path):
    """(record, RunConfig) of a measured record, or _Skip with the reason."""
    try:
        record = read_record(path)
    except UserError as e:
        raise _Skip(_without_path(e, path)) from None
    except (ValueError, TypeError, AttributeError) as e:  # JSON that is not an object, ragged columns, ...
        raise _Skip(f"not a run record ({type(e).__name__}: {e})") from None
    if record.kind != "measured":
        raise _Skip(f"a {record.kind!r} record, not a measured one; compare takes records from `engram-sim run`")
    if record.steps.empty:
        raise _Skip("the record has no steps")
    try:
        cfg = from_dict(record.config)
    except UserError as e:
        raise _Skip(f"its config does not load ({e})") from None
    except (TypeError, AttributeError, KeyError) as e:
        raise _Skip(f"its config does not load ({type(e).__name__}: {e})") from None
    return record, cfg


def _without_path(e: UserError, path: Path) -> str:
    """The error's field and problem, less the record's path (the skip list names it already)."""
    field = e.field.removeprefix(f"{path}: ") if e.field != str(path) else ""
    return f"{field}: {e.problem}" if field else e.problem


def _chosen_step(n: int) -> int:
    return n // 2


def _one_step(source: str, name: str, step: int, events: pd.DataFrame, steps: pd.DataFrame) -> pd.DataFrame:
    """The events of `step`, times from that step's start."""
    if events is None or events.empty:
        return pd.DataFrame(columns=TIMELINE_COLUMNS)
    start = float(steps.loc[steps["step"] == step, "start_s"].iloc[0])
    ev = events[events["step"] == step]
    return pd.DataFrame({
        "source": source, "record": name, "step": step, "actor": ev["actor"].astype(str),
        "name": ev["name"].astype(str), "start_s": ev["start_s"].astype(float) - start,
        "end_s": ev["end_s"].astype(float) - start,
    }, columns=TIMELINE_COLUMNS)


def compare_one(path: Path, record, cfg, profile: str | None = None) -> tuple[dict, pd.DataFrame, object]:
    """(table row, one-step timelines, the predicted SimResult) for a loaded measured record."""
    n = len(record.steps)
    cfg = cfg.with_steps(n)
    if record.extra.get("omp_wait_policy"):  # the run's threads slept between calls, or spun
        cfg = cfg.with_placement(helper_threads=helper_threads_for(record.extra["omp_wait_policy"]))
    prof, matched, note = _profile_for(record, cfg, profile)
    predicted = simulate(cfg, prof, steps=n, record_events=True, check_capacity=False)
    baselines = {kind: predicted if cfg.placement.kind == kind else
                 simulate(cfg.with_placement(kind), prof, steps=n, check_capacity=False) for kind in (HBM, NONE)}
    ps, ms = predicted.summary, record.summary
    pred = {m: float(ps[m]) for m in METRICS if m not in OVERHEAD_BASELINES}
    meas = {m: float(ms.get(m, math.nan)) for m in METRICS if m not in OVERHEAD_BASELINES}
    for m, kind in OVERHEAD_BASELINES.items():
        pred[m] = overhead(ps["tokens_per_s"], baselines[kind].summary["tokens_per_s"])
        meas[m] = math.nan  # filled in once every record is read
    gpu = machine_gpu(record)
    row = {
        "record": path.name, "config": cfg.name, "placement": cfg.placement.kind, "phase": cfg.workload.phase,
        "table_bytes": int(cfg.engram.total_table_bytes), "table_gib": cfg.engram.total_table_bytes / GiB,
        "steps": n, "device": str(record.extra.get("device") or record.machine.get("device") or ""),
        "machine": gpu or str(record.machine.get("cpu_model") or "unknown CPU"),
        # a profile given by path is named by it: the facts reload each profile by this
        "profile": profile if profile and prof.name not in shipped_names() else prof.name,
        "profile_matched": bool(matched), "note": note,
    }
    for m in METRICS:
        row[f"predicted_{m}"] = pred[m]
        row[f"measured_{m}"] = meas[m]
    for m in EXTRA_METRICS:
        row[f"predicted_{m}"] = float(ps.get(m, math.nan))
        row[f"measured_{m}"] = float(ms.get(m, math.nan))
    step = _chosen_step(n)
    timeline = pd.concat([
        _one_step("predicted", path.name, step, predicted.events, predicted.steps),
        _one_step("measured", path.name, step, record.events, record.steps),
    ], ignore_index=True)
    return row, timeline, predicted


def _profile_for(record, cfg, profile: str | None):
    """(HardwareProfile, matched to the record's machine?, note): --profile if given, else match_profile. A CPU
    run is matched by a profile whose device is that CPU (gpu.name = the record's cpu_model)."""
    if profile:
        profile_name, matched, note = profile, True, f"profile {profile} given with --profile"
        if machine_gpu(record) is None:
            matched, note = False, (f"CPU run: no hardware profile describes this machine; predicted with "
                                    f"{profile} (--profile), so the error is CPU versus that GPU")
    else:
        profile_name, matched, note = match_profile(record, cfg.profile)
    prof = load_profile(profile_name)
    cpu = record.machine.get("cpu_model")
    if machine_gpu(record) is None and cpu and prof.gpu.name.strip() == str(cpu).strip():
        matched, note = True, f"profile {prof.name} describes this CPU as the device"
    return prof, matched, note


def compare_serving(path: Path, record, cfg, profile: str | None = None) -> pd.DataFrame:
    """SERVING_COLUMNS rows, one per SERVING_METRICS entry, for a measured serving record."""
    _, _, measured = serving_tables(record.extra)
    prof, matched, note = _profile_for(record, cfg, profile)
    predicted = simulate_serving(cfg, prof, check_capacity=False).serving
    gpu = machine_gpu(record)
    head = {"record": path.name, "config": cfg.name, "placement": cfg.placement.kind,
            "device": str(record.extra.get("device") or ""),
            "machine": gpu or str(record.machine.get("cpu_model") or "unknown CPU"), "profile": prof.name,
            "profile_matched": bool(matched)}
    rows = [{**head, "metric": m, "measured": float(measured.get(m, math.nan)), "predicted": float(predicted[m]),
             "rel_err": _rel(float(predicted[m]), float(measured.get(m, math.nan))), "note": note}
            for m in SERVING_METRICS]
    return pd.DataFrame(rows, columns=SERVING_COLUMNS)


def _errors(df: pd.DataFrame) -> pd.DataFrame:
    for m in METRICS:
        df[f"rel_err_{m}"] = [_rel(p, q) for p, q in zip(df[f"predicted_{m}"], df[f"measured_{m}"])]
    df["overhead_error_pp"] = (df["predicted_overhead_vs_hbm"] - df["measured_overhead_vs_hbm"]) * 100
    df["overhead_vs_none_error_pp"] = (df["predicted_overhead_vs_none"] - df["measured_overhead_vs_none"]) * 100
    return df


def compare_records(paths, profile: str | None = None, *, keep_results: bool = False):
    """Compare measured records with their simulation.

    Returns (table, summary, timelines, skipped): the table has COMPARE_COLUMNS, one row per compared
    record; summary is summarise_errors(table) plus "skipped"; timelines has TIMELINE_COLUMNS (one
    step in the middle of each run, predicted and measured, from the step's start); skipped is a list
    of (path, reason). With keep_results, summary["_runs"] maps a record's path to (record, SimResult).
    """
    rows, timelines, skipped, runs = [], [], [], {}
    loaded = []
    for p in map(Path, paths):
        try:
            loaded.append((p, *_load(p)))
        except _Skip as e:
            skipped.append((str(p), str(e)))
    if profile:  # fail once, as a one-line error, on a bad --profile
        load_profile(profile)
    # Measured baselines: an hbm and a none record of the same configuration, phase, steps and machine.
    baselines: dict[tuple[str, str], float] = {}
    for p, record, cfg in loaded:
        if cfg.placement.kind in (HBM, NONE):
            baselines.setdefault((cfg.placement.kind, _baseline_key(record)),
                                 float(record.summary.get("tokens_per_s", math.nan)))
    serving = [(p, record, cfg) for p, record, cfg in loaded if serving_tables(record.extra) is not None]
    loaded = [x for x in loaded if serving_tables(x[1].extra) is None]
    serving_rows = []
    for p, record, cfg in serving:
        try:
            serving_rows.append(compare_serving(p, record, cfg, profile))
        except UserError as e:
            skipped.append((str(p), f"cannot simulate it ({e})"))
    for p, record, cfg in loaded:
        try:
            row, timeline, predicted = compare_one(p, record, cfg, profile)
        except UserError as e:  # e.g. the config's profile does not exist here
            skipped.append((str(p), f"cannot simulate it ({e})"))
            continue
        for m, kind in OVERHEAD_BASELINES.items():
            base = baselines.get((kind, _baseline_key(record)))
            if base is not None and base > 0 and math.isfinite(row["measured_tokens_per_s"]):
                row[f"measured_{m}"] = overhead(row["measured_tokens_per_s"], base)
        rows.append(row)
        if not timeline.empty:
            timelines.append(timeline)
        if keep_results:
            runs[str(p)] = (record, predicted)
    df = _errors(pd.DataFrame(rows, columns=COMPARE_COLUMNS)) if rows else pd.DataFrame(columns=COMPARE_COLUMNS)
    df = df[COMPARE_COLUMNS]
    summary = summarise_errors(df)
    summary["skipped"] = len(skipped)
    summary["_serving"] = (pd.concat(serving_rows, ignore_index=True) if serving_rows
                           else pd.DataFrame(columns=SERVING_COLUMNS))
    if keep_results:
        summary["_runs"] = runs
    tl = pd.concat(timelines, ignore_index=True) if timelines else pd.DataFrame(columns=TIMELINE_COLUMNS)
    return df, summary, tl, skipped


# -- printing -------------------------------------------------------------------------------------

def _pct(x) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x * 100:+.1f}%"


def _abs_pct(x) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x * 100:.1f}%"


def format_table(df: pd.DataFrame) -> str:
    def f(x, scale=1.0, fmt="{:,.3f}"):
        return "–" if x is None or not np.isfinite(x) else fmt.format(x * scale)

    view = pd.DataFrame({
        "record": df["record"], "placement": df["placement"], "phase": df["phase"], "profile": df["profile"]
        + np.where(df["profile_matched"].astype(bool), "", "*"),
        "tok/s pred": [f(x, fmt="{:,.0f}") for x in df["predicted_tokens_per_s"]],
        "tok/s meas": [f(x, fmt="{:,.0f}") for x in df["measured_tokens_per_s"]],
        "tok/s err": [_pct(x) for x in df["rel_err_tokens_per_s"]],
        "step ms pred": [f(x, 1e3) for x in df["predicted_step_time_s"]],
        "step ms meas": [f(x, 1e3) for x in df["measured_step_time_s"]],
        "stall ms pred": [f(x, 1e3, "{:,.4f}") for x in df["predicted_exposed_stall_s"]],
        "stall ms meas": [f(x, 1e3, "{:,.4f}") for x in df["measured_exposed_stall_s"]],
        "overlap pred": [f(x, fmt="{:.2f}") for x in df["predicted_overlap_fraction"]],
        "overlap meas": [f(x, fmt="{:.2f}") for x in df["measured_overlap_fraction"]],
        "ovh% pred": [f(x, 100, "{:+.1f}") for x in df["predicted_overhead_vs_hbm"]],
        "ovh% meas": [f(x, 100, "{:+.1f}") for x in df["measured_overhead_vs_hbm"]],
        "vs none% pred": [f(x, 100, "{:+.1f}") for x in df["predicted_overhead_vs_none"]],
        "vs none% meas": [f(x, 100, "{:+.1f}") for x in df["measured_overhead_vs_none"]],
    })
    with pd.option_context("display.width", 250, "display.max_columns", 50, "display.max_rows", 500):
        return view.to_string(index=False)


def format_serving(df: pd.DataFrame) -> str:
    """The serving rows: per record, each metric measured, predicted and the error."""
    def f(x):
        return "–" if x is None or not np.isfinite(x) else f"{x:,.4g}"

    view = pd.DataFrame({
        "record": df["record"], "placement": df["placement"],
        "profile": df["profile"] + np.where(df["profile_matched"].astype(bool), "", "*"), "metric": df["metric"],
        "measured": [f(x) for x in df["measured"]], "predicted": [f(x) for x in df["predicted"]],
        "error": [_pct(x) for x in df["rel_err"]]})
    with pd.option_context("display.width", 250, "display.max_columns", 50, "display.max_rows", 500):
        return view.to_string(index=False)


def format_summary(summary: dict) -> str:
    lines = [f"Compared {summary['compared']} record(s)"
             + (f", skipped {summary['skipped']}" if summary.get("skipped") else "") + "."]
    lines.append(f"  throughput |pred/meas - 1|: median {_abs_pct(summary['throughput_abs_rel_err_median'])}, "
                 f"max {_abs_pct(summary['throughput_abs_rel_err_max'])}")
    if summary["overhead_pairs"]:
        lines.append(f"  overhead vs HBM |pred - meas|: median {summary['overhead_abs_err_pp_median']:.2f} pp, "
                     f"max {summary['overhead_abs_err_pp_max']:.2f} pp ({summary['overhead_pairs']} non-hbm record(s) "
                     f"with a measured hbm baseline)")
    else:
        lines.append(("  overhead vs HBM: no non-hbm record has a measured hbm record of the same configuration "
                     "among the inputs"))
    if not summary["all_profiles_matched"]:
        lines.append("  * no hardware profile matches the machine (CPU runs, or an unknown GPU): those rows were "
                     "predicted with the config's profile, so their error is not the model's error")
    return "\n".join(lines)


# -- commands -------------------------------------------------------------------------------------

def _compare_facts(df: pd.DataFrame) -> dict:
    """What compare.parquet keeps in its metadata: the configs, the profiles and their provenance, the summary."""
    profiles = sorted(set(df["profile"].dropna()))
    return {"configs": sorted(set(df["config"].dropna())), "profiles": profiles,
            "profile_provenance": {name: asdict(load_profile(name).provenance) for name in profiles},
            "records": list(df["record"]), "summary": summarise_errors(df)}


def write_outputs(out: Path, df: pd.DataFrame, timelines: pd.DataFrame, runs: dict,
                  serving: pd.DataFrame | None = None) -> list[str]:
    """compare.csv, compare.parquet, timelines.csv, serving.csv (serving records only) and, for each run in
    `runs`, <record>.trace.json; all or nothing."""
    written = []
    with staged_dir(out) as tmp:
        df.to_csv(tmp / "compare.csv", index=False)
        write_parquet(df, tmp / "compare.parquet", _compare_facts(df))
        timelines.to_csv(tmp / "timelines.csv", index=False)
        written += ["compare.csv", "compare.parquet", "timelines.csv"]
        if serving is not None and len(serving):
            serving.to_csv(tmp / "serving.csv", index=False)
            written.append("serving.csv")
        for path, (record, predicted) in runs.items():
            name = f"{Path(path).stem}.trace.json"
            write_chrome_trace({"predicted": predicted.events, "measured": record.events}, tmp / name)
            written.append(name)
    return written


def nothing_compared(skipped) -> CompareError:
    reasons = "; ".join(f"{p}: {why}" for p, why in skipped) or "no records given"
    return CompareError("RECORDS", f"none could be compared ({reasons})",
                        "give measured records written by `engram-sim run`")
