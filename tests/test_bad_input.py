"""A corpus of bad input, across every command: each ends in one line naming the field, exit 2, nothing written.

Every case runs in a fresh folder that holds its inputs (and is the current folder, so default outputs
land there too); the folder is snapshotted before and after, and must not change. Each case fails before
any work, so the file stays fast; no case is a good input to a command that would do heavy work.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cli.main import main
from vocab.config import MAX_EXTENDS_DEPTH, load_config

ROOT = Path(__file__).resolve().parents[1]
PROFILE = (ROOT / "profiles" / "h100-sxm.toml").read_text()
SWEEP_CSV = ("table_bytes,table_gib,placement,phase,step_time_s,tokens_per_s,exposed_stall_s,overhead_vs_hbm,"
             "host_bytes_per_step,hbm_bytes_per_step\n")
SWEEP_ROW = "1073741824,1.0,hbm,decode,0.01,1000,0.0,0.0,0,100\n"


def tiny(extra: str) -> str:
    return 'extends = "tiny"\n' + extra


# name -> file content (str, or bytes), written into the case's folder before the snapshot.
FILES = {
    "latin1.toml": b'name = "caf\xe9"\n',
    "scalar_engram.toml": tiny("engram = 5\n"),
    "scalar_moe.toml": tiny("[backbone]\nmoe = 3\n"),
    "extends_int.toml": "extends = 5\n",
    "extends_self.toml": 'extends = "extends_self.toml"\n',
    "cycle_a.toml": 'extends = "cycle_b.toml"\n',
    "cycle_b.toml": 'extends = "cycle_a.toml"\n',
    "extends_missing.toml": 'extends = "nowhere.toml"\n',
    "bad_toml.toml": "name = \n",
    "table_1e30.toml": tiny("[engram]\ntable_gib = 1e30\n"),
    "table_inf.toml": tiny("[engram]\ntable_gib = inf\n"),
    "table_nan.toml": tiny("[engram]\ntable_gib = nan\n"),
    "rows_1e30.toml": tiny("[engram]\ntable_rows_per_order = [1e30, 1000]\n"),
    "dmem0_gib.toml": tiny("[engram]\nd_mem = 0\ntable_gib = 1\n"),
    "dmem0.toml": tiny("[engram]\nd_mem = 0\n"),
    "dmem_odd.toml": tiny("[engram]\nd_mem = 100\n"),
    "sequences_1e9.toml": tiny("[workload]\nsequences = 1e9\n"),
    "layers_1e12.toml": tiny("[backbone]\nlayers = 1e12\n"),
    "steps_huge.toml": tiny("[workload]\nsteps = 1000000000\n"),
    "trace_huge.toml": tiny("[workload]\nsequences = 1000000\nsteps = 4096\ntokens = { trace_steps = 4096 }\n"),
    "topk.toml": tiny("[backbone.moe]\ntop_k = 9\n"),
    "heads_0.toml": tiny("[backbone.attention]\nheads = 0\n"),
    "seed_neg.toml": tiny("[workload]\nseed = -1\n"),
    "zipf_inf.toml": tiny("[workload.tokens]\nzipf_s = inf\n"),
    "threads_1e6.toml": tiny("[placement]\nhash_threads = 1000000\n"),
    "cache_neg.toml": tiny("[placement]\nkind = \"hbm_cache\"\ncache_gib = -1\n"),
    "lengths.toml": tiny("[workload.lengths]\nlow = 0\n"),
    "unknown_field.toml": tiny("[workload]\nsequencez = 4\n"),
    "empty.npy": b"",
    "npy_empty.toml": tiny('[workload.tokens]\nsource = "npy"\npath = "empty.npy"\n'),
    "npy_missing.toml": tiny('[workload.tokens]\nsource = "npy"\npath = "missing.npy"\n'),
    "profile_inf.toml": PROFILE.replace("\nhbm_gbps = ", "\nhbm_gbps = inf #", 1),
    "profile_nan.toml": PROFILE.replace("\nbf16_tflops = ", "\nbf16_tflops = nan #", 1),
    "profile_latin1.toml": PROFILE.encode() + b"# \xff\n",
    "profile_scalar.toml": "gpu = 5\n" + PROFILE.split("[gpu]")[0],
    "sweep_header.csv": SWEEP_CSV,
    "sweep_text.csv": SWEEP_CSV + SWEEP_ROW.replace(",1000,", ",fast,"),
    "sweep_cols.csv": "a,b\n1,2\n",
    "sweep_binary.csv": b"\xff\xfe\x00\x01" * 8,
    "sweep_ok.csv": SWEEP_CSV + SWEEP_ROW,
    "compare_text.csv": ("record,config,placement,phase,table_gib,predicted_tokens_per_s,measured_tokens_per_s,"
                         "rel_err_tokens_per_s,predicted_overhead_vs_hbm,measured_overhead_vs_hbm,"
                         "predicted_exposed_stall_s,measured_exposed_stall_s,profile,profile_matched\n"
                         "r.json,tiny,hbm,decode,one,1,1,0,0,0,0,0,h100-sxm,True\n"),
    "not_json.json": "{not json",
    "no_kind.json": json.dumps({"schema": "engram-sim.record/1"}),
    "old_schema.json": json.dumps({"schema": "engram-sim/0"}),
    "a_folder/keep": "",
}

# (argv, what the one line must name). DIR is the case's folder; the current folder is DIR too.
CASES = [
    # simulate: the config file
    (["simulate", "latin1.toml"], "latin1.toml: is not UTF-8"),
    (["simulate", "scalar_engram.toml"], "engram: got 5; use a table"),
    (["simulate", "scalar_moe.toml"], "backbone.moe: got 3; use a table"),
    (["simulate", "extends_int.toml"], "extends: got 5"),
    (["simulate", "extends_self.toml"], "extends: forms a cycle"),
    (["simulate", "cycle_a.toml"], "extends: forms a cycle"),
    (["simulate", "extends_missing.toml"], "nowhere.toml"),
    (["simulate", "bad_toml.toml"], "bad_toml.toml: not valid TOML"),
    (["simulate", "nope.toml"], "nope.toml: no such config file or preset"),
    (["simulate", "table_1e30.toml"], "engram.table_gib: must be <="),
    (["simulate", "table_inf.toml"], "engram.table_gib: got inf"),
    (["simulate", "table_nan.toml"], "engram.table_gib: got nan"),
    (["simulate", "rows_1e30.toml"], "engram.table_rows_per_order"),
    (["simulate", "dmem0_gib.toml"], "engram.d_mem: must be >= 1"),
    (["simulate", "dmem0.toml"], "engram.d_mem: must be >= 1"),
    (["simulate", "dmem_odd.toml"], "engram.d_mem: 100 is not divisible"),
    (["simulate", "sequences_1e9.toml"], "workload.sequences: must be <="),
    (["simulate", "layers_1e12.toml"], "backbone.layers: must be <="),
    (["simulate", "steps_huge.toml"], "--steps: the run needs about"),
    (["simulate", "trace_huge.toml"], "workload.sequences: the token trace needs about"),
    (["simulate", "topk.toml"], "backbone.moe.top_k: 9 is not in 1..routed_experts=4"),
    (["simulate", "heads_0.toml"], "backbone.attention.heads: must be >= 1"),
    (["simulate", "seed_neg.toml"], "workload.seed: must be >= 0"),
    (["simulate", "zipf_inf.toml"], "workload.tokens.zipf_s: got inf"),
    (["simulate", "threads_1e6.toml"], "placement.hash_threads: must be <= 1024"),
    (["simulate", "cache_neg.toml"], "placement.cache_gib: must be >= 0"),
    (["simulate", "lengths.toml"], "workload.lengths.low: must be >= 1"),
    (["simulate", "unknown_field.toml"], "workload.sequencez: unknown field"),
    (["simulate", "npy_empty.toml"], "workload.tokens.path"),
    (["simulate", "npy_missing.toml"], "workload.tokens.path: no such file"),
    # simulate: the command line
    (["simulate", "tiny", "--table-gib", "0"], "--table-gib: got 0"),
    (["simulate", "tiny", "--table-gib", "-1"], "--table-gib: got -1"),
    (["simulate", "tiny", "--table-gib", "nan"], "--table-gib: got nan"),
    (["simulate", "tiny", "--table-gib", "inf"], "--table-gib: got inf"),
    (["simulate", "tiny", "--table-gib", "1e30"], "--table-gib: must be <="),
    (["simulate", "tiny", "--steps", "1e9"], "--steps"),
    (["simulate", "tiny", "--steps", "0"], "--steps"),
    (["simulate", "tiny", "--steps", "1000000000"], "--steps: the run needs about"),
    (["simulate", "tiny", "--placement", "ssd"], "--placement"),
    (["simulate", "tiny", "--phase", "train"], "--phase"),
    (["simulate", "tiny", "--profile", "nope"], "profile: no profile named"),
    (["simulate", "tiny", "--profile", "profile_inf.toml"], "gpu.hbm_gbps: got inf"),
    # sweep
    (["sweep", "tiny", "--table-gib", "1,1e30", "--out", "DIR/o"], "--table-gib: must be <="),
    (["sweep", "tiny", "--table-gib", "1,0", "--out", "DIR/o"], "--table-gib"),
    (["sweep", "tiny", "--table-gib", "one", "--out", "DIR/o"], "--table-gib"),
    (["sweep", "tiny", "--table-gib", "1", "--threshold", "-1", "--out", "DIR/o"], "--threshold"),
    (["sweep", "tiny", "--table-gib", "1", "--threshold", "nan", "--out", "DIR/o"], "--threshold"),
    (["sweep", "tiny", "--table-gib", "1", "--jobs", "0", "--out", "DIR/o"], "--jobs"),
    (["sweep", "tiny", "--table-gib", "1", "--placements", "ssd", "--out", "DIR/o"], "--placements"),
    (["sweep", "tiny", "--table-gib", "1", "--phases", "train", "--out", "DIR/o"], "--phases"),
    (["sweep", "dmem0.toml", "--table-gib", "1", "--out", "DIR/o"], "engram.d_mem"),
    (["sweep", "tiny", "--table-gib", "1", "--steps", "1000000000", "--out", "DIR/o"], "--steps: the run needs"),
    # demo
    (["demo", "--threshold", "-1"], "--threshold"),
    (["demo", "--threshold", "inf"], "--threshold"),
    (["demo", "--steps", "0"], "--steps"),
    (["demo", "--steps", "100000000"], "--steps: the run needs about"),
    (["demo", "--profile", "nope"], "profile: no profile named"),
    (["demo", "--jobs", "0"], "--jobs"),
    # run (fails before any work: no torch step runs)
    (["run", "tiny", "--device", "tpu", "--out", "DIR/r.json"], "--device: unknown device 'tpu'"),
    (["run", "dmem0.toml", "--out", "DIR/r.json"], "engram.d_mem"),
    (["run", "tiny", "--placement", "tape"], "--placement"),
    # compare
    (["compare", "not_json.json", "--out", "DIR/c"], "not_json.json: not valid JSON"),
    (["compare", "no_kind.json", "--out", "DIR/c"], "no_kind.json: kind: missing"),
    (["compare", "old_schema.json", "--out", "DIR/c"], "old_schema.json: schema"),
    (["compare", "missing.json", "--out", "DIR/c"], "missing.json: record file not found"),
    # report
    (["report", "sweep_header.csv", "--out", "DIR/rep"], "sweep_header.csv: has a header but no rows"),
    (["report", "sweep_text.csv", "--out", "DIR/rep"], "sweep_text.csv: tokens_per_s: row 1 holds 'fast'"),
    (["report", "compare_text.csv", "--out", "DIR/rep"], "compare_text.csv: table_gib: row 1 holds 'one'"),
    (["report", "sweep_cols.csv", "--out", "DIR/rep"], "sweep_cols.csv: lacks column"),
    (["report", "sweep_binary.csv", "--out", "DIR/rep"], "sweep_binary.csv"),
    (["report", "missing.csv", "--out", "DIR/rep"], "missing.csv: no such file"),
    (["report", "--out", "DIR/rep"], "report: needs a sweep CSV"),
    (["report", "sweep_ok.csv", "--threshold", "-1", "--out", "DIR/rep"], "--threshold"),
    (["report", "sweep_ok.csv", "--threshold", "nan", "--out", "DIR/rep"], "--threshold"),
    (["report", "sweep_ok.csv", "sweep_ok.csv", "sweep_ok.csv", "--out", "DIR/rep"], "3 CSVs given"),
    # calibrate (each fails before measuring)
    (["calibrate", "--cpu-only", "--base", "nope"], "profile: no profile named"),
    (["calibrate", "--cpu-only", "--base", "profile_inf.toml"], "gpu.hbm_gbps: got inf"),
    (["calibrate", "--cpu-only", "--out", "DIR/a_folder"], "--out"),
    (["calibrate", "--cpu-only", "--out", "DIR/a_folder/keep/x.toml"], "--out"),
    # profiles
    (["profiles", "nope"], "profile: no profile named"),
    (["profiles", "profile_inf.toml"], "gpu.hbm_gbps: got inf"),
    (["profiles", "profile_nan.toml"], "gpu.bf16_tflops: got nan"),
    (["profiles", "profile_latin1.toml"], "profile_latin1.toml: is not UTF-8"),
    (["profiles", "profile_scalar.toml"], "gpu: got 5; use a table"),
    # presets
    (["presets", "extra"], "unrecognized arguments: extra"),
    # validate
    (["validate", "--sets", "nope"], "--sets: unknown value"),
    (["validate", "--sets", ","], "--sets"),
    (["validate", "--profile", "nope"], "profile: no profile named"),
    (["validate", "--profile", "profile_inf.toml"], "gpu.hbm_gbps: got inf"),
]


def _write_files(folder: Path) -> None:
    for name, content in FILES.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())


def _snapshot(folder: Path) -> dict:
    """Every path under folder with its kind and content hash."""
    out = {}
    for p in sorted(folder.rglob("*")):
        key = str(p.relative_to(folder))
        out[key] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    return code, capsys.readouterr().err


def test_the_corpus_covers_every_command():
    commands = {argv[0] for argv, _ in CASES}
    assert commands == {"simulate", "sweep", "demo", "run", "compare", "report", "calibrate", "profiles",
                        "presets", "validate"}
    assert len(CASES) >= 60


@pytest.mark.parametrize("argv, names", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_one_line_naming_the_field_exit_2_nothing_written(argv, names, tmp_path, capsys,
                                                                       monkeypatch):
    if argv[0] == "run":
        pytest.importorskip("torch")
    _write_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path)
    code, err = _run([a.replace("DIR", str(tmp_path)) for a in argv], capsys)
    assert code == 2, err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err and names in err, err
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("argv, names", [
    (["simulate", "latin1.toml"], "latin1.toml: is not UTF-8"),
    (["simulate", "cycle_a.toml"], "extends: forms a cycle"),
    (["simulate", "tiny", "--table-gib", "1e30"], "--table-gib"),
])
def test_no_traceback_reaches_the_terminal(argv, names, tmp_path):
    _write_files(tmp_path)
    before = _snapshot(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "cli.main", *argv], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and names in proc.stderr and "Traceback" not in proc.stderr
    assert _snapshot(tmp_path) == before


# -- what must keep working -------------------------------------------------------------------------

def test_extends_and_token_paths_are_read_beside_the_config(tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    conf.mkdir()
    np.save(conf / "ids.npy", np.arange(100, dtype=np.int64) % 700)
    (conf / "base.toml").write_text(tiny('[workload.tokens]\nsource = "npy"\npath = "ids.npy"\n'))
    (conf / "run.toml").write_text('extends = "base.toml"\nname = "beside"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(conf / "run.toml")
    assert cfg.name == "beside" and Path(cfg.workload.tokens.path) == conf / "ids.npy"
    assert load_config("tiny").name == "tiny"  # presets by name still load, from any folder


def test_a_chain_of_extends_deeper_than_the_limit_is_refused(tmp_path):
    from vocab.errors import ConfigError

    for i in range(MAX_EXTENDS_DEPTH + 2):
        (tmp_path / f"c{i}.toml").write_text(f'extends = "c{i + 1}.toml"\n' if i <= MAX_EXTENDS_DEPTH else
                                             'extends = "tiny"\n')
    with pytest.raises(ConfigError, match="extends: chains more than"):
        load_config(tmp_path / "c0.toml")
    assert load_config(tmp_path / f"c{MAX_EXTENDS_DEPTH - 1}.toml").name == "tiny"
