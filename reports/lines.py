"""One line per placement over table size, drawn so that every placement stays visible.

Placements often predict exactly the same curve (all-HBM and host_dma when
the copy is hidden; every placement at zero stall).  Drawn plainly, the last
one hides the others.  Here the curves of a panel that coincide share the
dash period between them: with k identical curves each draws one dash of
every k, offset by its rank, so the line shows all k colours in turn; the
chart says in its subtitle which curves coincide.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from vocab.placements import ENGRAM_PLACEMENTS
from vocab.tables import PHASES

# Fixed colours, so a placement has one colour in every chart.
PLACEMENT_COLORS = dict(zip(ENGRAM_PLACEMENTS, ["#4c78a8", "#f58518", "#e45756", "#54a24b"]))
_SPARE_COLORS = ["#b279a2", "#9d755d", "#bab0ac", "#eeca3b", "#ff9da6", "#79706e"]

_PANEL_ORDER = {p: i for i, p in enumerate(PHASES)}
SOLID = "solid"
_DASH_PX = 7
# Relative difference below which two curves count as identical (they draw on the same pixels).
_SAME_RTOL = 1e-6


def placement_order(placements) -> list[str]:
    present = set(placements)
    return [p for p in ENGRAM_PLACEMENTS if p in present] + sorted(present - set(ENGRAM_PLACEMENTS))


def placement_color(placements) -> alt.Color:
    """Colour by placement, with a legend listing only the placements drawn."""
    order = placement_order(placements)
    spare = iter(_SPARE_COLORS * 10)
    return alt.Color("placement:N", title="placement", sort=order, scale=alt.Scale(
        domain=order, range=[PLACEMENT_COLORS.get(p) or next(spare) for p in order]))


def _same_curve(a: pd.Series, b: pd.Series) -> bool:
    if not a.index.equals(b.index):
        return False
    x, y = a.to_numpy(dtype=float), b.to_numpy(dtype=float)
    return bool(np.array_equal(np.isnan(x), np.isnan(y))
                and np.allclose(x[~np.isnan(x)], y[~np.isnan(y)], rtol=_SAME_RTOL, atol=0.0))


def coinciding(df: pd.DataFrame, field: str, panel: str = "phase") -> list[tuple[str, list[str]]]:
    """[(panel value, [placements with identical curves of `field`]), ...]: groups of two or more."""
    groups_out = []
    panels = sorted(df.groupby(panel, sort=False), key=lambda kv: _PANEL_ORDER.get(kv[0], len(_PANEL_ORDER)))
    for key, rows in panels:
        curves = {p: g.groupby("table_gib")[field].mean().sort_index() for p, g in rows.groupby("placement")}
        groups: list[list[str]] = []
        for placement in placement_order(curves):
            home = next((g for g in groups if _same_curve(curves[g[0]], curves[placement])), None)
            if home is None:
                groups.append([placement])
            else:
                home.append(placement)
        groups_out += [(key, g) for g in groups if len(g) > 1]
    return groups_out


def _dash_slot(rank: int, of: int) -> str:
    return SOLID if of == 1 else f"{rank + 1}/{of}"


def _dash_pattern(slot: str) -> list[int]:
    """Dash `rank` of every `of`: a zero-length dash and a gap shift it along the period."""
    if slot == SOLID:
        return [1, 0]
    rank, of = (int(n) for n in slot.split("/"))
    rank -= 1
    return [_DASH_PX, (of - 1) * _DASH_PX] if rank == 0 else [0, rank * _DASH_PX, _DASH_PX,
                                                               (of - 1 - rank) * _DASH_PX]


def with_dashes(df: pd.DataFrame, field: str, panel: str = "phase") -> tuple[pd.DataFrame, str]:
    """`df` with a `dash` column (which dash each row's curve draws) and a note naming the identical curves
    ("" when none coincide)."""
    groups = coinciding(df, field, panel)
    slot = {(key, p): _dash_slot(i, len(g)) for key, g in groups for i, p in enumerate(g)}
    dash = [slot.get((k, p), SOLID) for k, p in zip(df[panel], df["placement"])]
    where: dict[tuple[str, ...], list[str]] = {}
    for key, g in groups:
        where.setdefault(tuple(g), []).append(str(key))
    note = "; ".join(f"{' = '.join(g)} ({', '.join(keys)})" for g, keys in where.items())
    return df.assign(dash=dash), (f"identical curves, drawn in alternating dashes: {note}" if note else "")


def dash_encoding(data: pd.DataFrame) -> alt.StrokeDash:
    slots = sorted(set(data["dash"]), key=lambda s: (s != SOLID, s))
    return alt.StrokeDash("dash:N", legend=None,
                          scale=alt.Scale(domain=slots, range=[_dash_pattern(s) for s in slots]))


def placement_lines(data: pd.DataFrame, x: alt.X, y: alt.Y, tooltip: list) -> alt.Chart:
    """Lines with points, one per placement, taking their data from the enclosing layer or facet
    (`data` only picks the colours and dashes; it needs the `dash` column of with_dashes)."""
    return alt.Chart().mark_line(point=True).encode(
        x=x, y=y, color=placement_color(data["placement"]), strokeDash=dash_encoding(data),
        tooltip=["placement:N", "phase:N", alt.Tooltip("table_gib:Q", title="GiB", format=",.4~g"), *tooltip],
    )


def subtitle(*lines: str) -> list[str]:
    """The non-empty lines, for alt.TitleParams(subtitle=...)."""
    return [line for line in lines if line]
