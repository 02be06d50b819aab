"""The server planner (tools/server_plan.py, `engram-sim plan-server`): the options each placement has, the best
one is the cheapest that fits, the single-GPU answer beside it, and bad input in one line."""

import pandas as pd
import pytest

from cli.main import main
from profiles import load_profile
from tools.server_plan import OPTION_COLUMNS, Option, options_for, plan_server
from vocab.config import load_config

DGX = load_profile("dgx-h100")
H100 = load_profile("h100-sxm")


def tiny(placement="host_dma", **deployment):
    cfg = load_config("tiny").with_placement(placement).with_steps(4)
    return cfg.with_deployment(**deployment) if deployment else cfg


def test_each_placement_has_the_options_that_mean_something_for_it():
    dma = options_for(tiny("host_dma", gpus=8), DGX, [4, 8])
    # replicate x (per_numa, per_server) x (local, any) x 2 thread counts, shard x (local, any) x 2
    assert len(dma) == 12 and len(set(dma)) == 12
    assert {o.table for o in dma} == {"replicate", "shard"} and {o.gather_threads for o in dma} == {4, 8}
    assert all(o.shard_over == "server" for o in dma if o.table == "shard")  # tensor_parallel 1: over the replicas
    uva = options_for(tiny("host_uva", gpus=8, tensor_parallel=8), DGX, [4, 8])
    assert {o.gather_threads for o in uva} == {None}  # a GPU kernel gathers: thread counts do not apply
    assert all(o.shard_over == "group" for o in uva if o.table == "shard")
    hbm = options_for(tiny("hbm", gpus=8), DGX, [])
    assert {o.host_copies for o in hbm} == {"per_numa"}  # no host table
    # One GPU, one NUMA node: nothing to choose but the thread count.
    assert options_for(tiny("host_dma"), H100, [4, 8]) == [Option(gather_threads=4), Option(gather_threads=8)]


def test_the_best_option_is_the_cheapest_that_fits_and_the_table_is_complete():
    result = plan_server(tiny(), DGX, placements=["host_dma", "host_uva"], table_gib=[0.5], tensor_parallel=[1, 2], gpus=4,
                         gather_threads=[1, 2], steps=4, progress=False)
    table = result.options
    assert list(table.columns) == OPTION_COLUMNS
    assert len(result.answers) == 4  # (tp 1, 2) x 2 placements
    for _, group in table.groupby(["tensor_parallel", "placement"]):
        best = group[group["best"]]
        assert len(best) == 1
        fitting = group[group["fits"]]
        assert best["overhead"].iloc[0] == pytest.approx(fitting["overhead"].min())
        assert group["simplest_overhead"].nunique(dropna=False) == 1  # the first option's, on every row
        assert group["single_gpu_overhead"].nunique() <= 2  # one per thread count
    assert (table["replicas"] * table["tensor_parallel"] == 4).all()
    assert table["within_budget"].equals(table["fits"] & (table["overhead"] <= 0.03))


def test_plan_server_is_deterministic():
    kwargs = dict(placements=["host_dma"], table_gib=[0.5], tensor_parallel=[1], gpus=2, steps=4, progress=False)
    a = plan_server(tiny(), DGX, **kwargs).options
    b = plan_server(tiny(), DGX, **kwargs).options
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("argv, pattern", [
    (["--gpus", "9"], "--gpus: 9 is not within 1..8"),
    (["--tensor-parallel", "3"], "--tensor-parallel: 3 does not divide --gpus 8"),
    (["--placements", "dram"], "--placements: unknown value"),
    (["--max-overhead", "3"], "--max-overhead"),
])
def test_bad_plan_server_arguments_are_one_line_with_exit_2(tmp_path, capsys, argv, pattern):
    out = tmp_path / "out"
    try:
        code = main(["plan-server", "tiny", "--profile", "dgx-h100", "--out", str(out), *argv])
    except SystemExit as e:  # argparse's own checks exit from the parser
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert pattern in err and len(err.splitlines()) == 1 and not out.exists()


def test_the_cli_prints_the_answers_and_writes_the_tables(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["plan-server", "tiny", "--profile", "dgx-h100", "--gpus", "2", "--tensor-parallel", "1,2",
                 "--table-gib", "0.5", "--steps", "4", "--quiet", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Best deployment" in text and "One GPU" in text and "host_uva" in text
    answers = pd.read_csv(out / "plan-server.csv")
    assert len(answers) == 4 and answers["best"].all()
    assert len(pd.read_csv(out / "options.csv")) > len(answers)


def test_sweep_refuses_a_deployment_it_would_answer_for_one_gpu(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["sweep", "tiny", "--table-gib", "0.5", "--profile", "dgx-h100", "--set", "deployment.gpus=8",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "deployment.gpus" in err and "plan-server" in err and len(err.splitlines()) == 1 and not out.exists()


def test_against_hbm_every_column_uses_the_hbm_baseline():
    """The table in HBM against itself costs nothing, on the server and on one GPU alike."""
    result = plan_server(tiny("hbm"), DGX, placements=["hbm"], table_gib=[0.5], tensor_parallel=[1], gpus=2,
                         baseline="hbm", steps=4, progress=False)
    replicated = result.options[result.options["table"] == "replicate"]
    assert (replicated["overhead"] == 0).all() and (result.options["single_gpu_overhead"] == 0).all()
