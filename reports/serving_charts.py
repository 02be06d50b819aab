"""Charts and a summary table of serving runs (vocab.serving's tables), several runs overlaid.

Every chart takes the concatenated tables of the runs with a ``run`` column
naming each (e.g. the placements of one workload, or predicted and measured):
``batches`` (vocab.serving.BATCH_COLUMNS + run) and ``requests``
(REQUEST_COLUMNS + run). Inline data is kept to a few thousand rows so the
page stays light: a long run's steps are averaged in groups of consecutive
steps, and a latency distribution is drawn at evenly spaced quantiles.
"""

from __future__ import annotations

import math

import altair as alt
import numpy as np
import pandas as pd

from reports.lines import PLACEMENT_COLORS, subtitle
from vocab.placements import HBM, NONE
from vocab.records import overhead
from vocab.serving import BATCH_COLUMNS, PERCENTILES, REQUEST_COLUMNS

WIDTH, HEIGHT = 640, 140
# Inline rows per chart, all runs together (Altair refuses frames over 5000 rows).
MAX_ROWS = 4000
_NONE_COLOR = "#79706e"
_SPARE_COLORS = ["#b279a2", "#9d755d", "#72b7b2", "#eeca3b", "#ff9da6", "#bab0ac"]
_WIDEST, _NARROWEST = 4.0, 1.5
WIDTH_NOTE = "runs listed first are drawn wider, so that identical lines stay visible"
_TIME_X = alt.X("start_s:Q", title="time from the run's start (s)")
# What batch_chart draws per step, with the panel names.
BATCH_SERIES = {"sequences": "sequences in the step", "prefill_tokens": "prefill tokens",
                "decode_tokens": "decode tokens"}


def _check(df: pd.DataFrame, columns, what: str) -> None:
    missing = [c for c in ["run", *columns] if c not in df.columns]
    if missing:
        raise ValueError(f"{what} frame lacks columns {missing}")
    if df.empty:
        raise ValueError(f"{what} frame has no rows")


def run_order(runs) -> list[str]:
    return list(dict.fromkeys(runs))


def run_color(runs) -> alt.Color:
    """Colour by run; a run named after a placement takes that placement's colour in every chart."""
    order = run_order(runs)
    fixed = {**PLACEMENT_COLORS, NONE: _NONE_COLOR}
    spare = iter([c for c in _SPARE_COLORS if c not in fixed.values()] * 10)
    return alt.Color("run:N", title="run", sort=order,
                     scale=alt.Scale(domain=order, range=[fixed.get(r) or next(spare) for r in order]))


def with_widths(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with `line_width` by run, the first widest: runs that draw the same line (the scheduler makes the
    same batches whatever the placement) then show as nested bands, none hidden under another."""
    order = run_order(df["run"])
    widths = np.linspace(_WIDEST, _NARROWEST, len(order)) if len(order) > 1 else [_NARROWEST]
    return df.assign(line_width=df["run"].map(dict(zip(order, widths))))


# Widths as they are (a width by run on a scale would take over the colour legend of `run`).
LINE_WIDTH = alt.StrokeWidth("line_width:Q", scale=None, legend=None)


def thin_steps(batches: pd.DataFrame, max_rows: int = MAX_ROWS) -> tuple[pd.DataFrame, int]:
    """(batches, k): each run's steps averaged in groups of k consecutive steps (k = 1: as they are), so that
    all runs together keep at most `max_rows` rows. A group starts when its first step starts."""
    per_run = max(1, max_rows // max(1, batches["run"].nunique()))
    k = max(1, math.ceil(batches.groupby("run", sort=False).size().max() / per_run))
    if k == 1:
        return batches, 1
    parts = []
    for run, rows in batches.groupby("run", sort=False):
        group = np.arange(len(rows)) // k
        means = rows.drop(columns="run").groupby(group).mean()
        means["start_s"] = rows["start_s"].groupby(group).min().to_numpy()
        parts.append(means.assign(run=run))
    return pd.concat(parts, ignore_index=True), k


def _thinned_note(k: int) -> str:
    return f"each point: the mean of {k} consecutive steps" if k > 1 else ""


def batch_chart(batches: pd.DataFrame) -> alt.FacetChart:
    """Sequences, prefill tokens and decode tokens per step over time, a panel each, a line per run."""
    _check(batches, ["start_s", *BATCH_SERIES], "batches")
    data, k = thin_steps(batches[["run", "start_s", *BATCH_SERIES]])
    data = with_widths(data.rename(columns=BATCH_SERIES))
    chart = alt.Chart(data).transform_fold(list(BATCH_SERIES.values()), as_=["series", "value"]).mark_line(
        interpolate="step-after",
    ).encode(
        x=_TIME_X, y=alt.Y("value:Q", title=None), color=run_color(data["run"]), strokeWidth=LINE_WIDTH,
        tooltip=["run:N", "series:N", alt.Tooltip("start_s:Q", title="time (s)", format=".3f"),
                 alt.Tooltip("value:Q", format=",.0f")],
    ).properties(width=WIDTH, height=HEIGHT)
    return chart.facet(row=alt.Row("series:N", title=None, sort=list(BATCH_SERIES.values()),
                                   header=alt.Header(labelAngle=0, labelAlign="left", labelFontSize=12)),
                       ).resolve_scale(y="independent").properties(title=alt.TitleParams(
                           "Batch over time: what the scheduler put in each step",
                           subtitle=subtitle(WIDTH_NOTE, _thinned_note(k))))


def log_ticks(low: float, high: float) -> list[float]:
    """1-2-5 values within [low, high], for a log axis whose range is under a decade or two."""
    if not (low > 0 and high >= low):
        return []
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    return [m * 10.0 ** d for d in decades for m in (1, 2, 5) if low <= m * 10.0 ** d <= high]


def step_time_chart(batches: pd.DataFrame) -> alt.Chart:
    """Step time (ms, log scale) over time, a line per run: prefill steps stand out above decode steps."""
    _check(batches, ["start_s", "step_time_s", "sequences"], "batches")
    data, k = thin_steps(batches[["run", "start_s", "step_time_s", "sequences"]])
    data = with_widths(data.assign(step_time_ms=data["step_time_s"] * 1e3))
    low, high = float(data["step_time_ms"].min()), float(data["step_time_ms"].max())
    return alt.Chart(data).mark_line(interpolate="step-after").encode(
        x=_TIME_X,
        y=alt.Y("step_time_ms:Q", title="step time (ms, log scale)",
                scale=alt.Scale(type="log", domain=[low / 1.25, high * 1.25]),
                axis=alt.Axis(format="~g", values=log_ticks(low / 1.25, high * 1.25))),
        color=run_color(data["run"]), strokeWidth=LINE_WIDTH,
        tooltip=["run:N", alt.Tooltip("start_s:Q", title="time (s)", format=".3f"),
                 alt.Tooltip("step_time_ms:Q", title="step time (ms)", format=".3g"),
                 alt.Tooltip("sequences:Q", format=",.0f")],
    ).properties(width=WIDTH, height=HEIGHT * 2, title=alt.TitleParams(
        "Step time over time", subtitle=subtitle(WIDTH_NOTE, _thinned_note(k))))


_LATENCY_WIDTH = WIDTH // 2 - 30
# Request column -> panel title.
LATENCIES = {"ttft_s": "time to first token", "tpot_s": "time per output token"}


def latency_unit(seconds: pd.Series) -> tuple[str, float]:
    """(unit, factor from seconds): s where some value reaches a second, else ms."""
    return ("s", 1.0) if seconds.max() >= 1.0 else ("ms", 1e3)


def _ecdf(values: np.ndarray, points: int) -> tuple[np.ndarray, np.ndarray]:
    """(value, fraction of requests at or below it); at most `points` evenly spaced quantiles."""
    values = np.sort(values)
    if values.size <= points:
        return values, np.arange(1, values.size + 1) / values.size
    fraction = np.linspace(0.0, 1.0, points)
    return np.quantile(values, fraction), fraction


def latency_frames(requests: pd.DataFrame, points: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(ECDF rows, percentile rows) per run and latency: run, latency, unit, value, fraction [, percentile].
    Requests without a value (TPOT of a one-token output, an unfinished request) are left out."""
    curves, marks = [], []
    for column, name in LATENCIES.items():
        unit, factor = latency_unit(requests[column])
        for run, rows in requests.groupby("run", sort=False):
            values = rows[column].dropna().to_numpy(dtype=float) * factor
            if not values.size:
                continue
            value, fraction = _ecdf(values, points)
            curves.append(pd.DataFrame({"run": run, "latency": name, "unit": unit, "value": value,
                                        "fraction": fraction}))
            # np.percentile as vocab.serving.serving_summary counts them
            marks.append(pd.DataFrame({"run": run, "latency": name, "unit": unit,
                                       "percentile": [f"p{q}" for q in PERCENTILES],
                                       "value": np.percentile(values, PERCENTILES),
                                       "fraction": [q / 100 for q in PERCENTILES]}))
    if not curves:
        return pd.DataFrame(columns=["run", "latency", "unit", "value", "fraction"]), pd.DataFrame(
            columns=["run", "latency", "unit", "percentile", "value", "fraction"])
    return pd.concat(curves, ignore_index=True), pd.concat(marks, ignore_index=True)


def _latency_panel(curves: pd.DataFrame, marks: pd.DataFrame, color: alt.Color) -> alt.LayerChart:
    name, unit = curves["latency"].iloc[0], curves["unit"].iloc[0]
    x = alt.X("value:Q", title=f"{name} ({unit})")
    y = alt.Y("fraction:Q", title="fraction of requests", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%"))
    line = alt.Chart(curves).mark_line(interpolate="step-after").encode(
        x=x, y=y, color=color, strokeWidth=LINE_WIDTH, tooltip=["run:N", alt.Tooltip("value:Q", title=unit, format=".4g"),
                                        alt.Tooltip("fraction:Q", format=".1%")])
    levels = marks.drop_duplicates("percentile")
    rules = alt.Chart(levels).mark_rule(strokeDash=[4, 4], color="#888").encode(y="fraction:Q")
    # Right of the plot, where no axis is: p99 sits too close to 100 % for a label inside.
    labels = alt.Chart(levels).mark_text(align="left", baseline="middle", dx=4, color="#555").encode(
        x=alt.value(_LATENCY_WIDTH), y="fraction:Q", text="percentile:N")
    points = alt.Chart(marks).mark_point(filled=True, size=50).encode(
        x=x, y=y, color=color, shape=alt.Shape("percentile:N", title="percentile", sort=list(levels["percentile"])),
        tooltip=["run:N", "percentile:N", alt.Tooltip("value:Q", title=unit, format=".4g")])
    return alt.layer(rules, labels, line, points).properties(width=_LATENCY_WIDTH, height=HEIGHT * 2,
                                                              title=name)


def latency_chart(requests: pd.DataFrame) -> alt.HConcatChart:
    """Time to first token and time per output token: the share of requests at or below each value, a line
    per run, with each run's p50/p90/p99 marked on its line."""
    _check(requests, list(LATENCIES), "requests")
    curves, marks = latency_frames(requests, max(50, MAX_ROWS // (2 * requests["run"].nunique())))
    if curves.empty:
        raise ValueError("no request has a time to first token (none finished)")
    curves = with_widths(curves)
    color = run_color(requests["run"])
    panels = [_latency_panel(curves[curves["latency"] == name], marks[marks["latency"] == name], color)
              for name in LATENCIES.values() if (curves["latency"] == name).any()]
    return alt.hconcat(*panels, spacing=50).properties(title=alt.TitleParams(
        "Latency distributions (share of requests at or below)",
        subtitle=subtitle("marks: each run's p50 / p90 / p99; dashed rules: those levels",
                          "time per output token: after the first token; one-token outputs left out", WIDTH_NOTE)))


# Columns of the summary table: (summary key, heading, scale).
SUMMARY_COLUMNS = [("output_tokens_per_s", "output tok/s", 1), ("ttft_p50_s", "TTFT p50 s", 1),
                   ("ttft_p90_s", "TTFT p90 s", 1), ("ttft_p99_s", "TTFT p99 s", 1),
                   ("tpot_p50_s", "TPOT p50 ms", 1e3), ("tpot_p90_s", "TPOT p90 ms", 1e3),
                   ("tpot_p99_s", "TPOT p99 ms", 1e3), ("mean_batch", "mean batch", 1), ("steps", "steps", 1),
                   ("preemptions", "preemptions", 1), ("unfinished", "unfinished", 1)]


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run from `runs` (run, kind, placement, workload and the vocab.serving summary's keys), with
    the overhead in output tokens/s against the run of the same kind and workload with the table in HBM and
    the one with no Engram, where there is one (else blank)."""
    _check(runs, ["kind", "placement", "workload", "output_tokens_per_s"], "runs")
    table = runs[["run", "kind", "placement"]].copy()
    for key, heading, scale in SUMMARY_COLUMNS:
        if key in runs:
            table[heading] = runs[key] * scale
    # Thousands as digits, not as the page's 4 significant figures (2.013e+04).
    table["output tok/s"] = [f"{v:,.0f}" if math.isfinite(v) else "–" for v in runs["output_tokens_per_s"]]
    for baseline in (HBM, NONE):
        base = runs[runs["placement"] == baseline].drop_duplicates(["kind", "workload"])
        rate = dict(zip(zip(base["kind"], base["workload"]), base["output_tokens_per_s"]))
        if rate:
            table[f"overhead vs {baseline} %"] = [
                overhead(r, rate[(k, w)]) * 100 if (k, w) in rate else float("nan")
                for r, k, w in zip(runs["output_tokens_per_s"], runs["kind"], runs["workload"])]
    return table


def serving_sections(requests: pd.DataFrame, batches: pd.DataFrame, runs: pd.DataFrame,
                     notes: str = "") -> list[tuple[str, object]]:
    """The serving report's layout for reports.html.write_report."""
    _check(requests, REQUEST_COLUMNS, "requests")
    _check(batches, BATCH_COLUMNS, "batches")
    text = (f"{len(runs)} serving run(s): {', '.join(runs['run'])}. Output tokens per second count the whole run "
            "(first arrival to last token, prefill included); an overhead compares output tokens per second with "
            "the run of the same kind and workload with the table in HBM (hbm) or without Engram (none), where "
            "one was given.")
    latencies = latency_chart(requests) if requests["ttft_s"].notna().any() else "No request finished: no latencies."
    return [("Summary", "\n\n".join(t for t in (text, notes) if t)), ("Serving runs", summary_table(runs)),
            ("Batch over time", batch_chart(batches)), ("Step time over time", step_time_chart(batches)),
            ("Latency distributions", latencies)]


__all__ = ["batch_chart", "latency_chart", "serving_sections", "step_time_chart", "summary_table", "thin_steps"]
