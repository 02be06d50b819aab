"""Reporting layer: chart specs, hidden_summary, and the self-contained HTML report."""

from __future__ import annotations

import re

import altair as alt
import numpy as np
import pandas as pd
import pytest

import reports
import reports.compare_charts as cc
import reports.html as rhtml
from vocab.placements import ENGRAM_PLACEMENTS as PLACEMENTS
from vocab.tables import SWEEP_COLUMNS
from vocab.units import GiB

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sweep() -> pd.DataFrame:
    return reports.synthetic_sweep()


def _spec(chart) -> dict:
    return chart.to_dict()


def _rows(spec: dict) -> list[dict]:
    """All inline data rows of a spec (Altair stores them under 'datasets')."""
    return [row for rows in spec.get("datasets", {}).values() for row in rows]


# --------------------------------------------------------------------------- data

def test_synthetic_sweep_has_every_column(sweep):
    assert list(sweep.columns) == SWEEP_COLUMNS
    assert set(sweep["placement"]) == set(PLACEMENTS)
    assert set(sweep["phase"]) == {"prefill", "decode"}
    assert sweep.loc[sweep["placement"] == "hbm", "overlap_fraction"].isna().all()
    assert (sweep["hidden"] == (sweep["overhead_vs_hbm"] <= 0.01)).all()


# --------------------------------------------------------------------------- charts

@pytest.mark.parametrize("make, y_field", [
    (reports.throughput_chart, "tokens_per_s"),
    (reports.stall_chart, "exposed_stall_ms"),
])
def test_line_charts_facet_by_phase_with_log_size_axis(sweep, make, y_field):
    spec = _spec(make(sweep))
    assert spec["facet"]["column"]["field"] == "phase"
    lines, *unfit = spec["spec"]["layer"]
    # The synthetic sweep's largest all-HBM tables do not fit: those sizes are crosses off the lines.
    assert [t["filter"] for t in lines["transform"]] == ["datum.fits"]
    (cross,) = unfit
    assert cross["mark"]["shape"] == "cross" and [t["filter"] for t in cross["transform"]] == ["!datum.fits"]
    enc = lines["encoding"]
    assert enc["x"]["field"] == "table_gib" and enc["x"]["scale"]["type"] == "log"
    assert enc["y"]["field"] == y_field
    assert enc["color"]["field"] == "placement" and enc["strokeDash"]["field"] == "dash"
    assert enc["tooltip"]
    assert lines["mark"]["type"] == "line"


def test_stall_chart_is_in_milliseconds(sweep):
    rows = [r for r in _rows(_spec(reports.stall_chart(sweep))) if r["exposed_stall_s"] is not None]
    assert rows and all(r["exposed_stall_ms"] == pytest.approx(r["exposed_stall_s"] * 1e3) for r in rows)


def test_overhead_chart_has_threshold_rule_and_first_unhidden_points(sweep):
    spec = _spec(reports.overhead_chart(sweep, 0.01))
    assert spec["facet"]["column"]["field"] == "phase"
    assert "1 %" in spec["title"]["text"] and any("stops being hidden" in t for t in spec["title"]["subtitle"])
    lines, cross, rule, *points = spec["spec"]["layer"]  # the cross: sizes that do not fit
    assert lines["encoding"]["y"]["field"] == "overhead_pct" and cross["mark"]["shape"] == "cross"
    assert rule["mark"]["type"] == "rule" and rule["encoding"]["y"]["field"] == "threshold_pct"
    assert points and all(p["mark"]["shape"] == "diamond" and p["transform"][0]["filter"].startswith(
        "(datum.mark_slot ===") for p in points)
    rows = _rows(spec)
    assert all(r["threshold_pct"] == 1.0 for r in rows)
    # the flagged points are exactly hidden_summary's first-unhidden sizes
    flagged = {(r["placement"], r["phase"], r["table_bytes"]) for r in rows if r["first_unhidden"]}
    summary = reports.hidden_summary(sweep, 0.01)
    expected = {(s.placement, s.phase, s.first_unhidden_bytes)
                for s in summary.itertuples() if s.first_unhidden_bytes is not None}
    assert flagged == expected and expected


def _facets(spec: dict) -> list[dict]:
    """Every faceted (sub)chart of a spec, through concatenations."""
    found = [spec] if "facet" in spec else []
    for key in ("vconcat", "hconcat", "concat"):
        for sub in spec.get(key, []):
            found += _facets(sub)
    return found


def _panel_rows(top: dict, facet: dict, value: str) -> list[tuple[dict, list[dict]]]:
    """Per layer of a faceted chart, the rows it draws in the panel `value`: the facet's rows of that
    value, or the layer's own data (which a facet does not split) when it carries some."""
    rows = top["datasets"][facet["data"]["name"]]
    field = facet["facet"]["column"]["field"]
    layers = facet["spec"].get("layer", [facet["spec"]])
    out = []
    for layer in layers:
        if "data" in layer:
            own = layer["data"]
            out.append((layer, own.get("values") or top["datasets"][own["name"]]))
        else:
            out.append((layer, [r for r in rows if r[field] == value]))
    return out


def test_window_chart_panels_hold_only_their_phase(sweep):
    spec = _spec(reports.charts.window_chart(sweep))
    for phase in ("prefill", "decode"):
        for layer, rows in _panel_rows(spec, spec, phase):
            assert rows and all(r.get("phase") == phase for r in rows), layer["mark"]
        # The panel's lines are the table's values of this phase.
        lines = _panel_rows(spec, spec, phase)[0][1]
        want = sweep[(sweep["phase"] == phase) & (sweep["placement"] != "hbm")]
        drawn = sorted(r["window_pct"] for r in lines if r["window_pct"] is not None)
        assert drawn == pytest.approx(sorted((want["window_use"] * 100).dropna()))
    # hbm is not drawn, so the legend does not list it
    assert spec["spec"]["layer"][0]["encoding"]["color"]["scale"]["domain"] == ["host_dma", "host_uva", "hbm_cache", "ssd"]


def _every_chart(sweep):
    compare = _compare_frame(sweep)
    sections = reports.sweep_sections(sweep, 0.01, reports.synthetic_timeline())
    sections += cc.report_sections(sweep, compare)
    return [(h, c) for h, c in sections if isinstance(c, alt.TopLevelMixin)]


def test_no_layer_of_a_faceted_chart_carries_its_own_data(sweep):
    """A layer with its own data ignores the facet and draws every phase in every panel."""
    for heading, chart in _every_chart(sweep):
        spec = _spec(chart)
        for facet in _facets(spec):
            for layer in facet["spec"].get("layer", [facet["spec"]]):
                assert "data" not in layer, (heading, layer.get("mark"))


def _compare_frame(sweep, table_gib=(4.0, 64.0), matched=True):
    """Compare rows for hbm and host_dma decode records at the given sizes (prediction = sweep, measured 10 %
    slower)."""
    rows = []
    for gib in table_gib:
        for placement in ("hbm", "host_dma"):
            base = sweep[(sweep["placement"] == placement) & (sweep["phase"] == "decode")].iloc[0]
            rows.append({"record": f"{placement}-{gib:g}.json", "config": "c", "placement": placement,
                         "phase": "decode", "table_gib": gib, "profile": "h100-sxm", "profile_matched": matched,
                         "predicted_tokens_per_s": base["tokens_per_s"],
                         "measured_tokens_per_s": base["tokens_per_s"] / 1.1, "rel_err_tokens_per_s": 0.1,
                         "predicted_overhead_vs_hbm": 0.0, "measured_overhead_vs_hbm": 0.01,
                         "predicted_exposed_stall_s": 0.0, "measured_exposed_stall_s": 1e-4,
                         "predicted_hbm_bytes_per_step": 1.0, "measured_hbm_bytes_per_step": 1.0,
                         "overhead_error_pp": 1.0})
    return pd.DataFrame(rows)


def test_identical_curves_are_dashed_apart_and_named(sweep):
    same = sweep.copy()
    # host_dma's throughput equals hbm's in decode only
    hbm = same[(same["placement"] == "hbm") & (same["phase"] == "decode")].set_index("table_gib")["tokens_per_s"]
    dma = (same["placement"] == "host_dma") & (same["phase"] == "decode")
    same.loc[dma, "tokens_per_s"] = same.loc[dma, "table_gib"].map(hbm).to_numpy()
    spec = _spec(reports.throughput_chart(same))
    assert "identical curves, drawn in alternating dashes: hbm = host_dma (decode)" in spec["title"]["subtitle"]
    rows = _rows(spec)
    dash = {(r["placement"], r["phase"]): r["dash"] for r in rows}
    assert dash[("hbm", "decode")] == "1/2" and dash[("host_dma", "decode")] == "2/2"
    assert dash[("hbm", "prefill")] == dash[("host_dma", "prefill")] == "solid"
    scale = spec["spec"]["layer"][0]["encoding"]["strokeDash"]["scale"]
    patterns = dict(zip(scale["domain"], scale["range"]))
    assert patterns["1/2"] != patterns["2/2"] and sum(patterns["1/2"]) == sum(patterns["2/2"])
    # Nothing coincides in the synthetic sweep: no note, every line solid.
    plain = _spec(reports.throughput_chart(sweep))
    assert not any("identical" in t for t in plain["title"].get("subtitle", []))
    assert {r["dash"] for r in _rows(plain)} == {"solid"}


def test_overhead_subtitle_names_diamonds_only_when_drawn(sweep):
    calm = sweep.assign(overhead_vs_hbm=sweep["overhead_vs_hbm"].clip(upper=0.001))
    spec = _spec(reports.overhead_chart(calm, 0.01))
    assert not any("diamond" in t for t in spec["title"]["subtitle"])
    assert any("no placement crosses" in t for t in spec["title"]["subtitle"])
    assert all(layer["mark"].get("shape") != "diamond" for layer in spec["spec"]["layer"])
    for make in (cc.overhead_overlay, cc.stall_overlay):
        spec = _spec(make(calm, None))
        assert not any("diamond" in t for t in spec["title"]["subtitle"])


def test_records_far_from_the_sweep_or_unprofiled_get_their_own_panel(sweep):
    near = _compare_frame(sweep)
    spec = _spec(cc.throughput_overlay(sweep, near))
    assert "vconcat" not in spec and "facet" in spec          # on the sweep's axis, one chart
    assert any("circles" in t for t in spec["title"]["subtitle"])
    for compare in (_compare_frame(sweep, table_gib=(2.0 ** -12,)), _compare_frame(sweep, matched=False)):
        spec = _spec(cc.throughput_overlay(sweep, compare))
        main, away = spec["vconcat"]
        rows = spec["datasets"]
        main_rows = rows[main["data"]["name"]]
        assert {r["source"] for r in main_rows} == {cc.SWEEP}     # no record on the sweep's axis
        assert not any("circles" in t for t in main["title"]["subtitle"])
        away_rows = rows[away["data"]["name"]]
        assert {r["source"] for r in away_rows} == {cc.PREDICTED, cc.MEASURED}
        assert "apart" in away["title"]["text"] and any(
            "CPU" in t or "outside the sweep" in t for t in away["title"]["subtitle"])


def test_bytes_chart_stacks_host_and_hbm_for_largest_size(sweep):
    spec = _spec(reports.bytes_chart(sweep))
    enc = spec["spec"]["encoding"]
    assert spec["facet"]["column"]["field"] == "phase"
    assert spec["spec"]["mark"]["type"] == "bar"
    assert enc["x"]["field"] == "placement" and enc["color"]["field"] == "memory"
    assert enc["y"]["aggregate"] == "sum"
    rows = _rows(spec)
    assert {r["memory"] for r in rows} == {"HBM", "host (PCIe)"}
    assert len(rows) == 2 * 2 * len(PLACEMENTS)          # memory x phase x placement
    assert "512 GiB" in spec["title"]


def test_bytes_chart_chosen_size(sweep):
    assert "4 GiB" in _spec(reports.bytes_chart(sweep, table_bytes=4 * GiB))["title"]
    with pytest.raises(ValueError):
        reports.bytes_chart(sweep, table_bytes=3 * GiB)


def test_timeline_faceted_by_source_with_shared_x():
    spec = _spec(reports.timeline_chart(reports.synthetic_timeline(), "step"))
    assert spec["facet"]["row"]["field"] == "source"
    assert spec.get("resolve", {}).get("scale", {}).get("x", "shared") == "shared"
    enc = spec["spec"]["encoding"]
    assert enc["x"]["field"] == "start" and enc["x2"]["field"] == "end"
    assert enc["y"]["field"] == "actor" and enc["color"]["field"] == "actor"
    assert "µs" in enc["x"]["title"]                      # a 1.3 ms step is shown in µs
    assert spec["title"] == "step"


def test_timeline_without_source_and_in_ms():
    events = reports.synthetic_timeline(with_source=False)
    spec = _spec(reports.timeline_chart(events, "predicted", color_by="name"))
    assert "facet" not in spec and spec["encoding"]["color"]["field"] == "name"
    longer = events.assign(start_s=events["start_s"] * 10, end_s=events["end_s"] * 10)
    assert "(ms)" in _spec(reports.timeline_chart(longer, "t"))["encoding"]["x"]["title"]


def test_charts_reject_missing_columns(sweep):
    with pytest.raises(ValueError, match="tokens_per_s"):
        reports.throughput_chart(sweep.drop(columns="tokens_per_s"))


# --------------------------------------------------------------------------- hidden_summary

def _frame(overheads_by_placement: dict[str, list[float]]) -> pd.DataFrame:
    rows = [{"table_bytes": (2**i) * GiB, "placement": p, "phase": "decode", "overhead_vs_hbm": o}
            for p, overheads in overheads_by_placement.items() for i, o in enumerate(overheads)]
    return pd.DataFrame(rows).sample(frac=1, random_state=0)   # order must not matter


def test_hidden_summary_hand_made():
    summary = reports.hidden_summary(_frame({
        "host_dma": [0.001, 0.005, 0.03, 0.2],    # stops at the 3rd size
        "hbm_cache": [0.0, 0.001, 0.002, 0.01],   # always hidden (<= is hidden)
        "host_uva": [0.05, 0.1, 0.2, 0.4],        # never hidden
        "hbm": [0.0, 0.0, np.nan, np.nan],        # NaN = no data (does not fit): ignored
    }), threshold=0.01).set_index("placement")
    assert list(summary.index) == ["hbm", "host_dma", "host_uva", "hbm_cache"]
    dma = summary.loc["host_dma"]
    assert dma.largest_hidden_bytes == 2 * GiB and dma.largest_hidden_gib == 2.0
    assert dma.first_unhidden_bytes == 4 * GiB and dma.first_unhidden_gib == 4.0
    assert dma.overhead_at_first_unhidden == 0.03
    cache = summary.loc["hbm_cache"]
    assert cache.largest_hidden_bytes == 8 * GiB and cache.first_unhidden_bytes is None
    uva = summary.loc["host_uva"]
    assert uva.largest_hidden_bytes is None and uva.first_unhidden_bytes == 1 * GiB
    hbm = summary.loc["hbm"]
    assert hbm.largest_hidden_bytes == 2 * GiB and hbm.first_unhidden_bytes is None


def test_hidden_summary_one_row_per_placement_and_phase(sweep):
    summary = reports.hidden_summary(sweep, 0.01)
    assert len(summary) == len(PLACEMENTS) * 2
    assert not summary.duplicated(["placement", "phase"]).any()


# --------------------------------------------------------------------------- HTML report

@pytest.fixture(scope="module")
def report(tmp_path_factory, sweep):
    out = tmp_path_factory.mktemp("report") / "out"
    sections = reports.sweep_sections(sweep, 0.01, reports.synthetic_timeline(), "One decode step")
    sections.append(("Notes", "First <paragraph>.\n\nSecond paragraph."))
    written = reports.write_report(out, "Engram sweep", sections)
    n_charts = sum(isinstance(c, alt.TopLevelMixin) for _, c in sections)
    return out, written, n_charts


def test_report_files(report):
    out, written, n_charts = report
    assert written["report.html"] == out / "report.html"
    pngs = sorted(name for name in written if name.endswith(".png"))
    assert len(pngs) == n_charts
    assert sorted(p.name for p in out.iterdir()) == sorted(written)
    for name in pngs:
        data = written[name].read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000


def test_report_html_is_self_contained(report):
    out, written, n_charts = report
    page = (out / "report.html").read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.I)            # nothing loaded
    assert not re.search(r"""<(link|img|iframe)[^>]*(src|href)\s*=\s*["']?https?:""", page, re.I)
    assert "window.vegaEmbed=" in page                                      # bundle inline
    assert page.count("vegaEmbed(document.getElementById(") == n_charts
    assert len(re.findall(r'<div class="chart" id="[^"]+"', page)) == n_charts
    assert "<h1>Engram sweep</h1>" in page and "<h2>Overhead</h2>" in page
    assert '<table class="dataframe"' in page                               # hidden_summary table
    assert "<p>First &lt;paragraph&gt;.</p>" in page and "<p>Second paragraph.</p>" in page


def test_write_report_is_atomic(tmp_path, sweep, monkeypatch):
    out = tmp_path / "out"
    calls = []

    def flaky_png(spec, scale=2):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("renderer died")
        return PNG_MAGIC + b"fake"

    monkeypatch.setattr(rhtml, "chart_png", flaky_png)
    sections = [("A", reports.stall_chart(sweep)), ("B", reports.throughput_chart(sweep))]
    with pytest.raises(RuntimeError, match="renderer died"):
        reports.write_report(out, "t", sections)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []                                   # no temp dir left

    # an existing report survives a failed rewrite untouched
    out.mkdir()
    (out / "report.html").write_text("old")
    calls.clear()
    with pytest.raises(RuntimeError):
        reports.write_report(out, "t", sections)
    assert [p.name for p in out.iterdir()] == ["report.html"]
    assert (out / "report.html").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_write_report_rejects_unknown_content(tmp_path):
    with pytest.raises(TypeError):
        reports.write_report(tmp_path / "out", "t", [("x", 42)])
    assert list(tmp_path.iterdir()) == []


def test_write_chart(tmp_path, sweep):
    written = reports.write_chart(reports.bytes_chart(sweep), tmp_path / "charts" / "bytes")
    assert set(written) == {"bytes.png", "bytes.html"}
    assert written["bytes.png"].read_bytes().startswith(PNG_MAGIC)
    page = written["bytes.html"].read_text(encoding="utf-8")
    assert "window.vegaEmbed=" in page and not re.search(r"<script[^>]*\bsrc\s*=", page, re.I)
    assert sorted(p.name for p in (tmp_path / "charts").iterdir()) == ["bytes.html", "bytes.png"]


def test_sizes_that_do_not_fit_are_never_hidden_and_the_summary_says_where_fitting_stops():
    sweep = reports.synthetic_sweep(threshold=0.01, hbm_gib=60.0, host_gib=100.0)
    unfit = sweep[~sweep["fits"]]
    assert len(unfit) and not unfit["hidden"].any() and unfit["capacity"].str.startswith("does not fit: ").all()
    summary = reports.hidden_summary(sweep, 0.01).set_index(["placement", "phase"])
    hbm = summary.loc[("hbm", "decode")]
    assert hbm["largest_fitting_gib"] == 32 and hbm["first_unfit_gib"] == 64 and "HBM" in hbm["unfit_reason"]
    dma = summary.loc[("host_dma", "decode")]
    assert dma["largest_fitting_gib"] == 64 and dma["first_unfit_gib"] == 128
    assert "host memory" in dma["unfit_reason"]
    # The hidden verdict only ever names sizes that fit.
    for row in summary.itertuples():
        for size in (row.largest_hidden_gib, row.first_unhidden_gib):
            assert size is None or row.largest_fitting_gib is not None and size <= row.largest_fitting_gib
    all_fit = reports.synthetic_sweep(hbm_gib=1e6, host_gib=1e6)
    assert all_fit["fits"].all()
    assert len(_spec(reports.overhead_chart(all_fit, 0.01))["spec"]["layer"]) >= 1
    assert "crosses" not in " ".join(_spec(reports.throughput_chart(all_fit))["title"]["subtitle"])


def test_javascript_bundle_is_built_once_and_kept(tmp_path, monkeypatch):
    report_html = rhtml
    monkeypatch.setenv("ENGRAM_SIM_CACHE", str(tmp_path))
    report_html.javascript_bundle.cache_clear()
    built = report_html.javascript_bundle()
    assert [p.name.startswith("vega-bundle-") for p in tmp_path.iterdir()] == [True]
    report_html.javascript_bundle.cache_clear()
    monkeypatch.setattr(report_html, "_build_bundle", lambda: pytest.fail("rebuilt an identical bundle"))
    assert report_html.javascript_bundle() == built
    report_html.javascript_bundle.cache_clear()


def test_tier_bars_are_labelled_by_the_size_asked_for():
    # A table's rows round it a little over the size asked (prime row counts): the bars say 1, not 1.001.
    rows = pd.DataFrame({"placement": "ssd", "phase": "decode", "table_gib": [1.000855, 2.000788],
                         "table_gib_asked": [1.0, 2.0], "rows_per_step": 100.0, "rows_hbm_per_step": 0.0,
                         "rows_dram_per_step": [100.0, 40.0], "rows_drive_per_step": [0.0, 60.0]})
    spec = reports.charts.tiers_chart(rows).to_dict()
    sizes = {v["size"] for v in next(iter(spec["datasets"].values()))}
    assert sizes == {"1", "2"}
