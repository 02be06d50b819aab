"""engram-sim shared-host: gather workers reading one host table in lock-step (real_runs/shared_host.py).

The measuring runs go through the command in a fresh process: the workers are forked, which Numba's OpenMP
threads (started by other tests in this process) forbid."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cli.main import main
from tests.test_interrupts import EXIT_LIMIT_S, Started, children, still_running
from tools.shared_host_check import compare_shared_host, read_shared_host
from vocab.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "real_runs" / "records" / "shared-host.toml")
# 256 B rows, prefill steps of 4096 tokens (about 7 MiB of rows: two 4 MiB staging chunks), a small table.
SMALL = ["--table-gib", "0.03", "--steps", "3", "--warmup", "1"]


def shared_host(*args, timeout=120):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "cli.main", "shared-host", *args], cwd=ROOT, env=env,
                          check=False, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    out = tmp_path_factory.mktemp("shared") / "record.json"
    done = shared_host(CONFIG, "--workers", "1,2", "--gather-threads", "1", *SMALL, "--out", str(out))
    assert done.returncode == 0, done.stderr
    return json.loads(out.read_text())


def test_record_names_what_it_measured(record):
    assert record["schema"] == "engram-sim.shared-host/1"
    assert record["workers"] == [1, 2] and record["gather_threads"] == [1] and record["steps"] == 3
    assert record["rows"] == "per_worker" and record["copy"] == "none"
    assert record["tables"]["row_bytes"] == 256 and record["placement"]["kind"] == "host_dma"
    assert "table -> staging" in record["intervals"]
    assert record["machine"]["cpu_cores"] == os.cpu_count()
    assert [(p["workers"], p["gather_threads"]) for p in record["points"]] == [(1, 1), (2, 1)]
    assert record["points"][0]["gather_makespan_vs_one_worker"] == 1.0
    if not record["quiet"]:
        assert "UNDER LOAD" in record["note"]


def test_each_worker_gathers_its_own_trace_in_staging_chunks(record):
    # The rows each worker fetched are the unique rows of ITS trace (workload.seed + worker index), in as
    # many staging chunks as those rows' bytes need.
    from real_runs.hashing import NgramHasher
    from real_runs.inputs import step_rows
    from real_runs.shared_host import trace_inputs
    from vocab.geometry import table_offsets

    cfg = load_config(CONFIG).with_table_gib(0.03)
    hasher = NgramHasher.from_config(cfg.engram)
    (layer,) = cfg.engram.layer_ids
    offsets = table_offsets(hasher.table_sizes(layer))
    chunk_rows = int(cfg.placement.staging_chunk_mib * (1 << 20)) // cfg.engram.row_bytes
    table = record["points"][1]["workers_table"]
    for w in range(2):
        steps = trace_inputs(cfg, 4, cfg.workload.seed + w)[1:]     # after the one warm-up step
        unique = [np.unique(step_rows(hasher, st, layer, offsets)).size for st in steps]
        assert table["unique_rows"][w] == unique
        assert table["chunks"][w] == [math.ceil(u / chunk_rows) for u in unique]
        assert min(table["chunks"][w]) >= 2
    assert table["unique_rows"][0] != table["unique_rows"][1]


def test_intervals_nest_and_makespans_span_the_workers(record):
    pt = record["points"][1]
    t = {k: np.array(v) for k, v in pt["workers_table"].items()}
    assert t["start_s"].shape == (2, 3)
    # The hashing comes first; the gathers lie within the fetch, their busy time within their span.
    assert (t["worker_hash_s"] > 0).all()
    assert (t["gather_start_s"] >= t["start_s"] + t["worker_hash_s"] - 1e-6).all()
    assert (t["gather_end_s"] <= t["fetch_end_s"]).all()
    assert (t["worker_gather_s"] <= t["gather_end_s"] - t["gather_start_s"] + 1e-6).all()
    makespan = t["gather_end_s"].max(0) - t["gather_start_s"].min(0)
    assert np.allclose(pt["steps_table"]["gather_makespan_s"], makespan, atol=1e-6)
    assert (makespan >= (t["gather_end_s"] - t["gather_start_s"]).max(0) - 1e-6).all()
    # Lock-step: no worker starts step s+1 before every worker has started step s... and finished it.
    assert (t["start_s"][:, 1:].min(0) >= t["fetch_end_s"][:, :-1].max(0) - 1e-6).all()
    s = pt["summary"]["gather_makespan_s"]
    assert s["min"] <= s["median"] <= s["max"]


def test_serial_fill_gives_the_tables_contents():
    from real_runs.shared_host import numba_threads_started, serial_host_table
    from real_runs.tables import HostTable

    serial = serial_host_table(300, 16, "bf16", seed=11)
    parallel = HostTable(300, 16, "bf16", seed=11)   # the parallel fill starts Numba's threads here
    try:
        assert np.array_equal(serial.bytes, parallel.bytes) and serial.bytes.any()
        assert numba_threads_started()
    finally:
        serial.close()
        parallel.close()


def test_a_process_with_numba_threads_is_refused():
    from real_runs.shared_host import measure_shared_host, numba_threads_started
    from real_runs.tables import HostTable

    HostTable(10, 16, "bf16").close()   # makes sure this process has run a parallel kernel
    assert numba_threads_started()
    with pytest.raises(RuntimeError, match="fresh process"):
        measure_shared_host(load_config(CONFIG).with_table_gib(0.01), [1], [1], steps=1)


@pytest.mark.parametrize("args, field", [
    (["--workers", "0"], "--workers"),
    (["--workers", "two"], "--workers"),
    (["--gather-threads", ""], "--gather-threads"),
    (["--warmup", "-1"], "--warmup"),
    (["--table-gib", "100000"], "engram.table_gib"),
    (["--set", "placement.kind=hbm"], "placement.kind"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, field):
    out = tmp_path / "r.json"
    assert main(["shared-host", CONFIG, *args, "--steps", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and field in err[0], err
    assert not out.exists()


def test_out_is_checked_before_any_work(tmp_path, capsys):
    assert main(["shared-host", CONFIG, "--steps", "1", "--out", str(tmp_path)]) == 2
    assert "--out" in capsys.readouterr().err


@pytest.mark.skipif(os.name != "posix" or not Path("/proc/self/stat").exists(), reason="needs POSIX signals")
def test_ctrl_c_kills_the_workers_and_writes_nothing(tmp_path):
    out = tmp_path / "r.json"
    run = Started([sys.executable, "-m", "cli.main", "shared-host", "tiny", "--table-gib", "0.01",
                   "--workers", "2", "--gather-threads", "1", "--steps", "10000000", "--out", str(out)])
    try:
        workers = set()
        for _ in range(400):   # the two forked workers appear once the table is filled
            workers = children(run.proc.pid)
            if len(workers) >= 2:
                break
            assert run.proc.poll() is None, run.err.decode()
            time.sleep(0.05)
        assert len(workers) >= 2, run.err.decode()
        code, _ = run.stopped_by(lambda: os.killpg(run.proc.pid, signal.SIGINT), EXIT_LIMIT_S)
        assert code == 130, run.err.decode()
        assert b"interrupted" in run.err
        assert not still_running(workers)
        assert list(tmp_path.iterdir()) == []
    finally:
        run.kill_group()


# -- python -m real_runs.multi_gpu -----------------------------------------------------------------------

def test_multi_gpu_skips_with_its_reason_without_gpus(tmp_path, capsys):
    import torch

    from real_runs import multi_gpu

    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine has several GPUs: the run would start")
    assert multi_gpu.main(["tiny", "--out", str(tmp_path / "mg")]) == 0
    err = capsys.readouterr().err
    assert "skipped: needs" in err and "GPU" in err
    assert not (tmp_path / "mg").exists()
    assert multi_gpu.main(["tiny", "--gpus", "1"]) == 2
    assert "--gpus" in capsys.readouterr().err


SHARD_RUN = """
import sys
from pathlib import Path
from real_runs.multi_gpu import launch
from vocab.config import load_config
if __name__ == "__main__":
    launch(load_config("tiny"), 2, "shard", 3, Path(sys.argv[1]), backend="gloo")
"""


def test_sharded_rows_are_all_gathered_on_every_rank(tmp_path):
    # Two CPU processes over gloo run the shard loop a GPU machine runs over NCCL: each rank gathers the rows
    # its slice owns, the all-gather brings every rank all of them (checked against the table's contents).
    script = tmp_path / "shard.py"
    script.write_text(SHARD_RUN)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "out")], cwd=ROOT, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    ranks = [json.loads((tmp_path / "out" / f"tiny-shard-rank{r}.json").read_text()) for r in range(2)]
    assert [r["rank"] for r in ranks] == [0, 1] and len(ranks[0]["steps"]) == 3
    for a, b in zip(ranks[0]["steps"], ranks[1]["steps"]):
        assert a["unique_rows"] == b["unique_rows"] == a["own_rows"] + b["own_rows"]
        assert a["all_gather_bytes"] == 2 * max(a["own_rows"], b["own_rows"]) * ranks[0]["row_bytes"]


def test_compare_predicts_a_shared_host_record_with_the_server_des(tmp_path, capsys):
    """`compare` on a shared-host record: one predicted row per measured point, by the server DES on the
    record's profile as a one-node server of `workers` GPUs; one worker's prediction is one GPU's."""
    path = ROOT / "real_runs" / "records" / "shared-host-cpu.json"
    record = read_shared_host(path)
    df = compare_shared_host(record)
    assert len(df) == len(record["points"])
    assert (df["predicted_ms"] > 0).all() and (df["one_worker_ratio_predicted"][df["workers"] == 1] == 1).all()
    # Workers share the node's cores: more of them never make the predicted span shorter than one alone.
    alone = df[df["workers"] == 1].set_index("gather_threads")["predicted_ms"]
    assert all(r.predicted_ms >= alone[r.gather_threads] - 1e-9 for r in df.itertuples())
    assert main(["compare", str(path), "--out", str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    assert "measured vs predicted by the server DES" in text and (tmp_path / "out" / "shared-host-compare.csv").is_file()
