"""`engram-sim report`: one HTML report and a PNG per chart from a sweep CSV, a compare CSV, or both; or
from the records of serving runs (JSON from `engram-sim simulate` with workload.phase = "serve").

The timeline of one step comes from timelines.csv beside the compare CSV (or
--timelines). Inputs are checked for the columns the charts need
(vocab.tables.REPORT_*_COLUMNS, vocab.serving's columns) before anything is drawn.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from reports.compare_charts import report_sections
from reports.html import write_report
from reports.serving_charts import serving_sections
from vocab.errors import UserError
from vocab.records import read_record
from vocab.serving import BATCH_COLUMNS, REQUEST_COLUMNS, serving_tables
from vocab.tables import REPORT_COMPARE_COLUMNS, REPORT_SWEEP_COLUMNS, TIMELINE_COLUMNS


class ReportError(UserError):
    """A report input is missing or unusable."""


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise ReportError(str(path), "no such file", "give a sweep.csv or compare.csv")
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ReportError(str(path), f"not a readable CSV ({type(e).__name__})",
                           "give a sweep.csv or compare.csv") from None


# Columns of report inputs that hold text; every other required column must hold numbers.
TEXT_COLUMNS = {"record", "config", "placement", "phase", "profile", "profile_matched", "source", "actor", "name"}


def _require(df: pd.DataFrame, path: Path, columns: list[str], what: str) -> None:
    """The columns the charts need are there, there is a row, and the number columns hold numbers."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ReportError(str(path), f"lacks column {missing[0]!r}" + (f" (and {len(missing) - 1} more)"
                                                                          if len(missing) > 1 else ""),
                           f"give a {what} CSV")
    if df.empty:
        raise ReportError(str(path), "has a header but no rows", f"give a {what} CSV with results")
    for column in (c for c in columns if c not in TEXT_COLUMNS):
        values = pd.to_numeric(df[column], errors="coerce")
        bad = values.isna() & df[column].notna()
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise ReportError(f"{path}: {column}", f"row {row + 1} holds {df[column].iloc[row]!r}, not a number",
                              f"give a {what} CSV as the command wrote it")
        df[column] = values


def classify_inputs(paths, timelines: str | None = None):
    """(sweep df or None, compare df or None, timelines df or None) from the report's CSV inputs."""
    sweep = compare = tl = None
    compare_path = None
    for p in map(Path, paths):
        df = _read_csv(p)
        is_compare = "record" in df.columns or "compare" in p.name
        if is_compare:
            if compare is not None:
                raise ReportError(str(p), "a second compare CSV", "give at most one sweep and one compare CSV")
            _require(df, p, REPORT_COMPARE_COLUMNS, "compare (`engram-sim compare`)")
            compare, compare_path = df, p
        else:
            if sweep is not None:
                raise ReportError(str(p), "a second sweep CSV", "give at most one sweep and one compare CSV")
            _require(df, p, REPORT_SWEEP_COLUMNS, "sweep (`engram-sim sweep`)")
            sweep = df
    if timelines:
        tpath = Path(timelines)
        tl = _read_csv(tpath)
        _require(tl, tpath, TIMELINE_COLUMNS, "timelines (`engram-sim compare`)")
    elif compare_path is not None and (compare_path.parent / "timelines.csv").is_file():
        tpath = compare_path.parent / "timelines.csv"
        tl = _read_csv(tpath)
        _require(tl, tpath, TIMELINE_COLUMNS, "timelines (`engram-sim compare`)")
    return sweep, compare, tl


def build_report(inputs: list[str], out: str, *, timelines: str | None = None, record: str | None = None,
                 threshold: float = 0.01, title: str | None = None) -> dict[str, Path]:
    """Write report.html and the PNGs into `out`; returns {file name: path}."""
    if not inputs:
        raise ReportError("report", "needs a sweep CSV, a compare CSV or both",
                          "e.g. engram-sim report out/sweep/sweep.csv out/compare/compare.csv --out out/report")
    if any(Path(p).suffix.lower() == ".json" for p in inputs):
        for flag, value in (("--timelines", timelines), ("--record", record)):
            if value is not None:
                raise ReportError(flag, "is for a compare CSV", "leave it out with serving records")
        return build_serving_report(inputs, out, title=title)
    if len(inputs) > 2:
        raise ReportError("report", f"{len(inputs)} CSVs given", "give at most one sweep and one compare CSV")
    if not (math.isfinite(threshold) and threshold >= 0):
        raise ReportError("--threshold", f"got {threshold!r}", "use a finite fraction >= 0, e.g. 0.01")
    sweep, compare, tl = classify_inputs(inputs, timelines)
    if record is not None:
        names = [] if tl is None else list(dict.fromkeys(tl["record"]))
        if record not in names:
            raise ReportError("--record", f"no timeline for {record!r}",
                              f"use one of: {', '.join(names)}" if names else "give a compare CSV with timelines.csv")
    sections = report_sections(sweep, compare, tl, threshold=threshold, record=record)
    title = title or ("engram-sim: predicted versus measured" if compare is not None else "engram-sim: predicted sweep")
    return write_report(out, title, sections)


SERVE_FIX = 'give records of serving runs (`engram-sim simulate` of a config with workload.phase = "serve")'
# The parts of a record's config two runs must share for one to be the other's baseline (placement aside).
SAME_RUN_KEYS = ("backbone", "engram", "workload", "profile")


def _serving_run(path: str) -> dict:
    """A serving record's tables and what names it: {path, kind, placement, workload, requests, batches,
    summary}."""
    if Path(path).suffix.lower() != ".json":
        raise ReportError(path, "is not a run record (JSON)", "give only serving records, or only CSVs")
    rec = read_record(path)
    tables = serving_tables(rec.extra)
    if tables is None:
        raise ReportError(path, "is a steady-state record: it has no serving tables", SERVE_FIX)
    requests, batches, summary = tables
    for what, table, columns in (("requests", requests, REQUEST_COLUMNS), ("batches", batches, BATCH_COLUMNS)):
        missing = [c for c in columns if c not in table.columns]
        if missing or table.empty:
            raise ReportError(f"{path}: {what}", f"lacks column {missing[0]!r}" if missing else "has no rows",
                              "give a complete record as engram-sim wrote it")
    return {"path": path, "kind": rec.kind, "placement": str(rec.config.get("placement", {}).get("kind", "?")),
            "name": str(rec.config.get("name", "?")), "requests": requests, "batches": batches, "summary": summary,
            "workload": json.dumps({k: rec.config.get(k) for k in SAME_RUN_KEYS}, sort_keys=True, default=str)}


def run_names(runs: list[dict]) -> list[str]:
    """Each run's name: its placement; with its kind where placements repeat; its path where those repeat."""
    for name in (lambda r: r["placement"], lambda r: f"{r['placement']} ({r['kind']})", lambda r: r["path"]):
        names = [name(r) for r in runs]
        if len(set(names)) == len(names):
            return names
    raise ReportError(runs[0]["path"], "given twice", "give each record once")


def build_serving_report(paths: list[str], out: str, *, title: str | None = None) -> dict[str, Path]:
    """report.html and PNGs of serving runs' batches, step times and latencies, several runs overlaid."""
    runs = [_serving_run(p) for p in paths]
    names = run_names(runs)
    requests = pd.concat([r["requests"].assign(run=n) for r, n in zip(runs, names)], ignore_index=True)
    batches = pd.concat([r["batches"].assign(run=n) for r, n in zip(runs, names)], ignore_index=True)
    table = pd.DataFrame([{"run": n, "kind": r["kind"], "placement": r["placement"], "workload": r["workload"],
                           **r["summary"]} for r, n in zip(runs, names)])
    notes = ("The runs differ in backbone, Engram, workload or profile: an overhead compares only runs that agree "
             "in all of them." if table["workload"].nunique() > 1 else "")
    configs = ", ".join(dict.fromkeys(r["name"] for r in runs))
    return write_report(out, title or f"engram-sim: serving {configs}",
                        serving_sections(requests, batches, table, notes))
