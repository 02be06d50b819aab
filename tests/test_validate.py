"""engram-sim validate: the reference sets, the e2e config mapping, the CSVs, the targets, bad input."""

import math

import pandas as pd
import pytest

from cli.main import main
from profiles import load_profile
from profiles.reference import reference_step_fetch, reference_table4
from sim import costs
from tools.validate import (
    E2E_PRESET,
    E2E_STEPS,
    POINT_COLUMNS,
    TARGET_COLUMNS,
    e2e_config,
    e2e_overheads,
    e2e_runs,
    e2e_targets,
    fetch_predict,
    table4_runs,
)
from vocab.config import load_config
from vocab.units import GiB


def test_the_reference_files_parse_into_the_expected_points():
    runs, drift = e2e_runs()
    assert len(runs) == 15 and [r["mode"] for r in drift] == ["none_again"]
    assert sum(r["mode"] == "none" for r in runs) == 1 and sum(r["mode"] == "hbm" for r in runs) == 2
    assert sum(r["mode"] in ("uva", "cpu") for r in runs) == 12
    assert len(reference_step_fetch()) == 36   # 3 table sizes x 3 row sizes x 4 rows per step
    assert [r["preset"] for r in table4_runs()] == ["paper-table4-dense4b", "paper-table4-dense8b"]
    assert len(reference_table4()["runs"]) == 2


def _run(mode, table_gib, tokens):
    runs, _ = e2e_runs()
    return next(r for r in runs if r["mode"] == mode and r.get("table_gib") == table_gib
                and r.get("tokens") == tokens)


@pytest.mark.parametrize("mode,gib,tokens,placement,source", [
    ("uva", 64, "zipf", "host_uva", "zipf_clipped"),
    ("cpu", 16, "uniform", "host_dma", "uniform"),
    ("hbm", 4, "zipf", "hbm", "zipf_clipped"),
    ("uva", 4, "uniform", "host_uva", "uniform"),
])
def test_each_e2e_run_maps_onto_the_preset_with_its_placement_table_batch_and_tokens(mode, gib, tokens,
                                                                                     placement, source):
    cfg = e2e_config(load_config(E2E_PRESET), _run(mode, gib, tokens))
    assert cfg.placement.kind == placement
    assert cfg.engram.table_gib == gib and abs(cfg.engram.total_table_bytes / GiB - gib) < 0.01 * gib
    assert cfg.workload.sequences == 512 and cfg.workload.steps == E2E_STEPS
    assert cfg.workload.tokens.source == source
    if source == "zipf_clipped":
        assert cfg.workload.tokens.zipf_s == 1.1
    lengths = cfg.workload.lengths
    assert (lengths.dist, lengths.low, lengths.high, lengths.grow) == ("fixed", 560, 560, False)
    # The rest stays the preset's: the harness's host work and launch.
    assert cfg.placement.hash_on == "critical_path" and cfg.workload.launch == "cuda_graphs"


def test_the_none_run_maps_onto_the_backbone_alone():
    runs, _ = e2e_runs()
    cfg = e2e_config(load_config(E2E_PRESET), next(r for r in runs if r["mode"] == "none"))
    assert cfg.placement.kind == "none" and cfg.workload.sequences == 512


def _hand_made(throughput_err, vs_hbm_err, hbm_vs_none_err):
    """An e2e table: one none run, one hbm run, two host runs with the given errors (pct, pp)."""
    rows = [("none", "", throughput_err[0], math.nan, math.nan),
            ("hbm", "uniform", throughput_err[1], math.nan, hbm_vs_none_err),
            ("uva", "uniform", throughput_err[2], vs_hbm_err[0], 0.0),
            ("cpu", "uniform", throughput_err[3], vs_hbm_err[1], 0.0)]
    return pd.DataFrame([{"mode": m, "tokens": t, "tok_s_err_pct": e, "vs_hbm_err_pp": h, "vs_none_err_pp": n}
                         for m, t, e, h, n in rows])


def _results(df):
    t = e2e_targets(df)
    assert list(t.columns) == TARGET_COLUMNS and len(t) == 4
    return list(t["result"])


def test_targets_pass_within_the_limits_and_fail_beyond_them():
    assert _results(_hand_made([1.0, -1.5, 2.0, -3.9], [0.9, -1.0], 0.4)) == ["pass"] * 4
    # median |error| 2.5 % > 2 %, max 4.5 % > 4 %, one host point 1.2 pp off, hbm vs none 0.6 pp off
    assert _results(_hand_made([2.5, -2.5, 4.5, 1.0], [0.2, -1.2], -0.6)) == ["FAIL"] * 4
    # A missing figure cannot pass.
    assert _results(_hand_made([1.0, 1.0, 1.0, 1.0], [math.nan, math.nan], math.nan))[2:] == ["FAIL", "FAIL"]


def test_overheads_use_the_same_baselines_on_both_sides():
    df = pd.DataFrame([
        {"run": "none", "mode": "none", "table_gib": math.nan, "tokens": "", "measured_step_ms": 10.0,
         "predicted_step_ms": 20.0},
        {"run": "hbm", "mode": "hbm", "table_gib": 4, "tokens": "zipf", "measured_step_ms": 10.1,
         "predicted_step_ms": 20.0},
        {"run": "uva", "mode": "uva", "table_gib": 64, "tokens": "zipf", "measured_step_ms": 10.1 / 0.98,
         "predicted_step_ms": 20.0 / 0.99},
    ])
    out = e2e_overheads(df).set_index("run")
    assert out.loc["uva", "measured_vs_hbm_pct"] == pytest.approx(2.0)
    assert out.loc["uva", "predicted_vs_hbm_pct"] == pytest.approx(1.0)
    assert out.loc["uva", "vs_hbm_err_pp"] == pytest.approx(-1.0)
    assert out.loc["uva", "hbm_baseline"] == "hbm 4 GiB zipf"
    assert out.loc["hbm", "measured_vs_none_pct"] == pytest.approx((1.0 - 10.0 / 10.1) * 100)
    assert out.loc["hbm", "predicted_vs_none_pct"] == pytest.approx(0.0)
    assert math.isnan(out.loc["hbm", "measured_vs_hbm_pct"]) and math.isnan(out.loc["none", "measured_vs_none_pct"])


def test_validate_writes_one_row_per_point_with_the_promised_columns(tmp_path, capsys):
    out = tmp_path / "v"
    assert main(["validate", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    points, targets = pd.read_csv(out / "validate.csv"), pd.read_csv(out / "targets.csv")
    assert list(points.columns) == POINT_COLUMNS and list(targets.columns) == TARGET_COLUMNS
    # e2e: step time and tokens/s per run (15), overhead vs none per Engram run (14), vs hbm per host run (12);
    # fetch: 3 series x 36 shapes; table4: 2 backbones x 2 host placements, and each backbone's baseline tok/s.
    counts = points["set"].value_counts().to_dict()
    assert counts == {"e2e": 15 * 2 + 14 + 12, "fetch": 3 * 36, "table4": 2 * 2 + 2}
    assert points["name"].is_unique
    assert set(targets["result"]) <= {"pass", "FAIL"} and len(targets) == 4 + 2
    assert list(targets["set"]).count("table4") == 2
    assert "Targets:" in printed and "none_again" in printed and "without Engram" in printed
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_validate_runs_only_the_sets_asked_for(tmp_path, capsys):
    out = tmp_path / "v"
    assert main(["validate", "--sets", "fetch", "--out", str(out)]) == 0
    assert set(pd.read_csv(out / "validate.csv")["set"]) == {"fetch"}
    assert pd.read_csv(out / "targets.csv").empty


@pytest.mark.parametrize("argv,pattern", [
    (["--sets", "bogus"], "--sets: unknown value"),
    (["--sets", "e2e", "--profile", "tpu-v9"], "profile: no profile named"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, argv, pattern):
    out = tmp_path / "v"
    assert main(["validate", *argv, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1 and pattern in captured.err
    assert not list(tmp_path.iterdir())


def test_assumptions_need_the_table4_set(capsys):
    assert main(["validate", "--sets", "e2e", "--assumptions"]) == 2
    err = capsys.readouterr().err
    assert "--assumptions" in err and len(err.strip().splitlines()) == 1


def test_the_fetch_check_times_gathers_back_to_back_as_the_benchmark_ran_them():
    """The per-step benchmark has no work between its gathers: no cold page-table levels in its predictions."""
    shapes = [s for s in reference_step_fetch() if s["gib"] == 64 and s["row_bytes"] == 160]
    df = fetch_predict(shapes)
    p = load_profile("h100-sxm")
    for s, us in zip(shapes, df["predicted_uva_us"]):
        back_to_back = sum(costs.uva_gather_time(p, int(s["rows"]), 160, 64 * GiB, work_between=False))
        assert us == pytest.approx(back_to_back * 1e6, rel=1e-12)
        assert us < sum(costs.uva_gather_time(p, int(s["rows"]), 160, 64 * GiB)) * 1e6
