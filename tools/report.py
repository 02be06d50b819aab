"""`engram-sim report`: one HTML report and a PNG per chart from a sweep CSV, a compare CSV, or both.

The timeline of one step comes from timelines.csv beside the compare CSV (or
--timelines). Inputs are checked for the columns the charts need
(vocab.tables.REPORT_*_COLUMNS) before anything is drawn.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from reports.compare_charts import report_sections
from reports.html import write_report
from vocab.errors import UserError
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
