"""The placement planner: its answers, its search, and the plan command's outputs and refusals."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from cli.main import main
from profiles import load_profile
from tools.plan import (
    DES,
    PLAN_COLUMNS,
    POINT_COLUMNS,
    _Search,
    make_plans,
    plan,
    size_grid,
)
from vocab.config import load_config
from vocab.tables import read_parquet

# Engram-27B at a small batch: cheap traces; HBM fills at about 32 GiB, and ssd's 1 GiB DRAM cache
# makes the budget bind just above 1 GiB.
TOP_GIB = 64


def _plan(budget: float, placements=("hbm", "host_uva", "ssd"), baseline: str = "hbm"):
    cfg = load_config("engram-27b").with_steps(10)
    plans = make_plans(cfg, [("h100-sxm", load_profile("h100-sxm"))], list(placements), [[1]], [64], [1.0], [1.0])
    return plan(plans, max_overhead=budget, baseline=baseline, steps=10, progress=False, top_gib=TOP_GIB)


@pytest.fixture(scope="module")
def result():
    return _plan(0.01)


def _des_points(result, k: int) -> pd.DataFrame:
    p = result.points
    return p[(p["plan"] == k) & (p["method"] == DES)].set_index("grid_index")


def test_tables_have_their_columns(result):
    assert list(result.plans.columns) == PLAN_COLUMNS
    assert list(result.points.columns) == POINT_COLUMNS
    assert len(result.plans) == 3


def test_answer_is_within_budget_and_the_next_size_is_not(result):
    grid = size_grid(TOP_GIB)
    for k, row in result.plans.iterrows():
        des = _des_points(result, k)
        answer = des[des["table_gib_asked"] == row["table_gib_asked"]]
        assert len(answer) == 1 and bool(answer["within_budget"].iloc[0]) and bool(answer["fits"].iloc[0])
        assert answer["overhead"].iloc[0] <= 0.01
        i = int(answer.index[0])
        if i + 1 < len(grid):
            nxt = des.loc[i + 1]
            assert not nxt["within_budget"]
            assert (not nxt["fits"]) or nxt["overhead"] > 0.01
            assert row["next_reason"] == nxt["reason"] and row["next_reason"]
        else:
            assert "grid ends" in row["next_reason"]


def test_reasons_name_the_mechanism(result):
    by = result.plans.set_index("placement")
    assert by.loc["hbm", "next_reason"].startswith("does not fit: HBM")
    assert by.loc["ssd", "next_reason"].startswith("exposed stall")  # past its DRAM cache, rows come off the drive


def test_a_point_that_does_not_fit_is_never_an_answer(result):
    answers = result.points.merge(result.plans[["plan", "table_gib_asked"]], on=["plan", "table_gib_asked"])
    assert answers["fits"].all()
    assert not result.points[~result.points["fits"].astype(bool)]["within_budget"].any()


def test_hbm_frees_nothing_and_host_placements_free_their_table(result):
    by = result.plans.set_index("placement")
    assert by.loc["hbm", "hbm_freed_gib"] == 0.0
    assert by.loc["host_uva", "hbm_freed_gib"] == pytest.approx(by.loc["host_uva", "table_gib"], rel=0.01)


def test_a_bigger_budget_never_gives_a_smaller_table(result):
    looser = _plan(0.99, placements=("host_uva", "ssd"))
    before = result.plans.set_index("placement")["table_gib"]
    after = looser.plans.set_index("placement")["table_gib"]
    for placement in after.index:
        assert after[placement] >= before[placement]
    assert after["ssd"] > before["ssd"]  # the drive's stall fits a 99 % budget


def _walk(closed_form, des, size=40, top=39) -> tuple[int, int]:
    """Run a _Search to its end on predicates over grid indices; (closed-form answer, final answer)."""
    s = _Search(top, size)
    while (i := s.next_closed_form()) is not None:
        s.record_closed_form(i, closed_form(i))
    while todo := s.next_des():
        for i in todo:
            s.des[i] = des(i)
    return s.lo, s.answer


def test_search_bisects_and_the_des_moves_the_answer_both_ways():
    assert _walk(lambda i: i <= 17, lambda i: i <= 17) == (17, 17)
    assert _walk(lambda i: i <= 17, lambda i: i <= 14) == (17, 14)   # the DES refuses what the closed form passed
    assert _walk(lambda i: i <= 17, lambda i: i <= 21) == (17, 21)   # the DES passes more
    assert _walk(lambda i: False, lambda i: False) == (-1, -1)
    assert _walk(lambda i: True, lambda i: True, top=25) == (25, 39)  # past the capacity screen, if the DES says so
    assert _walk(lambda i: True, lambda i: True, top=-1) == (-1, 39)


def test_plan_command_writes_its_outputs(tmp_path, capsys):
    out = tmp_path / "plan"
    assert main(["plan", "engram-27b", "--max-overhead", "3%", "--batch", "16", "--steps", "10",
                 "--placements", "hbm,host_dma", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Largest table within the budget" in printed and "host_dma" in printed
    csv = pd.read_csv(out / "plan.csv")
    parquet = pd.read_parquet(out / "plan.parquet")
    assert list(csv.columns) == PLAN_COLUMNS and len(parquet) == len(csv) == 2
    meta = read_parquet(out / "plan.parquet").attrs
    assert meta["max_overhead"] == 0.03 and meta["profiles"]["h100-sxm"]["source"]
    assert meta["elapsed_s"] > 0
    assert (out / "frontier.png").stat().st_size > 0 and (out / "points.csv").exists()
    assert math.isclose(csv.set_index("placement").loc["hbm", "hbm_freed_gib"], 0.0)


BAD_INPUT = [
    (["--max-overhead", "0.03"], "--max-overhead"),
    (["--max-overhead", "300%"], "--max-overhead"),
    (["--max-overhead", "3%", "--placements", "hbm,disk"], "--placements"),
    (["--max-overhead", "3%", "--layers", "30"], "--layers"),
    (["--max-overhead", "3%", "--profiles", "no-such-gpu"], "--profiles"),
]


def _exit_code(argv) -> int:
    """main's exit code, whether argparse exits (a bad flag value) or the command returns."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("flags, named", BAD_INPUT)
def test_plan_command_refuses_bad_input_in_one_line(tmp_path, capsys, flags, named):
    out = tmp_path / "plan"
    assert _exit_code(["plan", "engram-27b", *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and named in err
    assert not out.exists()
