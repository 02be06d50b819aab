"""The command line: outputs, one-line errors with exit code 2, nothing half-written."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from cli.main import main

TINY_SWEEP = ["sweep", "tiny", "--table-gib", "0.001,0.01", "--placements", "hbm,host_dma,host_uva",
              "--phases", "decode", "--steps", "4", "--jobs", "1", "--quiet"]


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_simulate_prints_a_summary_and_writes_a_record_and_a_trace(tmp_path, capsys):
    rec, trace = tmp_path / "r.json", tmp_path / "t.json"
    code, out, _ = run_cli(capsys, "simulate", "tiny", "--steps", "5", "--analytic", "--out", str(rec),
                           "--trace", str(trace))
    assert code == 0 and "tokens_per_s" in out and "closed-form" in out
    data = json.loads(rec.read_text())
    assert data["kind"] == "simulated" and len(data["steps"]["step"]) == 5
    events = json.loads(trace.read_text())["traceEvents"]
    assert {e["args"]["name"] for e in events if e["name"] == "thread_name"} >= {"gpu compute", "cpu hash"}


def test_sweep_writes_the_csv_with_the_promised_columns_and_a_report(tmp_path, capsys):
    out_dir = tmp_path / "out"
    code, out, _ = run_cli(capsys, *TINY_SWEEP, "--out", str(out_dir))
    assert code == 0 and "Hidden" in out
    df = pd.read_csv(out_dir / "sweep.csv")
    for col in ["table_bytes", "placement", "phase", "step_time_s", "tokens_per_s", "exposed_stall_s",
                "overlap_fraction", "overhead_vs_hbm"]:
        assert col in df.columns
    assert len(df) == 6 and set(df["placement"]) == {"hbm", "host_dma", "host_uva"}
    assert (df.loc[df.placement == "hbm", "overhead_vs_hbm"] == 0).all()
    # A fetch that uses less than its window is hidden; one that needs more makes the GPU wait. (Tiny's layer 0
    # is shorter than a zero-copy gather's id upload and start-up, so host_uva waits; the CPU path hides.)
    host = df[df.placement != "hbm"]
    assert (host["window_use"] > 0).all()
    assert ((host["window_use"] > 1) == (host["exposed_stall_s"] > 0)).all()
    assert (host.loc[host.placement == "host_dma", "window_use"] < 1).all()
    assert (out_dir / "report.html").stat().st_size > 100_000
    assert list(out_dir.glob("*.png"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


@pytest.mark.parametrize("argv,pattern", [
    (["simulate", "nope.toml"], "nope.toml: no such config file or preset"),
    (["simulate", "tiny", "--profile", "tpu-v9"], "profile: no profile named"),
    (["sweep", "tiny", "--table-gib", "1,x", "--out", "OUT"], "--table-gib: '1,x' is not a list of numbers"),
    (["sweep", "tiny", "--table-gib", "1", "--placements", "nvme", "--out", "OUT"], "--placements: unknown value"),
    (["simulate", "tiny", "--steps", "0"], "--steps: must be >= 1"),
    (["simulate", "tiny", "--placement", "nvme"], "invalid choice: 'nvme'"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, argv, pattern):
    argv = [a.replace("OUT", str(tmp_path / "out")) for a in argv]
    with pytest.raises(SystemExit) if "--placement" in argv and "nvme" in argv else _nothing():
        code, out, err = run_cli(capsys, *argv)
        assert code == 2
        assert pattern in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_bad_config_file_keeps_the_old_outputs(tmp_path, capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "sweep.csv").write_text("old")
    bad = tmp_path / "bad.toml"
    bad.write_text('extends = "tiny"\n[engram]\nd_mem = 7\n')
    code, _, err = run_cli(capsys, "sweep", str(bad), "--table-gib", "0.01", "--out", str(out_dir))
    assert code == 2 and "engram.d_mem: 7 is not divisible" in err
    assert (out_dir / "sweep.csv").read_text() == "old"


def test_argparse_errors_are_one_line_with_exit_2():
    r = subprocess.run([sys.executable, "-m", "cli.main", "simulate"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "the following arguments are required" in r.stderr


def test_profiles_and_presets_list(capsys):
    code, out, _ = run_cli(capsys, "profiles")
    assert code == 0 and "h100-sxm" in out and "measured" in out and "datasheet" in out
    code, out, _ = run_cli(capsys, "profiles", "gh200")
    assert code == 0 and "NVLink-C2C" in out
    code, out, _ = run_cli(capsys, "presets")
    assert code == 0 and "engram-27b" in out and "dense-4b-100b" in out


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_simulate_none_runs_the_backbone_alone_and_is_never_slower_than_hbm(tmp_path, capsys):
    recs = {}
    for placement in ("none", "hbm"):
        recs[placement] = tmp_path / f"{placement}.json"
        code, out, _ = run_cli(capsys, "simulate", "tiny", "--steps", "4", "--placement", placement,
                               "--out", str(recs[placement]))
        assert code == 0
    none, hbm = (json.loads(recs[p].read_text()) for p in ("none", "hbm"))
    assert none["config"]["placement"]["kind"] == "none"
    assert none["summary"]["fetch_time_s"] == 0 and none["summary"]["host_bytes_per_step"] == 0
    assert none["summary"]["tokens_per_s"] >= hbm["summary"]["tokens_per_s"]


def test_a_reader_that_stops_early_ends_the_command_quietly():
    # `engram-sim presets | true`: the reader is gone before the first line is written. No traceback, no message;
    # the exit code is the shell's for SIGPIPE.
    done = subprocess.run([sys.executable, "-c", "import subprocess, sys; p = subprocess.run("
                           f"'{sys.executable} -m cli.main presets | true; exit ${{PIPESTATUS[0]}}', shell=True, "
                           "executable='/bin/bash', capture_output=True, text=True); "
                           "print(p.returncode); print(p.stderr, file=sys.stderr)"],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "141" and done.stderr.strip() == ""
