"""Altair charts over a simulator sweep.

A sweep DataFrame has one row per (table size, placement, phase) with the
columns listed in ``SWEEP_COLUMNS``.  Every chart function takes such a frame
and returns an Altair chart; none of them touches the disk (see reports.html).
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from reports.lines import placement_color, placement_lines, subtitle, with_dashes
from vocab.placements import ENGRAM_PLACEMENTS
from vocab.records import ACTORS, CPU_GATHER, CPU_HASH, GPU_COMPUTE, H2D_LINK, STALL, overlap_fraction
from vocab.tables import PHASES, SWEEP_COLUMNS
from vocab.units import GiB, MiB

WIDTH, HEIGHT = 320, 220

_SIZE_X = alt.X("table_gib:Q", title="Engram table size (GiB)",
                scale=alt.Scale(type="log", base=2), axis=alt.Axis(format="~g"))
_PHASE_COLUMN = alt.Column("phase:N", title=None, sort=list(PHASES))


def _check(df: pd.DataFrame, columns) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"sweep frame lacks columns {missing}")


def by_phase(data: pd.DataFrame, layers: list, title, y_independent: bool = True) -> alt.FacetChart:
    """The layers, a panel per phase.  Every layer takes its rows from the facet (none carries its own data),
    so each panel draws only its phase."""
    chart = alt.layer(*layers, data=data).properties(width=WIDTH, height=HEIGHT).facet(column=_PHASE_COLUMN)
    if y_independent:
        chart = chart.resolve_scale(y="independent")
    return chart.properties(title=title)


def _line_chart(df: pd.DataFrame, field: str, y: alt.Y, tooltip: list, title: str, extra=(), notes=(),
                y_independent: bool = True) -> alt.FacetChart:
    """One line per placement over table size in a panel per phase, plus `extra` layers. Sizes where the
    configuration does not fit the machine are crosses off the lines, never part of a curve."""
    data, same = with_dashes(df, field)
    lines = placement_lines(data, _SIZE_X, y, tooltip)
    layers, unfit_note = [lines], ""
    if "fits" in data and not data["fits"].astype(bool).all():
        data = data.assign(fits=data["fits"].astype(bool))
        layers = [lines.transform_filter("datum.fits"), _unfit_marks(data, y, tooltip)]
        unfit_note = "crosses: the whole configuration does not fit the machine's memory there (never hidden)"
    return by_phase(data, [*layers, *extra], alt.TitleParams(title, subtitle=subtitle(*notes, unfit_note, same)),
                    y_independent)


def _unfit_marks(data: pd.DataFrame, y: alt.Y, tooltip: list) -> alt.Chart:
    """A cross per (placement, size) that does not fit, in the placement's colour, saying why."""
    return alt.Chart().transform_filter("!datum.fits").mark_point(shape="cross", size=70, filled=True).encode(
        x=_SIZE_X, y=y, color=placement_color(data["placement"]),
        tooltip=["placement:N", "phase:N", alt.Tooltip("table_gib:Q", title="GiB", format=",.4~g"),
                 alt.Tooltip("capacity:N", title="capacity"), *tooltip])


def throughput_chart(df: pd.DataFrame) -> alt.FacetChart:
    """Tokens/s against table size, one line per placement, a column per phase."""
    _check(df, ["table_gib", "placement", "phase", "tokens_per_s", "step_time_s"])
    return _line_chart(df, "tokens_per_s", alt.Y("tokens_per_s:Q", title="tokens / s"),
                       [alt.Tooltip("tokens_per_s:Q", title="tokens/s", format=",.0f"),
                        alt.Tooltip("step_time_s:Q", title="step time (s)", format=".4g")],
                       "Throughput vs Engram table size")


def _first_unhidden(df: pd.DataFrame, threshold: float) -> pd.Series:
    """Boolean mask: the row is the first size of its (placement, phase) over threshold, among sizes that fit."""
    over = df["overhead_vs_hbm"] > threshold
    if "fits" in df:
        over &= df["fits"].astype(bool)
    mask = pd.Series(False, index=df.index)
    for _, group in df[over].groupby(["placement", "phase"]):
        mask[group["table_bytes"].idxmin()] = True
    return mask


def threshold_rule(field: str = "threshold_pct", title: str = "threshold %") -> alt.Chart:
    """A dashed horizontal rule at the (constant) `field`, one per panel: the mean makes it a single mark."""
    return alt.Chart().mark_rule(strokeDash=[6, 4], color="black").encode(
        y=alt.Y(f"mean({field}):Q"), tooltip=[alt.Tooltip(f"mean({field}):Q", title=title)])


def with_mark_slots(data: pd.DataFrame, field: str) -> pd.DataFrame:
    """`data` with `mark_slot` ("rank/count"): first-unhidden marks that fall on one spot (same phase, size
    and value of `field`) are numbered so that unhidden_marks can set them side by side."""
    flagged = data[data["first_unhidden"]]
    spot = [flagged["phase"], flagged["table_gib"], flagged[field].round(9)]
    rank = flagged.groupby(spot, dropna=False).cumcount() + 1
    count = flagged.groupby(spot, dropna=False)["placement"].transform("size")
    slots = pd.Series("", index=data.index)
    slots[flagged.index] = rank.astype(str) + "/" + count.astype(str)
    return data.assign(mark_slot=slots)


def unhidden_marks(data: pd.DataFrame, x: alt.X, y: alt.Y, color: alt.Color) -> list[alt.Chart]:
    """Diamonds on the rows flagged first_unhidden (data from with_mark_slots), a layer per slot: diamonds
    on one spot are shifted a few pixels apart so none hides another."""
    layers = []
    for slot in sorted(set(data.loc[data["first_unhidden"], "mark_slot"])):
        rank, count = (int(n) for n in slot.split("/"))
        layers.append(alt.Chart().transform_filter(alt.datum.mark_slot == slot).mark_point(
            shape="diamond", size=160, filled=True, stroke="black", strokeWidth=1,
            xOffset=(rank - 1 - (count - 1) / 2) * 10,
        ).encode(x=x, y=y, color=color, tooltip=[
            "placement:N", alt.Tooltip("table_gib:Q", title="first GiB not hidden", format=",.4~g"),
            alt.Tooltip("overhead_pct:Q", title="overhead %", format=".3g")]))
    return layers


def overhead_chart(df: pd.DataFrame, threshold: float) -> alt.FacetChart:
    """Overhead vs all-in-HBM (%) against table size, with the threshold rule and a
    point where each placement first stops being hidden."""
    _check(df, ["table_bytes", "table_gib", "placement", "phase", "overhead_vs_hbm"])
    data = df.assign(
        overhead_pct=df["overhead_vs_hbm"] * 100,
        threshold_pct=threshold * 100,
        first_unhidden=_first_unhidden(df, threshold),
    )
    y = alt.Y("overhead_pct:Q", title="overhead vs HBM (%, symlog)", scale=alt.Scale(type="symlog"))
    extra = [threshold_rule()]
    if data["first_unhidden"].any():
        data = with_mark_slots(data, "overhead_pct")
        extra += unhidden_marks(data, _SIZE_X, y, placement_color(data["placement"]))
        note = "diamonds: the first table size where each placement stops being hidden"
    else:
        note = "no placement crosses the threshold at the sizes swept"
    return _line_chart(data, "overhead_pct", y, [alt.Tooltip("overhead_pct:Q", title="overhead %", format=".3g")],
                       f"Overhead vs HBM-resident table (black dashed rule: hidden threshold {threshold * 100:g} %)",
                       extra, [note], y_independent=False)


def stall_chart(df: pd.DataFrame) -> alt.FacetChart:
    """Exposed stall (ms per step, all Engram layers) against table size."""
    _check(df, ["table_gib", "placement", "phase", "exposed_stall_s"])
    data = df.assign(exposed_stall_ms=df["exposed_stall_s"] * 1e3)
    tooltip = [alt.Tooltip("exposed_stall_ms:Q", title="stall ms/step", format=".4g")]
    if "overlap_fraction" in df:
        tooltip.append(alt.Tooltip("overlap_fraction:Q", title="overlap", format=".1%"))
    return _line_chart(data, "exposed_stall_ms", alt.Y("exposed_stall_ms:Q", title="exposed stall (ms / step)"),
                       tooltip, "Exposed Engram stall per step")


# Window axis ticks (%): the symlog scale's own ones leave 1-1,000 % unlabelled.
WINDOW_TICKS_PCT = [0, 1, 3, 10, 30, 100, 300, 1000, 3000, 10000]


def window_chart(df: pd.DataFrame) -> alt.FacetChart:
    """How much of the time before its rows are needed each fetch uses (1 = just hidden)."""
    _check(df, ["table_gib", "placement", "phase", "window_use"])
    data = df[df["placement"] != "hbm"].assign(window_pct=lambda d: d["window_use"] * 100, limit_pct=100.0)
    tooltip = [alt.Tooltip("window_pct:Q", title="window used %", format=".1f")]
    # symlog: a drive's fetch can take 90x its window, which on a linear axis flattens every hidden fetch to 0
    y = alt.Y("window_pct:Q", title="fetch time / window (%, symlog)", scale=alt.Scale(type="symlog"),
              axis=alt.Axis(values=WINDOW_TICKS_PCT))
    return _line_chart(data, "window_pct", y, tooltip,
                       "Fetch time as a share of its window (above 100 %: the GPU waits)",
                       [threshold_rule("limit_pct", "limit %")], ["black dashed rule: 100 %, the whole window"],
                       y_independent=False)


def bytes_chart(df: pd.DataFrame, table_bytes: int | None = None) -> alt.FacetChart:
    """Stacked host vs HBM bytes per step by placement for one table size
    (the largest in the sweep unless ``table_bytes`` is given)."""
    _check(df, ["table_bytes", "placement", "phase", "host_bytes_per_step", "hbm_bytes_per_step"])
    size = int(df["table_bytes"].max() if table_bytes is None else table_bytes)
    rows = df[df["table_bytes"] == size]
    if rows.empty:
        raise ValueError(f"no rows with table_bytes == {size}")
    data = rows.melt(id_vars=["placement", "phase"], value_vars=["host_bytes_per_step", "hbm_bytes_per_step"],
                     var_name="memory", value_name="bytes")
    data["memory"] = data["memory"].map({"host_bytes_per_step": "host (PCIe)", "hbm_bytes_per_step": "HBM"})
    data["mib"] = data["bytes"] / MiB
    chart = alt.Chart(data).mark_bar().encode(
        x=alt.X("placement:N", sort=list(ENGRAM_PLACEMENTS), title=None, axis=alt.Axis(labelAngle=0)),
        y=alt.Y("sum(mib):Q", title="MiB per step"),
        color=alt.Color("memory:N", sort=["HBM", "host (PCIe)"],
                        scale=alt.Scale(domain=["HBM", "host (PCIe)"], range=["#4c78a8", "#f58518"])),
        tooltip=["placement:N", "memory:N", alt.Tooltip("mib:Q", title="MiB/step", format=",.2f")],
    ).properties(width=WIDTH, height=HEIGHT)
    return chart.facet(column=_PHASE_COLUMN).resolve_scale(y="independent").properties(
        title=f"Engram bytes per step at {size / GiB:,.4g} GiB table")


TIERS = {"rows_hbm_per_step": "HBM", "rows_dram_per_step": "host DRAM", "rows_drive_per_step": "drive"}
TIER_COLORS = ["#4c78a8", "#f58518", "#e45756"]


def tiers_chart(df: pd.DataFrame) -> alt.FacetChart:
    """Where each step's rows come from (HBM, host DRAM, the drive), as shares, against table size: one row of
    panels per placement with a cache or a drive tier, one column per phase."""
    _check(df, ["table_gib", "placement", "phase", "rows_per_step", *TIERS])
    rows = df[df["placement"].isin(["hbm_cache", "ssd"]) & (df["rows_per_step"] > 0)]
    if rows.empty:
        raise ValueError("no hbm_cache or ssd rows to draw tiers for")
    # Label a bar by the size asked for where the table says it (1 GiB, not the 1.001 its rows round to).
    size = "table_gib_asked" if "table_gib_asked" in rows.columns else "table_gib"
    data = rows.melt(id_vars=list(dict.fromkeys(["placement", "phase", "table_gib", size, "rows_per_step"])),
                     value_vars=list(TIERS), var_name="tier", value_name="rows")
    data["tier"] = data["tier"].map(TIERS)
    data["share"] = data["rows"] / data["rows_per_step"]
    data["size"] = data[size].map("{:,.4g}".format)
    order = [f"{v:,.4g}" for v in sorted(rows[size].unique())]
    chart = alt.Chart(data).mark_bar().encode(
        x=alt.X("size:O", sort=order, title="table GiB", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("sum(share):Q", title="share of the step's rows", axis=alt.Axis(format="%"),
                scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("tier:N", sort=list(TIERS.values()),
                        scale=alt.Scale(domain=list(TIERS.values()), range=TIER_COLORS)),
        order=alt.Order("tier_order:Q"),
        tooltip=["placement:N", "size:O", "tier:N", alt.Tooltip("share:Q", format=".1%"),
                 alt.Tooltip("rows:Q", title="rows/step", format=",.0f")],
    ).transform_calculate(tier_order="indexof(['HBM', 'host DRAM', 'drive'], datum.tier)").properties(
        width=WIDTH, height=HEIGHT * 0.7)
    return chart.facet(row=alt.Row("placement:N", title=None), column=_PHASE_COLUMN).properties(
        title="Rows per step by tier (steady state; the caches' warm-up is in the CSV)")


def timeline_chart(events_df: pd.DataFrame, title: str, color_by: str = "actor") -> alt.Chart | alt.FacetChart:
    """Gantt chart of one step: a row per actor, bars from start_s to end_s.

    If the frame has a ``source`` column (predicted / measured), the sources are
    stacked vertically with a shared time axis.  Time is shown in µs for steps
    shorter than 2 ms, otherwise in ms.
    """
    _check(events_df, ["actor", "name", "start_s", "end_s"])
    if color_by not in ("actor", "name"):
        raise ValueError("color_by must be 'actor' or 'name'")
    span = float(events_df["end_s"].max() - min(events_df["start_s"].min(), 0.0))
    unit, scale = ("µs", 1e6) if span < 2e-3 else ("ms", 1e3)
    data = events_df.assign(start=events_df["start_s"] * scale, end=events_df["end_s"] * scale,
                            duration=(events_df["end_s"] - events_df["start_s"]) * scale)
    present = list(dict.fromkeys(data["actor"]))
    actor_order = [a for a in ACTORS if a in present] + [a for a in present if a not in ACTORS]
    color = alt.Color(f"{color_by}:N", title=color_by)
    if color_by == "actor":  # fixed colours for the known actors, stall in red
        palette = dict(zip(ACTORS, ["#4c78a8", "#72b7b2", "#54a24b", "#f58518", "#b279a2", "#e45756", "#9d755d", "#eeca3b"]))
        spare = iter(["#9d755d", "#bab0ac", "#eeca3b", "#ff9da6", "#79706e"] * 10)
        color = alt.Color("actor:N", sort=actor_order, scale=alt.Scale(
            domain=actor_order, range=[palette.get(a) or next(spare) for a in actor_order]))
    tooltip = ["actor:N", "name:N", alt.Tooltip("start:Q", title=f"start ({unit})", format=",.1f"),
               alt.Tooltip("end:Q", title=f"end ({unit})", format=",.1f"),
               alt.Tooltip("duration:Q", title=f"duration ({unit})", format=",.1f")]
    if "source" in data:
        tooltip.append("source:N")
    chart = alt.Chart(data).mark_bar(height={"band": 0.7}).encode(
        x=alt.X("start:Q", title=f"time in step ({unit})"), x2="end:Q",
        y=alt.Y("actor:N", sort=actor_order, title=None), color=color, tooltip=tooltip,
    ).properties(width=640, height=max(60, 24 * len(actor_order)))
    if "source" in data:
        sources = list(dict.fromkeys(data["source"]))
        return chart.facet(row=alt.Row("source:N", sort=sources, title=None)).properties(title=title)
    return chart.properties(title=title)


def hidden_summary(df: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Per (placement, phase): the largest table size still hidden and the first
    size where it stops being hidden (overhead_vs_hbm > threshold), among the sizes that
    fit the machine; and the largest size that fits, the first that does not, and why.

    ``largest_hidden_*`` is the last hidden size before the first unhidden one
    (None if the smallest size is already not hidden); ``first_unhidden_*`` is
    None if every size is hidden.  Rows with NaN overhead (no data, e.g. an
    all-HBM table that does not fit) are ignored.
    """
    _check(df, ["table_bytes", "placement", "phase", "overhead_vs_hbm"])
    rows = []
    order = {p: i for i, p in enumerate(ENGRAM_PLACEMENTS + PHASES)}
    fits = df["fits"].astype(bool) if "fits" in df else pd.Series(True, index=df.index)
    groups = sorted(df.groupby(["placement", "phase"]),
                    key=lambda kv: (order.get(kv[0][0], 99), kv[0][0], order.get(kv[0][1], 99), kv[0][1]))
    for (placement, phase), everything in groups:
        # Sizes that do not fit the machine are never hidden: the verdict is about the sizes that fit
        # (and have an overhead: NaN means no data).
        unfit = everything[~fits[everything.index]].sort_values("table_bytes")
        group = everything[fits[everything.index]].dropna(subset=["overhead_vs_hbm"]).sort_values("table_bytes")
        if group.empty and unfit.empty:
            continue
        sizes = group["table_bytes"].astype(int).tolist()
        over = (group["overhead_vs_hbm"] > threshold).tolist()
        first = over.index(True) if True in over else None
        last_hidden = (len(sizes) - 1 if first is None else first - 1)
        largest = sizes[last_hidden] if last_hidden >= 0 else None
        first_size = sizes[first] if first is not None else None
        rows.append({
            "placement": placement, "phase": phase,
            "largest_hidden_bytes": largest,
            "largest_hidden_gib": None if largest is None else largest / GiB,
            "first_unhidden_bytes": first_size,
            "first_unhidden_gib": None if first_size is None else first_size / GiB,
            "overhead_at_first_unhidden": None if first is None else float(group["overhead_vs_hbm"].iloc[first]),
            "largest_fitting_gib": float(group["table_bytes"].max() / GiB) if len(group) else None,
            "first_unfit_gib": float(unfit["table_bytes"].iloc[0] / GiB) if len(unfit) else None,
            "unfit_reason": str(unfit["capacity"].iloc[0]) if len(unfit) and "capacity" in unfit else None,
        })
    columns = ["placement", "phase", "largest_hidden_bytes", "largest_hidden_gib",
               "first_unhidden_bytes", "first_unhidden_gib", "overhead_at_first_unhidden",
               "largest_fitting_gib", "first_unfit_gib", "unfit_reason"]
    return pd.DataFrame(rows, columns=columns, dtype=object)


def sweep_sections(df: pd.DataFrame, threshold: float, timeline: pd.DataFrame | None = None,
                   timeline_title: str = "One step") -> list[tuple[str, object]]:
    """The standard report layout, ready for ``reports.html.write_report``."""
    summary = hidden_summary(df, threshold).drop(columns=["largest_hidden_bytes", "first_unhidden_bytes"])
    sections = [
        ("Summary", f"A placement counts as hidden while its step-time overhead versus an all-HBM table "
                    f"stays at or below {threshold * 100:g} %."),
        ("Hidden up to", summary),
        ("Overhead", overhead_chart(df, threshold)),
        ("Throughput", throughput_chart(df)),
        ("Exposed stall", stall_chart(df)),
    ]
    if "window_use" in df:
        sections.append(("Window used by the fetch", window_chart(df)))
    sections.append(("Bytes per step", bytes_chart(df)))
    if {"placement", *TIERS} <= set(df.columns) and df["placement"].isin(["hbm_cache", "ssd"]).any():
        sections.append(("Rows by tier", tiers_chart(df)))
    if timeline is not None:
        sections.append(("Timeline", timeline_chart(timeline, timeline_title)))
    return sections


# --------------------------------------------------------------------------
# Synthetic data (tests, demos)
# --------------------------------------------------------------------------

def synthetic_sweep(sizes_gib=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), threshold: float = 0.01,
                    hbm_gib: float = 60.0, host_gib: float = 1024.0) -> pd.DataFrame:
    """A plausible-looking sweep frame with every column in SWEEP_COLUMNS.

    Overheads grow with table size at placement-specific rates so that the
    placements cross ``threshold`` at different sizes.  The all-HBM rows have
    NaN throughput/overhead where the table does not fit in HBM.
    """
    compute = {"prefill": 0.25, "decode": 0.030}
    tokens = {"prefill": 8192, "decode": 64}
    fetch_bytes = {"prefill": 2.0 * GiB, "decode": 24.0 * MiB}
    base = {"host_dma": 0.002, "host_uva": 0.006, "hbm_cache": 0.0005, "ssd": 0.05}
    rows = []
    for gib in sizes_gib:
        for phase in PHASES:
            for placement in ENGRAM_PLACEMENTS:
                hit = 0.0 if placement != "hbm_cache" else min(1.0, 16.0 / gib)
                dram_share = min(1.0, 64.0 / gib) if placement == "ssd" else 0.0
                host = {"hbm": 0.0, "hbm_cache": 1.0 - hit}.get(placement, 1.0) * fetch_bytes[phase]
                n_rows = fetch_bytes[phase] / 160
                tiers = {"rows_per_step": n_rows, "rows_hbm_per_step": n_rows * (1 - host / fetch_bytes[phase]),
                         "rows_dram_per_step": n_rows * (dram_share if placement == "ssd" else host / fetch_bytes[phase]),
                         "rows_drive_per_step": n_rows * (1 - dram_share) if placement == "ssd" else 0.0}
                tiers["drive_reads_per_step"] = tiers["rows_drive_per_step"]
                overhead = 0.0 if placement == "hbm" else base[placement] * (gib / 4) ** 0.8 * (1.5 if phase == "decode" else 1.0)
                if placement == "hbm" and gib > hbm_gib:
                    overhead = np.nan
                fits_hbm = placement != "hbm" or gib <= hbm_gib
                fits_host = placement == "hbm" or gib <= host_gib
                step = compute[phase] * (1 + overhead)
                fetch = host / (50e9 if placement != "host_uva" else 20e9)
                stall = step - compute[phase]
                rows.append({
                    "table_bytes": int(gib * GiB), "table_gib": float(gib), "placement": placement, "phase": phase,
                    "step_time_s": step, "tokens_per_s": tokens[phase] / step, "exposed_stall_s": stall,
                    "fetch_time_s": fetch,
                    "overlap_fraction": np.nan if placement == "hbm" else overlap_fraction(stall, fetch),
                    "overhead_vs_hbm": overhead, "host_bytes_per_step": host,
                    "hbm_bytes_per_step": fetch_bytes[phase] - host,
                    "link_utilisation": host / step / 55e9 if step == step else np.nan,
                    "window_use": fetch / (0.4 * compute[phase]) if fetch else np.nan,
                    "fits_hbm": fits_hbm, "fits_host": fits_host, "fits": fits_hbm and fits_host,
                    "capacity": "" if fits_hbm and fits_host else (
                        f"does not fit: {'HBM' if not fits_hbm else 'host memory'}, needs {gib:g} GiB, has "
                        f"{hbm_gib if not fits_hbm else host_gib:g} GiB"),
                    "hidden": bool(overhead <= threshold) and fits_hbm and fits_host,
                    "steps": 100, "sim_events": 1000, "replayed_steps": 90, "fits_ssd": True,
                    "dram_cache_gib": 64.0 if placement == "ssd" else 0.0, **tiers,
                    "cache_warmup_steps": 16 if placement in ("hbm_cache", "ssd") else 0, "cache_filled": True,
                })
    return pd.DataFrame(rows, columns=SWEEP_COLUMNS)


def synthetic_timeline(with_source: bool = True) -> pd.DataFrame:
    """Events of one decode step across the Engram actors (seconds)."""
    events = []
    for source, slow in (("predicted", 1.0), ("measured", 1.15)):
        for i, layer in enumerate((2, 15)):
            t = i * 500e-6
            events += [
                (CPU_HASH, f"L{layer} hash", t, t + 40e-6 * slow, source),
                (CPU_GATHER, f"L{layer} gather", t + 40e-6 * slow, t + 160e-6 * slow, source),
                (H2D_LINK, f"L{layer} copy", t + 160e-6 * slow, t + 420e-6 * slow, source),
                (GPU_COMPUTE, f"layers before L{layer}", t, t + 400e-6, source),
            ]
            if slow > 1:
                events.append((STALL, f"L{layer} wait", t + 400e-6, t + 420e-6 * slow, source))
        events.append((GPU_COMPUTE, "tail", 1000e-6, 1300e-6, source))
        if not with_source:
            break
    df = pd.DataFrame(events, columns=["actor", "name", "start_s", "end_s", "source"])
    return df if with_source else df.drop(columns="source")
