"""Sweeps on an executor: a real local Ray instance and the local pool give identical tables, a sweep stopped by a
failure, a Ctrl-C or lost shards resumes to the same table, the Parquet outputs keep their facts, and a bad
--executor or --address is one line, exit 2."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import tools.sweep
from cli.main import main
from tools.executor import remove_shards, run_tasks, shard_paths
from tools.sweep import sweep
from vocab.config import load_config
from vocab.tables import COMPARE_COLUMNS, SWEEP_COLUMNS, read_parquet

SIZES = [0.01, 0.02, 0.04]
PHASES = ["decode", "prefill"]
STEPS = 20
POINTS = len(SIZES) * len(PHASES)


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance for the module's Ray tests (start-up takes seconds)."""
    import ray  # optional heavy dependency: the [ray] extra, which the test command installs

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    # Tasks defined here run in Ray's workers, which cannot import this test module: send them by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_table():
    """The reference: the sweep in this process, without shards."""
    return _sweep(jobs=1)


def _sweep(**kwargs) -> pd.DataFrame:
    return sweep(load_config("tiny"), SIZES, None, PHASES, steps=STEPS, progress=False, **kwargs)


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a.columns) == SWEEP_COLUMNS
    pd.testing.assert_frame_equal(a, b, check_exact=True)  # same rows, order, dtypes and values to the bit


def test_a_ray_sweep_and_a_local_sweep_give_identical_tables(ray_instance, local_table, tmp_path):
    shards = tmp_path / "shards"
    on_ray = _sweep(executor="ray", shard_dir=shards)
    _same(on_ray, local_table)
    assert len(shard_paths(shards)) == POINTS and on_ray.attrs["resumed_points"] == 0
    _same(_sweep(jobs=2), local_table)  # and the local process pool


def test_a_ray_sweep_with_lost_shards_resumes_to_the_same_table(ray_instance, local_table, tmp_path):
    shards = tmp_path / "shards"
    _sweep(executor="ray", shard_dir=shards)
    for path in shard_paths(shards)[::2]:  # as if the run had stopped before these landed
        path.unlink()
    resumed = _sweep(executor="ray", shard_dir=shards, resume=True)
    _same(resumed, local_table)
    assert resumed.attrs["resumed_points"] == POINTS - (POINTS + 1) // 2
    assert len(shard_paths(shards)) == POINTS


TASKS = list(range(8))


def _square(i: int) -> pd.DataFrame:
    time.sleep(0.05 * i)
    return pd.DataFrame({"task": [i], "square": [i * i], "root": [i ** 0.5]})


def _square_but_4_fails(i: int) -> pd.DataFrame:
    if i == 4:
        time.sleep(0.5)  # after the first ones have landed
        raise ValueError(f"task {i} failed")
    return _square(i)


def _resumed(shards, executor: str) -> tuple[pd.DataFrame, int]:
    """Rerun the tasks with the failure fixed; the table and how many came from the shards."""
    resumed = []
    tables = run_tasks(_square, TASKS, executor=executor, jobs=2, shard_dir=shards, resume=True,
                       on_result=lambda i, t, from_shard: resumed.append(i) if from_shard else None)
    return pd.concat(tables, ignore_index=True), len(resumed)


@pytest.mark.parametrize("executor", ["ray", "local"])
def test_a_failed_task_leaves_the_finished_shards_and_a_restart_finishes_the_same_table(executor, request, tmp_path):
    if executor == "ray":
        request.getfixturevalue("ray_instance")
    shards = tmp_path / "shards"
    with pytest.raises(ValueError, match="task 4 failed"):  # the task's own error, not the executor's wrapper
        run_tasks(_square_but_4_fails, TASKS, executor=executor, jobs=2, shard_dir=shards)
    kept = len(shard_paths(shards))
    assert 1 <= kept < len(TASKS)
    table, resumed = _resumed(shards, executor)
    assert resumed == kept
    expected = pd.concat([_square(i) for i in TASKS], ignore_index=True)
    pd.testing.assert_frame_equal(table, expected, check_exact=True)
    remove_shards(shards)
    assert not shards.exists()


def test_ctrl_c_cancels_the_outstanding_ray_tasks_and_keeps_the_written_shards(ray_instance, tmp_path):
    shards = tmp_path / "shards"

    def interrupt(index, table, resumed):
        raise KeyboardInterrupt  # as the CLI's handler does on the first Ctrl-C

    with pytest.raises(KeyboardInterrupt):
        run_tasks(_square, [0, 1, 2, 3, 5, 6, 7], executor="ray", shard_dir=shards, on_result=interrupt)
    assert len(shard_paths(shards)) == 1
    assert ray_instance.is_initialized()  # the caller's instance stays the caller's


def test_the_cli_keeps_the_finished_points_of_a_failed_sweep_and_resumes_them(tmp_path, capsys, monkeypatch):
    args = ["sweep", "tiny", "--table-gib", "0.01,0.02", "--steps", str(STEPS), "--jobs", "1", "--quiet"]
    fresh = tmp_path / "fresh"
    assert main([*args, "--out", str(fresh)]) == 0
    assert not (fresh / "shards").exists()  # removed once the outputs landed
    run_point = tools.sweep.run_point
    calls = []

    def second_fails(*point):
        calls.append(point)
        if len(calls) == 2:
            raise RuntimeError("a point failed")
        return run_point(*point)

    out = tmp_path / "out"
    monkeypatch.setattr(tools.sweep, "run_point", second_fails)
    with pytest.raises(RuntimeError):
        main([*args, "--out", str(out)])
    assert "kept 1 finished point(s)" in capsys.readouterr().err and not (out / "sweep.csv").exists()
    monkeypatch.setattr(tools.sweep, "run_point", run_point)
    assert main([*args, "--out", str(out), "--resume"]) == 0
    assert "resumed 1 of 2 points" in capsys.readouterr().out
    assert not (out / "shards").exists()
    pd.testing.assert_frame_equal(pd.read_csv(out / "sweep.csv"), pd.read_csv(fresh / "sweep.csv"), check_exact=True)
    # sweep.parquet: the same table as sweep.csv, with the run's facts in its metadata.
    table = read_parquet(out / "sweep.parquet")
    assert table.to_csv(index=False) == (out / "sweep.csv").read_text()
    facts = table.attrs
    assert facts["config"] == "tiny" and facts["profile"] == "h100-sxm" and facts["steps"] == STEPS
    assert facts["profile_provenance"]["source"] in ("measured", "datasheet")
    assert facts["simulate_s"] > 0 and facts["points"] == 2 and facts["resumed_points"] == 1
    assert facts["engram_sim_version"]


@pytest.mark.parametrize("flags, field, words", [
    (["--executor", "ray"], "--executor", "pip install 'engram-sim[ray]'"),
    (["--address", "10.0.0.5:6379"], "--address", "--executor ray"),
    (["--executor", "ray", "--address", "no-port"], "--address", "host:port"),
    (["--executor", "ray", "--address", "127.0.0.1:1"], "--address", "nothing answers at 127.0.0.1:1"),
    (["--executor", "dask"], "--executor", "invalid choice"),
])
def test_a_bad_executor_or_address_is_one_line_exit_2_before_any_work(flags, field, words, tmp_path, capsys,
                                                                     monkeypatch):
    if "pip install" in words:
        monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    monkeypatch.setattr("cli.simulate.sweep", lambda *a, **k: pytest.fail("the sweep started"))
    for command in (["sweep", "tiny", "--table-gib", "0.01"], ["demo"]):
        assert _exit_code([*command, "--out", str(tmp_path / "out"), *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and field in err[0] and words in err[0], err
        assert not (tmp_path / "out").exists()


def _exit_code(argv) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse's own refusals (an unknown choice)
        return e.code


def test_compare_writes_compare_parquet_with_its_facts(tmp_path, capsys):
    records = sorted((Path(__file__).resolve().parents[1] / "real_runs" / "records").glob("tiny-cpu-*-decode.json"))
    out = tmp_path / "cmp"
    assert main(["compare", *map(str, records), "--out", str(out)]) == 0
    assert "compare.parquet" in capsys.readouterr().out
    table = read_parquet(out / "compare.parquet")
    assert list(table.columns) == COMPARE_COLUMNS
    assert table.to_csv(index=False) == (out / "compare.csv").read_text()
    facts = table.attrs
    assert facts["records"] == [r.name for r in records] and "tiny" in facts["configs"]
    assert set(facts["profile_provenance"]) == set(facts["profiles"]) == set(table["profile"])
    assert facts["summary"]["compared"] == len(records) and facts["engram_sim_version"]


def test_a_plan_on_ray_gives_the_local_plan(ray_instance):
    from profiles import load_profile
    from tools.plan import make_plans, plan
    from vocab.config import load_config

    cfg = load_config("engram-27b").with_steps(10)
    plans = make_plans(cfg, [("h100-sxm", load_profile("h100-sxm"))], ["hbm", "host_uva"], [[1]], [64], [1.0], [1.0])
    kw = dict(max_overhead=0.01, baseline="hbm", steps=10, progress=False, top_gib=64)
    local, on_ray = plan(plans, **kw), plan(plans, executor="ray", **kw)
    pd.testing.assert_frame_equal(on_ray.plans, local.plans, check_dtype=False)
    pd.testing.assert_frame_equal(on_ray.points, local.points, check_dtype=False)
    assert ray_instance.is_initialized()  # the caller's instance stays up
