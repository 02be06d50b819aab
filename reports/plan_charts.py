"""The planner's chart: the budget frontier, table size against overhead, one line per plan.

Takes the planner's points and plans (tools.plan POINT_COLUMNS and PLAN_COLUMNS
frames) and returns an Altair chart; it touches no disk (reports.html writes it).
"""

from __future__ import annotations

import altair as alt
import pandas as pd

from reports.lines import PLACEMENT_COLORS, placement_order
from vocab.placements import ENGRAM_PLACEMENTS

WIDTH, HEIGHT = 460, 300
# Overhead axis ticks (%): the symlog scale crowds the default ones into exponents.
OVERHEAD_TICKS = [0, 0.5, 1, 2, 3, 5, 10, 20, 50, 100, 200, 500]
BASELINE_TITLES = {"none": "no Engram", "hbm": "the table in HBM"}
_SPARE = ["#b279a2", "#9d755d", "#72b7b2", "#eeca3b", "#ff9da6", "#79706e", "#bab0ac"]


def _label(placement: str, mix: str) -> str:
    return placement if mix == "-" else f"{placement} ({mix})"


def _answer(table_gib) -> str:
    return "no size within the budget" if table_gib is None or pd.isna(table_gib) else f"{table_gib:,.3g} GiB"


def _setting(df: pd.DataFrame) -> pd.Series:
    return df["profile"] + ", batch " + df["batch"].astype(str) + ", layers " + df["layers"]


def _series_colors(labels: pd.DataFrame) -> alt.Scale:
    """A placement keeps its colour of every other chart; its further cache mixes take spare colours."""
    spare = iter(_SPARE * 10)
    order, colors, used = [], [], set()
    for placement in placement_order(labels["placement"]):
        for label in labels.loc[labels["placement"] == placement, "series"].drop_duplicates():
            base = PLACEMENT_COLORS.get(placement) if placement in ENGRAM_PLACEMENTS else None
            order.append(label)
            colors.append(base if base and base not in used else next(spare))
            used.add(colors[-1])
    return alt.Scale(domain=order, range=colors)


def frontier_data(points: pd.DataFrame, plans: pd.DataFrame, max_overhead: float) -> pd.DataFrame:
    """One row per (plan, size) evaluated, the DES's figures where it ran, with the answer flagged."""
    best = points.assign(des_first=points["method"] != "des").sort_values(["plan", "grid_index", "des_first"])
    data = best.drop_duplicates(["plan", "grid_index"]).copy()
    answers = plans.dropna(subset=["table_gib_asked"]).set_index("plan")["table_gib_asked"]
    data["answer"] = [answers.get(p) == t for p, t in zip(data["plan"], data["table_gib_asked"])]
    # The answer goes in the legend: beside the dots, labels collide with the lines and the budget rule.
    sizes = plans.set_index("plan")["table_gib"]
    data["series"] = [f"{_label(p, m)}: {_answer(sizes.get(k))}"
                      for k, p, m in zip(data["plan"], data["placement"], data["mix"])]
    data["setting"] = _setting(data)
    data["overhead_pct"] = 100 * data["overhead"]
    data["budget_pct"] = 100 * max_overhead
    data["fits"] = data["fits"].astype(bool)
    return data.sort_values(["plan", "table_gib_asked"])


def frontier_chart(points: pd.DataFrame, plans: pd.DataFrame, meta: dict) -> alt.TopLevelMixin:
    """Overhead against table size per plan: lines over the sizes that fit, crosses where they do not, a ringed
    dot on each plan's answer, the budget as a dashed rule."""
    budget = meta["max_overhead"]
    data = frontier_data(points, plans, budget)
    x = alt.X("table_gib_asked:Q", title="Engram table size (GiB, log scale)",
              scale=alt.Scale(type="log", base=2), axis=alt.Axis(format="~g"))
    top = max(float(data["overhead_pct"].max()), 100 * budget)
    ticks = [t for t in OVERHEAD_TICKS if t <= top * 1.5] or [0]
    y = alt.Y("overhead_pct:Q", title=f"throughput overhead vs {BASELINE_TITLES[meta['baseline']]} (%)",
              scale=alt.Scale(type="symlog", constant=0.5), axis=alt.Axis(values=ticks, format="~r"))
    color = alt.Color("series:N", title="plan: its answer", scale=_series_colors(data),
                      legend=alt.Legend(orient="bottom", columns=2, labelLimit=320))
    tooltip = ["series:N", "setting:N", alt.Tooltip("table_gib_asked:Q", title="GiB", format=",.4~g"),
               alt.Tooltip("overhead_pct:Q", title="overhead %", format=".3g"), "method:N", "reason:N"]
    base = alt.Chart()
    layers = [
        base.transform_filter("datum.fits").mark_line(point=alt.OverlayMarkDef(size=30)).encode(
            x=x, y=y, color=color, detail="plan:N", tooltip=tooltip),
        base.transform_filter("datum.answer").mark_point(size=160, filled=True, stroke="black",
                                                          strokeWidth=1.5).encode(
            x=x, y=y, color=color, tooltip=tooltip),
        # Drawn after the answers: the size past an answer that does not fit sits right beside it.
        base.transform_filter("!datum.fits").mark_point(shape="cross", size=150, filled=True, stroke="black",
                                                         strokeWidth=0.5).encode(
            x=x, y=y, color=color, tooltip=[*tooltip, "capacity:N"]),
        base.mark_rule(strokeDash=[6, 4], color="black").encode(y=alt.Y("mean(budget_pct):Q")),
        base.mark_text(align="right", baseline="bottom", dx=-2, dy=-3, fontSize=12).encode(
            x=alt.value(WIDTH), y=alt.Y("mean(budget_pct):Q"), text=alt.value(f"budget {100 * budget:g} %")),
    ]
    title = alt.TitleParams(
        f"Budget frontier: {meta['config']}, at most {budget:.1%} overhead",
        subtitle=["ringed dots: each plan's answer (in the legend), the largest size within the budget; dashed rule: the "
                  "budget;", "crosses: the configuration does not fit the machine's memory there (never an answer)"])
    chart = alt.layer(*layers, data=data).properties(width=WIDTH, height=HEIGHT)
    if data["setting"].nunique() > 1:
        return chart.facet(facet=alt.Facet("setting:N", title=None), columns=2).properties(title=title)
    return chart.properties(title=title)
