"""Charts and the report of serving runs: chart specs from small synthetic tables, and `engram-sim report` on
serving records."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import reports.serving_charts as sc
from cli.main import main
from reports.lines import PLACEMENT_COLORS
from vocab.records import overhead, read_record, write_record
from vocab.serving import BATCH_COLUMNS, REQUEST_COLUMNS, batch_table, request_table, serving_summary

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def synthetic_run(run: str, steps: int = 30, requests: int = 20, slower: float = 1.0, seed: int = 0):
    """(requests, batches) of a made-up serving run: a prefill step, then decode steps."""
    rng = np.random.default_rng(seed)
    step_time = np.where(np.arange(steps) == 0, 0.1, 0.01) * slower
    start = np.concatenate([[0.0], np.cumsum(step_time)[:-1]])
    sequences = np.maximum(1, requests - np.arange(steps) // 2)
    batches = batch_table(step=np.arange(steps), start_s=start, step_time_s=step_time, sequences=sequences,
                          prefill_tokens=np.where(np.arange(steps) == 0, 64 * requests, 0),
                          decode_tokens=np.where(np.arange(steps) == 0, 0, sequences),
                          graph_batch=sequences, kv_blocks_used=sequences * 4, waiting=np.zeros(steps, int))
    first = 0.1 * slower + rng.uniform(0, 0.01, requests)
    output = rng.integers(1, 20, requests)  # some one-token outputs: no time per output token
    table = request_table(arrival_s=np.zeros(requests), prompt_tokens=np.full(requests, 64), output_tokens=output,
                          scheduled_s=np.zeros(requests), first_token_s=first,
                          finish_s=first + (output - 1) * 0.01 * slower, preemptions=np.zeros(requests, int))
    return table.assign(run=run), batches.assign(run=run)


def _runs(*names_and_slowdowns, **kwargs):
    parts = [synthetic_run(name, slower=s, **kwargs) for name, s in names_and_slowdowns]
    return (pd.concat([r for r, _ in parts], ignore_index=True), pd.concat([b for _, b in parts], ignore_index=True))


def _rows(spec: dict) -> list[dict]:
    return [row for rows in spec.get("datasets", {}).values() for row in rows]


def _layers(spec: dict):
    """Every unit spec (one with a mark) of a composed spec."""
    if "mark" in spec:
        yield spec
    for key in ("layer", "hconcat", "vconcat"):
        for part in spec.get(key, []):
            yield from _layers(part)
    if "spec" in spec:
        yield from _layers(spec["spec"])


# --------------------------------------------------------------------------- charts

def test_batch_chart_draws_a_panel_per_series_and_a_line_per_run():
    _, batches = _runs(("hbm", 1.0), ("host_uva", 1.1))
    spec = sc.batch_chart(batches).to_dict()
    assert len(_rows(spec)) == len(batches) == 60                  # every step, both runs
    assert spec["facet"]["row"]["field"] == "series"
    assert spec["spec"]["transform"][0]["fold"] == list(sc.BATCH_SERIES.values())
    enc = spec["spec"]["encoding"]
    assert enc["x"]["field"] == "start_s" and enc["y"]["field"] == "value" and enc["color"]["field"] == "run"
    assert enc["color"]["scale"]["domain"] == ["hbm", "host_uva"]
    assert enc["color"]["scale"]["range"] == [PLACEMENT_COLORS["hbm"], PLACEMENT_COLORS["host_uva"]]
    widths = {r["run"]: r["line_width"] for r in _rows(spec)}
    assert widths["hbm"] > widths["host_uva"]                     # the first run is drawn wider


def test_step_time_chart_is_in_ms_on_a_log_axis():
    _, batches = _runs(("hbm", 1.0), ("none", 0.9))
    spec = sc.step_time_chart(batches).to_dict()
    assert spec["encoding"]["y"]["field"] == "step_time_ms" and spec["encoding"]["y"]["scale"]["type"] == "log"
    rows = _rows(spec)
    assert len(rows) == 60 and max(r["step_time_ms"] for r in rows) == pytest.approx(100.0)
    assert set(spec["encoding"]["y"]["axis"]["values"]) <= {5, 10, 20, 50, 100}


def test_long_runs_are_averaged_in_groups_of_steps():
    _, batches = _runs(("a", 1.0), ("b", 1.2), ("c", 1.4), steps=3000)
    thinned, k = sc.thin_steps(batches)
    assert k == 3 and len(thinned) == 3000 <= sc.MAX_ROWS
    first = batches[batches.run == "b"].iloc[:3]
    group = thinned[thinned.run == "b"].iloc[0]
    assert group.start_s == first.start_s.iloc[0] and group.sequences == pytest.approx(first.sequences.mean())
    spec = sc.step_time_chart(batches).to_dict()
    assert len(_rows(spec)) == 3000 and "mean of 3 consecutive steps" in " ".join(spec["title"]["subtitle"])


def test_latency_chart_marks_each_runs_percentiles():
    requests, _ = _runs(("hbm", 1.0), ("host_uva", 1.5))
    spec = sc.latency_chart(requests).to_dict()
    assert len(spec["hconcat"]) == 2
    ttft, tpot = spec["hconcat"]
    assert ttft["title"] == "time to first token" and tpot["title"] == "time per output token"
    curves, marks = sc.latency_frames(requests, 1000)
    assert (marks.groupby(["latency", "run"]).size() == 3).all()   # p50, p90, p99 per run and latency
    n_tpot = requests.tpot_s.notna().sum()
    assert n_tpot < len(requests)                                  # one-token outputs are left out
    assert (curves.latency == "time per output token").sum() == n_tpot
    assert set(curves.unit) == {"ms"}                              # all under a second: ms
    p50 = marks[(marks.run == "hbm") & (marks.percentile == "p50") & (marks.latency == "time to first token")]
    assert p50.value.iloc[0] == pytest.approx(
        np.percentile(requests[requests.run == "hbm"].ttft_s, 50) * 1e3)
    points = [u for u in _layers(spec) if u["mark"]["type"] == "point"]
    assert points and all(u["encoding"]["shape"]["field"] == "percentile" for u in points)


def test_latency_curves_are_thinned_to_quantiles():
    requests, _ = _runs(("hbm", 1.0), requests=3000)
    curves, _ = sc.latency_frames(requests, 200)
    ttft = curves[curves.latency == "time to first token"]
    assert len(ttft) == 200 and ttft.fraction.iloc[0] == 0 and ttft.fraction.iloc[-1] == 1
    assert ttft.value.iloc[-1] == pytest.approx(requests.ttft_s.max() * 1e3)


def test_summary_table_gives_overheads_against_the_same_workload():
    runs = pd.DataFrame([
        {"run": "host_uva", "kind": "simulated", "placement": "host_uva", "workload": "w", "output_tokens_per_s": 90.0},
        {"run": "hbm", "kind": "simulated", "placement": "hbm", "workload": "w", "output_tokens_per_s": 100.0},
        {"run": "none", "kind": "simulated", "placement": "none", "workload": "w", "output_tokens_per_s": 120.0},
        {"run": "other", "kind": "simulated", "placement": "host_dma", "workload": "v", "output_tokens_per_s": 50.0},
    ])
    table = sc.summary_table(runs)
    assert table["overhead vs hbm %"].iloc[0] == pytest.approx(overhead(90, 100) * 100)
    assert table["overhead vs none %"].iloc[0] == pytest.approx(overhead(90, 120) * 100)
    assert np.isnan(table["overhead vs hbm %"].iloc[3])           # another workload: no baseline
    assert table["output tok/s"].iloc[0] == "90"
    only = sc.summary_table(runs.iloc[[0]])
    assert not any(c.startswith("overhead") for c in only.columns)


def test_serving_sections_hold_a_table_and_three_charts():
    requests, batches = _runs(("hbm", 1.0))
    summary = serving_summary(requests[REQUEST_COLUMNS], batches[BATCH_COLUMNS])
    runs = pd.DataFrame([{"run": "hbm", "kind": "simulated", "placement": "hbm", "workload": "w", **summary}])
    sections = dict(sc.serving_sections(requests, batches, runs))
    assert list(sections) == ["Summary", "Serving runs", "Batch over time", "Step time over time",
                              "Latency distributions"]
    assert list(sections["Serving runs"]["run"]) == ["hbm"]


# --------------------------------------------------------------------------- engram-sim report

TINY_SERVE = """extends = "h100-e2e-dense4b"
[workload]
phase = "serve"
[workload.requests]
count = 8
arrival = "poisson"
rate_per_s = 200
[workload.requests.prompt]
low = 16
high = 64
[workload.requests.output]
low = 4
high = 12
"""


@pytest.fixture(scope="module")
def serving_records(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    config = folder / "serve.toml"
    config.write_text(TINY_SERVE)
    paths = {}
    for placement in ("host_uva", "hbm"):
        paths[placement] = folder / f"{placement}.json"
        assert main(["simulate", str(config), "--placement", placement, "--out", str(paths[placement])]) == 0
    steady = read_record(paths["hbm"])
    steady.extra = {}  # the same record without its serving part: what a steady-state run writes
    paths["steady"] = folder / "steady.json"
    write_record(steady, paths["steady"])
    return paths


def test_report_of_serving_records_writes_the_page_and_pngs(serving_records, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(serving_records["host_uva"]), str(serving_records["hbm"]), "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["batch_over_time.png", "latency_distributions.png", "report.html", "step_time_over_time.png"]
    for name in (n for n in names if n.endswith(".png")):
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "<h2>Serving runs</h2>" in page and "overhead vs hbm %" in page and "host_uva" in page
    assert "report.html and 3 PNG chart(s)" in capsys.readouterr().out


@pytest.mark.parametrize("inputs, message", [
    (["steady"], "steady.json: is a steady-state record: it has no serving tables"),
    (["hbm", "missing"], "missing.json: record file not found"),
    (["hbm", "hbm"], "hbm.json: given twice"),
    (["hbm", "sweep.csv"], "sweep.csv: is not a run record (JSON)"),
])
def test_report_refuses_bad_serving_inputs_in_one_line(serving_records, tmp_path, capsys, inputs, message):
    paths = [str(serving_records.get(name, tmp_path / (name if "." in name else f"{name}.json"))) for name in inputs]
    out = tmp_path / "report"
    assert main(["report", *paths, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not out.exists()


def test_report_refuses_compare_flags_with_serving_records(serving_records, tmp_path, capsys):
    assert main(["report", str(serving_records["hbm"]), "--record", "x", "--out", str(tmp_path / "r")]) == 2
    assert "--record: is for a compare CSV" in capsys.readouterr().err


def test_serving_report_renders_in_a_browser(serving_records, tmp_path):
    from test_report_browser import check_report_renders  # skips without chromium

    out = tmp_path / "report"
    assert main(["report", str(serving_records["host_uva"]), str(serving_records["hbm"]), "--out", str(out)]) == 0
    check_report_renders(out / "report.html", tmp_path, 3)
