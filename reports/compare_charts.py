"""Charts of predicted versus measured runs (tools.compare), over the sweep charts' axes.

Inputs are frames, never files: a sweep frame (tools.sweep, SWEEP_COLUMNS), a
compare frame (vocab.tables.COMPARE_COLUMNS) and a timelines frame
(vocab.tables.TIMELINE_COLUMNS). Either of sweep and compare may be None.
The charts put, per placement and phase, the sweep's predicted lines, the
prediction for each measured record (circles) and the measurement (squares)
on one table-size axis.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from reports.charts import (
    HEIGHT,
    WIDTH,
    _first_unhidden,
    by_phase,
    bytes_chart,
    hidden_summary,
    threshold_rule,
    timeline_chart,
    unhidden_marks,
    with_mark_slots,
)
from reports.lines import SOLID, placement_color, placement_lines, placement_order, subtitle, with_dashes
from vocab.tables import summarise_errors

SWEEP = "predicted (sweep)"
PREDICTED = "predicted (record)"
MEASURED = "measured"
_SHAPE = alt.Shape("source:N", title="point", scale=alt.Scale(domain=[PREDICTED, MEASURED],
                                                             range=["circle", "square"]))
_SIZE_TITLE = "Engram table size (GiB)"
# A record this many times smaller or larger than the sweep's sizes is drawn apart, not on the sweep's axis.
_FAR = 4.0
_LINES_NOTE = "lines: sweep prediction"
_POINTS_NOTE = "circles: prediction for a measured record; squares: measured (side by side at the record's size)"


def _size_x(sizes: pd.Series) -> alt.X:
    """The size axis over `sizes`, a factor of two wider on each side so no point sits on an axis (a single
    size is centred); short labels for tiny tables."""
    low, high = float(np.nanmin(sizes)), float(np.nanmax(sizes))
    return alt.X("table_gib:Q", title=_SIZE_TITLE, scale=alt.Scale(type="log", base=2, domain=[low / 2, high * 2]),
                 axis=alt.Axis(format=".2~g" if low < 0.01 else "~g"))


def _gib(size: float) -> str:
    return f"{size:,.0f}" if size >= 1 else f"{size:.3g}"


UNPROFILED = "run on a machine no hardware profile describes (a CPU run): predicted for the profiled GPU"


def _apart(compare: pd.DataFrame, sweep: pd.DataFrame | None) -> pd.Series:
    """Per compared record, why it is drawn apart from the sweep ("" if it is not): no hardware profile for
    its machine, or a table size far outside the sweep's."""
    why = pd.Series("", index=compare.index)
    if "profile_matched" in compare:
        why[~compare["profile_matched"].astype(bool)] = UNPROFILED
    if sweep is not None and len(sweep):
        low, high = float(sweep["table_gib"].min()), float(sweep["table_gib"].max())
        outside = (compare["table_gib"] < low / _FAR) | (compare["table_gib"] > high * _FAR)
        text = f"a table size far outside the sweep's {_gib(low)} to {_gib(high)} GiB"
        why[outside] = why[outside].map(lambda w: f"{w}; {text}" if w else text)
    return why


def overlay_frame(sweep: pd.DataFrame | None, compare: pd.DataFrame | None, threshold: float = 0.01) -> pd.DataFrame:
    """One long frame: sweep rows (source SWEEP) and, per compared record, a PREDICTED and a MEASURED row,
    with table_gib, placement, phase, tokens_per_s, overhead_pct, stall_ms, first_unhidden, record and apart
    (why the record is drawn in a panel of its own, "" if it is not; see _apart)."""
    parts = []
    if sweep is not None and len(sweep):
        s = sweep.assign(source=SWEEP, record="", overhead_pct=sweep["overhead_vs_hbm"] * 100,
                         stall_ms=sweep["exposed_stall_s"] * 1e3,
                         first_unhidden=_first_unhidden(sweep, threshold), apart="")
        parts.append(s[["source", "record", "table_gib", "placement", "phase", "tokens_per_s", "overhead_pct",
                        "stall_ms", "first_unhidden", "apart"]])
    if compare is not None and len(compare):
        apart = _apart(compare, sweep).to_numpy()
        for source, side in ((PREDICTED, "predicted"), (MEASURED, "measured")):
            parts.append(pd.DataFrame({
                "source": source, "record": compare["record"], "table_gib": compare["table_gib"],
                "placement": compare["placement"], "phase": compare["phase"],
                "tokens_per_s": compare[f"{side}_tokens_per_s"],
                "overhead_pct": compare[f"{side}_overhead_vs_hbm"] * 100,
                "stall_ms": compare[f"{side}_exposed_stall_s"] * 1e3, "first_unhidden": False, "apart": apart,
            }))
    if not parts:
        raise ValueError("overlay_frame needs a sweep or a compare frame")
    out = pd.concat(parts, ignore_index=True)
    out["threshold_pct"] = threshold * 100
    out["first_unhidden"] = out["first_unhidden"].astype(bool)
    return out


def _panels(data: pd.DataFrame, field: str, y: alt.Y, fmt: str, title: str, notes: list[str],
            extra: list, marks: bool) -> alt.FacetChart:
    """Sweep lines and record points of `data` in a panel per phase, plus the `extra` layers."""
    color = placement_color(data["placement"])
    x = _size_x(data["table_gib"])
    tooltip = ["source:N", "placement:N", "phase:N", alt.Tooltip("table_gib:Q", title="GiB", format=",.4~g"),
               alt.Tooltip(f"{field}:Q", format=fmt)]
    sweep = data["source"] == SWEEP
    layers, legend, same = [], [], ""
    if sweep.any():
        dashed, same = with_dashes(data[sweep], field)
        data = pd.concat([dashed, data[~sweep].assign(dash=SOLID)], ignore_index=True)
        layers.append(placement_lines(data, x, y, tooltip).transform_filter(alt.datum.source == SWEEP))
        legend.append(_LINES_NOTE)
    if not sweep.all():
        # Records of several placements share a size, and a record's prediction and measurement share it too:
        # each (placement, source) is shifted a few pixels so that equal values do not hide one another.
        placements = placement_order(data.loc[~sweep, "placement"])
        for rank, placement in enumerate(placements):
            for source, shift in ((PREDICTED, -4), (MEASURED, 4)):
                layers.append(alt.Chart().transform_filter(
                    (alt.datum.source == source) & (alt.datum.placement == placement)).mark_point(
                    size=90, filled=True, opacity=0.85, stroke="black", strokeWidth=0.5,
                    xOffset=(rank - (len(placements) - 1) / 2) * 14 + shift,
                ).encode(x=x, y=y, color=color, shape=_SHAPE, tooltip=["record:N", *tooltip]))
        legend.append(_POINTS_NOTE)
    layers += extra
    if marks and data["first_unhidden"].any():
        data = with_mark_slots(data, field)
        layers += unhidden_marks(data, x, y, color)
        legend.append("diamonds: the first sweep size where the placement stops being hidden")
    return by_phase(data, layers, alt.TitleParams(title, subtitle=subtitle(*legend, same, *notes)))


def _overlay(data: pd.DataFrame, field: str, y_title: str, fmt: str, scale: alt.Scale, title: str,
             extra: list | None = None, marks: bool = False) -> alt.TopLevelMixin:
    """The sweep with the records on its size axis; records drawn apart (see _apart) get a panel of their own
    below, unless there is nothing else to draw."""
    y = alt.Y(f"{field}:Q", title=y_title, scale=scale)
    apart = data["apart"] != ""
    why = list(dict.fromkeys(data.loc[apart, "apart"]))
    if not apart.any() or apart.all():
        return _panels(data, field, y, fmt, title, [f"records {w}" for w in why], extra or [], marks)
    main = _panels(data[~apart], field, y, fmt, title, [], extra or [], marks)
    away = _panels(data[apart], field, y, fmt, "Records drawn apart, on their own axes",
                   [f"records {w}" for w in why], extra or [], False)
    return alt.vconcat(main, away).resolve_scale(x="independent", y="independent")


def throughput_overlay(sweep, compare) -> alt.TopLevelMixin:
    """Tokens/s against table size: sweep lines, per-record prediction and measurement (log scale)."""
    data = overlay_frame(sweep, compare)
    return _overlay(data, "tokens_per_s", "tokens / s (log)", ",.0f", alt.Scale(type="log"),
                    "Throughput vs Engram table size")


def overhead_overlay(sweep, compare, threshold: float = 0.01) -> alt.TopLevelMixin:
    """Overhead versus the all-HBM run (%), with the hidden threshold and, from the sweep, a diamond
    at the first size where each placement stops being hidden."""
    data = overlay_frame(sweep, compare, threshold)
    return _overlay(data, "overhead_pct", "overhead vs HBM (%, symlog)", ".3g", alt.Scale(type="symlog"),
                    f"Overhead vs HBM-resident table (black dashed rule: hidden threshold {threshold * 100:g} %)",
                    [threshold_rule()], marks=True)


def stall_overlay(sweep, compare, threshold: float = 0.01) -> alt.TopLevelMixin:
    """Exposed stall per step (ms, symlog) against table size; diamonds where the prefetch stops being
    hidden (first sweep size over the threshold)."""
    data = overlay_frame(sweep, compare, threshold)
    return _overlay(data, "stall_ms", "exposed stall (ms / step, symlog)", ".4g",
                    alt.Scale(type="symlog", constant=1e-3), "Exposed Engram stall per step", marks=True)


def error_chart(compare: pd.DataFrame) -> alt.LayerChart:
    """Relative throughput error (predicted / measured - 1) per record, a strip on a symlog axis."""
    data = compare.assign(err_pct=compare["rel_err_tokens_per_s"] * 100,
                          matched=np.where(compare["profile_matched"].astype(bool), "yes", "no (CPU / unknown)"))
    data = data[["record", "config", "placement", "phase", "profile", "matched", "err_pct",
                 "predicted_tokens_per_s", "measured_tokens_per_s"]]
    points = alt.Chart(data).mark_point(size=110, filled=True, stroke="black", strokeWidth=0.5).encode(
        x=alt.X("err_pct:Q", title="throughput error, predicted / measured - 1 (%, symlog)",
                scale=alt.Scale(type="symlog")),
        y=alt.Y("record:N", title=None, sort=list(data["record"])),
        color=placement_color(data["placement"]), shape=alt.Shape("phase:N", title="phase"),
        tooltip=["record:N", "config:N", "placement:N", "phase:N", "profile:N",
                 alt.Tooltip("matched:N", title="profile matches machine"),
                 alt.Tooltip("err_pct:Q", title="error %", format="+.1f"),
                 alt.Tooltip("predicted_tokens_per_s:Q", title="predicted tok/s", format=",.0f"),
                 alt.Tooltip("measured_tokens_per_s:Q", title="measured tok/s", format=",.0f")])
    zero = alt.Chart(pd.DataFrame({"x": [0.0]})).mark_rule(color="black").encode(x="x:Q")
    subtitle = "0 = exact; right of 0: the simulator predicts more throughput than measured"
    if not data["matched"].eq("yes").all():
        subtitle = [subtitle, "some records have no matching hardware profile (CPU runs): their error is "
                              "the CPU versus the profiled GPU"]
    return alt.layer(zero, points).properties(
        width=2 * WIDTH, height=max(60, 26 * len(data)),
        title=alt.TitleParams("Throughput error per record", subtitle=subtitle))


def compare_bytes_chart(compare: pd.DataFrame) -> alt.FacetChart:
    """Bytes per step by memory tier (HBM, host over PCIe), predicted and measured, per record."""
    rows = []
    for side in ("predicted", "measured"):
        for tier, col in (("HBM", "hbm_bytes_per_step"), ("host (PCIe)", "host_bytes_per_step")):
            name = f"{side}_{col}"
            if name in compare:
                rows.append(pd.DataFrame({"record": compare["record"].astype(str).str.removesuffix(".json"),
                                          "placement": compare["placement"],
                                          "source": side, "memory": tier, "bytes": compare[name]}))
    data = pd.concat(rows, ignore_index=True)
    top = float(np.nanmax(data["bytes"])) if len(data) and np.isfinite(data["bytes"]).any() else 0.0
    unit, div = ("MiB", 2**20) if top >= 2**20 else ("KiB", 2**10)
    data["amount"] = data["bytes"] / div
    chart = alt.Chart(data).mark_bar().encode(
        x=alt.X("source:N", sort=["predicted", "measured"], title=None, axis=alt.Axis(labelAngle=0)),
        y=alt.Y("sum(amount):Q", title=f"{unit} per step"),
        color=alt.Color("memory:N", sort=["HBM", "host (PCIe)"],
                        scale=alt.Scale(domain=["HBM", "host (PCIe)"], range=["#4c78a8", "#f58518"])),
        tooltip=["record:N", "placement:N", "source:N", "memory:N",
                 alt.Tooltip("amount:Q", title=f"{unit}/step", format=",.2f")],
    ).properties(width=150, height=HEIGHT)
    order = list(dict.fromkeys(data["record"]))
    return chart.facet(column=alt.Column("record:N", title=None, sort=order, header=alt.Header(labelLimit=160))
                       ).properties(title="Engram bytes per step by tier, predicted and measured")


def pick_timeline(timelines: pd.DataFrame, compare: pd.DataFrame | None = None,
                  record: str | None = None) -> tuple[str, pd.DataFrame]:
    """(record name, its one-step events) from a timelines frame: `record` if given, else the first
    record not in HBM (the fetch is what there is to see), else the first."""
    names = list(dict.fromkeys(timelines["record"]))
    if record is not None:
        if record not in names:
            raise ValueError(f"no record {record!r} in the timelines (have: {', '.join(names)})")
        chosen = record
    else:
        placements = dict(zip(compare["record"], compare["placement"])) if compare is not None else {}
        chosen = next((n for n in names if placements.get(n, "hbm") != "hbm"), names[0])
    return chosen, timelines[timelines["record"] == chosen]


def report_sections(sweep: pd.DataFrame | None, compare: pd.DataFrame | None,
                    timelines: pd.DataFrame | None = None, *, threshold: float = 0.01,
                    record: str | None = None) -> list[tuple[str, object]]:
    """The predicted-versus-measured report layout, ready for reports.html.write_report."""

    if sweep is None and compare is None:
        raise ValueError("report_sections needs a sweep or a compare frame")
    text = []
    if sweep is not None:
        text.append(f"Sweep: {len(sweep)} simulated points, placements {', '.join(dict.fromkeys(sweep['placement']))}, "
                    f"phases {', '.join(dict.fromkeys(sweep['phase']))}. A placement counts as hidden while its "
                    f"overhead versus an all-HBM table stays at or below {threshold * 100:g} %.")
    if compare is not None:
        s = summarise_errors(compare)
        text.append(f"Compared {s['compared']} measured record(s) with their simulation "
                    f"(configs {', '.join(dict.fromkeys(compare['config'].astype(str)))}; profiles "
                    f"{', '.join(dict.fromkeys(compare['profile'].astype(str)))}). Throughput error "
                    f"|predicted / measured - 1|: median {s['throughput_abs_rel_err_median'] * 100:.1f} %, "
                    f"max {s['throughput_abs_rel_err_max'] * 100:.1f} %."
                    + (f" Overhead vs HBM error: median {s['overhead_abs_err_pp_median']:.2f} pp, max "
                       f"{s['overhead_abs_err_pp_max']:.2f} pp over {s['overhead_pairs']} record(s)."
                       if s["overhead_pairs"] else ""))
        if not s["all_profiles_matched"]:
            text.append("Some records ran on a machine no hardware profile describes (CPU runs): they were "
                        "predicted with their config's GPU profile, so their errors measure the gap between that "
                        "machine and the profiled GPU, not the simulator's accuracy.")
    sections: list[tuple[str, object]] = [("Summary", "\n\n".join(text))]
    if compare is not None:
        cols = ["record", "placement", "phase", "profile", "profile_matched", "predicted_tokens_per_s",
                "measured_tokens_per_s", "rel_err_tokens_per_s", "predicted_step_time_s", "measured_step_time_s",
                "predicted_exposed_stall_s", "measured_exposed_stall_s", "predicted_overhead_vs_hbm",
                "measured_overhead_vs_hbm"]
        sections.append(("Predicted versus measured", compare[[c for c in cols if c in compare]]))
        sections.append(("Throughput error", error_chart(compare)))
    sections.append(("Throughput", throughput_overlay(sweep, compare)))
    sections.append(("Overhead", overhead_overlay(sweep, compare, threshold)))
    if sweep is not None:
        summary = hidden_summary(sweep, threshold).drop(columns=["largest_hidden_bytes", "first_unhidden_bytes"])
        sections.append(("Hidden up to", summary))
    sections.append(("Exposed stall", stall_overlay(sweep, compare, threshold)))
    if sweep is not None:
        sections.append(("Bytes per step (sweep)", bytes_chart(sweep)))
    if compare is not None:
        sections.append(("Bytes per step (records)", compare_bytes_chart(compare)))
    if timelines is not None and len(timelines):
        name, events = pick_timeline(timelines, compare, record)
        step = int(events["step"].iloc[0])
        sections.append(("Timeline", timeline_chart(
            events[["source", "actor", "name", "start_s", "end_s"]],
            f"{name}: step {step}, compute stream vs fetch stream (predicted above measured, from the step's start)")))
    return sections


__all__ = [
    "compare_bytes_chart", "error_chart", "overhead_overlay", "overlay_frame", "pick_timeline", "report_sections",
    "stall_overlay", "throughput_overlay",
]
