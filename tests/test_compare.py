"""Predicted versus measured: `compare` on the committed CPU records, bad records skipped, and `report`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from tools.compare import compare_records, match_profile
from vocab.tables import COMPARE_COLUMNS, TIMELINE_COLUMNS

# The hbm and host_dma records; the ssd ones (tiny-cpu-ssd-*, this machine's drive) are compared below.
RECORD_DIR = Path(__file__).resolve().parents[1] / "real_runs" / "records"
RECORDS = sorted(p for p in RECORD_DIR.glob("tiny-cpu-*.json") if "-ssd-" not in p.name and "-serve" not in p.name)
SERVE_RECORDS = sorted(RECORD_DIR.glob("tiny-cpu-*-serve.json"))
SSD_RECORDS = sorted(RECORD_DIR.glob("tiny-cpu-ssd-*.json"))


def test_the_drive_records_are_predicted_with_the_drive_reads_they_made():
    """The simulator predicts each real ssd run on this machine's calibrated profile; without a DRAM cache the
    block reads it predicts are the reads the store made (the same file layout)."""
    from profiles import load_profile
    from sim.engine import simulate
    from vocab.config import from_dict
    from vocab.records import read_record

    assert len(SSD_RECORDS) == 8
    df, _, _, skipped = compare_records(SSD_RECORDS, "dev-vm-cpu")
    assert not skipped and len(df) == 8 and (df["predicted_fetch_time_s"] > 0).all()
    for path in (p for p in SSD_RECORDS if "nocache" in p.name):
        record = read_record(path)
        cfg = from_dict(record.config).with_steps(len(record.steps))
        predicted = simulate(cfg, load_profile("dev-vm-cpu"), check_capacity=False).fetches["ssd_reads"].mean()
        assert predicted == pytest.approx(record.fetches["ssd_reads"].mean(), rel=0.02), path.name


def run_cli(capsys, *argv):
    import cli.main as cli

    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def compared():
    return compare_records(RECORDS)


def test_the_committed_records_are_cpu_runs_of_both_placements_and_phases():
    assert len(RECORDS) == 4
    kinds = set()
    for path in RECORDS:
        data = json.loads(path.read_text())
        assert data["kind"] == "measured" and data["device"] == "cpu"
        kinds.add((data["config"]["placement"]["kind"], data["config"]["workload"]["phase"]))
    assert kinds == {(p, ph) for p in ("hbm", "host_dma") for ph in ("decode", "prefill")}
    assert "not GPU" in (RECORDS[0].parent / "README.md").read_text()


def test_compare_on_the_committed_records_gives_finite_errors(compared):
    df, summary, timelines, skipped = compared
    assert skipped == []
    assert list(df.columns) == COMPARE_COLUMNS and len(df) == 4
    for m in ("step_time_s", "tokens_per_s", "overlap_fraction"):
        assert np.isfinite(df[f"rel_err_{m}"]).all(), m
        assert np.allclose(df[f"rel_err_{m}"], df[f"predicted_{m}"] / df[f"measured_{m}"] - 1)
    # Same steps and tokens as recorded: the simulator ran exactly the measured configuration.
    assert (df["steps"] == 12).all()
    assert set(df["placement"]) == {"hbm", "host_dma"} and set(df["phase"]) == {"decode", "prefill"}
    # CPU runs: no profile describes the machine; predicted with the config's and flagged.
    assert not df["profile_matched"].any() and (df["profile"] == "h100-sxm").all()
    assert df["note"].str.contains("CPU run").all()
    # The measured hbm records are the baselines of the host_dma ones.
    dma = df[df["placement"] == "host_dma"]
    assert np.isfinite(dma["measured_overhead_vs_hbm"]).all() and np.isfinite(dma["overhead_error_pp"]).all()
    assert (df.loc[df["placement"] == "hbm", "measured_overhead_vs_hbm"] == 0).all()
    for key in ("throughput_abs_rel_err_median", "throughput_abs_rel_err_max", "overhead_abs_err_pp_median"):
        assert math.isfinite(summary[key]), key
    assert summary["throughput_abs_rel_err_max"] >= summary["throughput_abs_rel_err_median"] > 0
    assert summary["compared"] == 4 and summary["overhead_pairs"] == 2 and not summary["all_profiles_matched"]


def test_timelines_are_one_middle_step_from_its_start_for_both_sources(compared):
    _, _, timelines, _ = compared
    assert list(timelines.columns) == TIMELINE_COLUMNS
    for record, group in timelines.groupby("record"):
        assert set(group["source"]) == {"predicted", "measured"}, record
        assert (group["step"] == 6).all()
        for source, g in group.groupby("source"):
            compute = g[g["actor"] == "gpu compute"]
            assert len(compute) and (g["end_s"] >= g["start_s"]).all()
            # Compute starts at (predicted) or just after (measured: the token upload) the step's start.
            assert -1e-9 <= compute["start_s"].min() < 1e-3, (record, source)


def test_compare_cli_writes_csvs_and_chrome_traces_with_both_sources(tmp_path, capsys):
    out = tmp_path / "cmp"
    code, stdout, err = run_cli(capsys, "compare", *map(str, RECORDS), "--out", str(out), "--trace")
    assert code == 0, err
    assert "median" in stdout and "CPU run" in stdout and "tiny-cpu-host_dma-decode.json" in stdout
    df = pd.read_csv(out / "compare.csv")
    assert list(df.columns) == COMPARE_COLUMNS and len(df) == 4
    assert list(pd.read_csv(out / "timelines.csv").columns) == TIMELINE_COLUMNS
    traces = sorted(out.glob("*.trace.json"))
    assert [t.name for t in traces] == [f"{r.stem}.trace.json" for r in RECORDS]
    events = json.loads(traces[0].read_text())["traceEvents"]
    processes = {e["args"]["name"] for e in events if e.get("name") == "process_name"}
    assert processes == {"predicted", "measured"}
    complete = [e for e in events if e["ph"] == "X"]
    assert complete and all(math.isfinite(e["ts"]) and e["dur"] >= 0 for e in complete)
    assert {e["pid"] for e in complete} == {1, 2}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _bad_records(tmp_path):
    garbage = tmp_path / "garbage.json"
    garbage.write_text('{"schema": "engram-sim.record/1", "kind": ')
    from cli.main import main as cli_main

    simulated = tmp_path / "simulated.json"
    assert cli_main(["simulate", "tiny", "--steps", "3", "--out", str(simulated)]) == 0
    unknown = tmp_path / "unknown-field.json"
    data = json.loads(RECORDS[0].read_text())
    data["config"]["engram"]["warp_factor"] = 9
    unknown.write_text(json.dumps(data))
    listing = tmp_path / "list.json"
    listing.write_text("[1, 2, 3]")
    return {garbage: "not valid JSON", simulated: "'simulated' record", unknown: "warp_factor",
            listing: "not a run record", tmp_path / "missing.json": "not found"}


def test_bad_records_are_named_with_the_reason_and_skipped(tmp_path, capsys):
    bad = _bad_records(tmp_path)
    capsys.readouterr()
    df, summary, _, skipped = compare_records([*bad, RECORDS[0]])
    assert len(df) == 1 and summary["skipped"] == len(bad)
    reasons = dict(skipped)
    for path, why in bad.items():
        assert why in reasons[str(path)], (path, reasons[str(path)])

    code, out, err = run_cli(capsys, "compare", *map(str, bad), str(RECORDS[0]), "--out", str(tmp_path / "o"))
    assert code == 0, err
    for path in bad:
        assert f"skipped {path}:" in out
    assert len(pd.read_csv(tmp_path / "o" / "compare.csv")) == 1


def test_no_comparable_record_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    bad = _bad_records(tmp_path)
    capsys.readouterr()
    code, out, err = run_cli(capsys, "compare", *map(str, bad), "--out", str(tmp_path / "o"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "none could be compared" in err
    assert "simulated.json" in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("gpu,expected", [
    ("NVIDIA H100 80GB HBM3", "h100-sxm"), ("NVIDIA H100 PCIe", "h100-sxm"), ("NVIDIA H200", "h200-sxm"),
    ("NVIDIA GH200 480GB", "gh200"), ("NVIDIA A100-SXM4-80GB", "a100-sxm4-80gb"),
])
def test_a_gpu_record_gets_the_profile_of_its_gpu(gpu, expected):
    record = SimpleNamespace(extra={"device": "cuda:0"}, machine={"gpu_name": gpu})
    name, matched, _ = match_profile(record, "h100-sxm")
    assert (name, matched) == (expected, True)


def test_an_unknown_gpu_or_a_cpu_falls_back_to_the_configs_profile_unmatched():
    record = SimpleNamespace(extra={"device": "cuda:0"}, machine={"gpu_name": "Tesla T4"})
    assert match_profile(record, "h200-sxm")[:2] == ("h200-sxm", False)
    record = SimpleNamespace(extra={"device": "cpu"}, machine={"cpu_model": "AMD EPYC"})
    name, matched, note = match_profile(record, "h100-sxm")
    assert (name, matched) == ("h100-sxm", False) and "CPU" in note


@pytest.fixture(scope="module")
def report_inputs(tmp_path_factory):
    from tools.sweep import sweep
    from vocab.config import load_config

    folder = tmp_path_factory.mktemp("inputs")
    df = sweep(load_config("tiny"), [0.001, 0.01], ["hbm", "host_dma"], ["decode", "prefill"], steps=3, jobs=1,
               progress=False)
    df.to_csv(folder / "sweep.csv", index=False)
    table, _, timelines, _ = compare_records(RECORDS)
    (folder / "cmp").mkdir()
    table.to_csv(folder / "cmp" / "compare.csv", index=False)
    timelines.to_csv(folder / "cmp" / "timelines.csv", index=False)
    return folder / "sweep.csv", folder / "cmp" / "compare.csv"


def test_report_from_a_sweep_and_a_compare_csv_renders_every_chart(report_inputs, tmp_path, capsys):
    from test_report_browser import check_report_renders

    sweep_csv, compare_csv = report_inputs
    out = tmp_path / "report"
    code, stdout, err = run_cli(capsys, "report", str(sweep_csv), str(compare_csv), "--out", str(out))
    assert code == 0, err
    pngs = {p.name for p in out.glob("*.png")}
    assert {"throughput.png", "overhead.png", "exposed_stall.png", "throughput_error.png", "timeline.png",
            "bytes_per_step_sweep.png", "bytes_per_step_records.png"} <= pngs
    assert all((out / p).stat().st_size > 1000 for p in pngs)
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "tiny-cpu-host_dma-decode.json" in page and "CPU runs" in page
    check_report_renders(out / "report.html", tmp_path, len(pngs))


@pytest.mark.parametrize("which", ["sweep", "compare"])
def test_report_from_one_input_alone(report_inputs, tmp_path, capsys, which):
    sweep_csv, compare_csv = report_inputs
    path = sweep_csv if which == "sweep" else compare_csv
    code, _, err = run_cli(capsys, "report", str(path), "--out", str(tmp_path / "r"))
    assert code == 0, err
    pngs = {p.name for p in (tmp_path / "r").glob("*.png")}
    assert {"throughput.png", "overhead.png", "exposed_stall.png"} <= pngs
    assert ("timeline.png" in pngs) == (which == "compare")


def test_report_errors_are_one_line_exit_2(report_inputs, tmp_path, capsys):
    sweep_csv, compare_csv = report_inputs
    code, _, err = run_cli(capsys, "report", "--out", str(tmp_path / "r"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "needs a sweep CSV, a compare CSV or both" in err
    broken = tmp_path / "sweep-broken.csv"
    pd.read_csv(sweep_csv).drop(columns=["tokens_per_s"]).to_csv(broken, index=False)
    code, _, err = run_cli(capsys, "report", str(broken), "--out", str(tmp_path / "r"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "lacks column 'tokens_per_s'" in err
    broken = tmp_path / "compare-broken.csv"
    pd.read_csv(compare_csv).drop(columns=["measured_tokens_per_s"]).to_csv(broken, index=False)
    code, _, err = run_cli(capsys, "report", str(broken), "--out", str(tmp_path / "r"))
    assert code == 2 and "lacks column 'measured_tokens_per_s'" in err
    assert not (tmp_path / "r").exists()


def test_a_measured_none_record_is_the_baseline_of_overhead_vs_none(tmp_path):
    # Records that claim the simulator's own numbers as measurements: each overhead must then match exactly.
    from sim.engine import simulate
    from vocab.config import load_config
    from vocab.records import write_record

    base = load_config("tiny").with_steps(6)
    paths, tps = [], {}
    for kind in ("none", "hbm", "host_dma"):
        record = simulate(base.with_placement(kind)).to_record()
        record.kind, record.machine = "measured", {"cpu_model": "test CPU", "device": "cpu"}
        tps[kind] = record.summary["tokens_per_s"]
        paths.append(write_record(record, tmp_path / f"{kind}.json"))
    df, summary, _, skipped = compare_records(paths)
    assert skipped == [] and set(df["placement"]) == {"none", "hbm", "host_dma"}
    row = df.set_index("placement")
    for kind in ("hbm", "host_dma"):
        assert row.loc[kind, "measured_overhead_vs_none"] == pytest.approx(1 - tps[kind] / tps["none"])
        assert row.loc[kind, "overhead_vs_none_error_pp"] == pytest.approx(0, abs=1e-9)
    assert row.loc["host_dma", "measured_overhead_vs_hbm"] == pytest.approx(1 - tps["host_dma"] / tps["hbm"])
    assert row.loc["none", "measured_overhead_vs_none"] == 0 and row.loc["none", "predicted_overhead_vs_none"] == 0


def test_the_committed_serving_records_compare_metric_by_metric():
    from tools.compare import SERVING_METRICS

    df, summary, _, skipped = compare_records(SERVE_RECORDS)
    assert len(SERVE_RECORDS) == 2 and df.empty and skipped == []
    serving = summary["_serving"]
    assert len(serving) == 2 * len(SERVING_METRICS) and serving.profile_matched.all()
    steps = serving[serving.metric == "steps"]
    assert (steps.measured == steps.predicted).all()
