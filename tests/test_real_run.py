"""Tiny real runs on CPU: records in the simulator's format; GPU-only placements fail clearly."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from real_runs.runner import ACTORS, decode_inputs, main_run, prefill_inputs, run  # noqa: E402
from sim.config import load_config  # noqa: E402
from sim.record import EVENT_COLUMNS, FETCH_COLUMNS, STEP_COLUMNS, SUMMARY_KEYS, read_record  # noqa: E402

torch.set_num_threads(1)
CUDA = torch.cuda.is_available()


def tiny(**changes):
    cfg = load_config("tiny")
    return cfg.replace(**changes) if changes else cfg


def _check_record(path, cfg, steps):
    rec = read_record(path)
    assert rec.kind == "measured"
    assert list(rec.steps.columns[:len(STEP_COLUMNS)]) == STEP_COLUMNS and len(rec.steps) == steps
    assert all(c in rec.fetches.columns for c in FETCH_COLUMNS)
    assert all(c in rec.events.columns for c in EVENT_COLUMNS)
    assert set(rec.summary) >= set(SUMMARY_KEYS)
    assert len(rec.fetches) == steps * len(cfg.engram.layer_ids)
    assert set(rec.events["actor"]) <= set(ACTORS)
    assert {"gpu compute", "cpu hash"} <= set(rec.events["actor"])
    s, f = rec.steps, rec.fetches
    assert (s["step_time_s"] > 0).all() and (s["compute_time_s"] > 0).all()
    assert (s["compute_time_s"] <= s["step_time_s"] * 1.001).all()
    assert (s["exposed_stall_s"] >= 0).all() and (f["exposed_stall_s"] >= 0).all()
    assert (f["fetch_end_s"] >= f["fetch_start_s"]).all() and (f["unique_rows"] <= f["lookups"]).all()
    assert np.allclose(s["exposed_stall_s"], f.groupby("step")["exposed_stall_s"].sum().values)
    assert (s["start_s"].diff().dropna() > 0).all()
    assert rec.config["name"] == cfg.name
    assert rec.machine["cpu_cores"] >= 1
    return rec


def test_tiny_decode_run_writes_a_record(tmp_path):
    cfg = tiny()
    out = tmp_path / "decode.json"
    record = run(cfg, steps=3, out=out, device="cpu")
    rec = _check_record(out, cfg, 3)
    w = cfg.workload
    assert (rec.steps["tokens"] == w.sequences).all()
    lookups = w.sequences * cfg.engram.tables_per_layer
    assert (rec.fetches["lookups"] == lookups).all()
    assert (rec.steps["host_bytes"] == rec.fetches["host_rows"].values * cfg.engram.row_bytes).all()
    assert {"cpu gather", "h2d link"} <= set(rec.events["actor"])      # host_dma on CPU: gather + memcpy
    assert rec.extra["nvml"]["available"] is False and rec.extra["nvml"]["reason"]
    assert record.summary["steps"] == 3


def test_tiny_prefill_run_writes_a_record(tmp_path):
    cfg = tiny(**{"workload.phase": "prefill", "workload.tokens_per_step": 48})
    out = tmp_path / "prefill.json"
    run(cfg, placement="hbm", steps=2, out=out, device="cpu")
    rec = _check_record(out, cfg, 2)
    assert (rec.steps["tokens"] == 48).all()                         # chunked prefill: full steps
    assert (rec.fetches["lookups"].values == rec.steps["tokens"].values * cfg.engram.tables_per_layer).all()
    assert (rec.steps["host_bytes"] == 0).all()                       # hbm: nothing crosses the link
    # prefetch ahead: a step's fetch starts before the step itself
    assert rec.fetches["fetch_start_s"].iloc[-1] < rec.steps["start_s"].iloc[-1]


def test_tiny_hbm_cache_run_on_cpu(tmp_path):
    cfg = tiny(**{"placement.kind": "hbm_cache", "placement.cache_fraction": 0.05, "placement.miss_path": "host_dma",
                  "placement.cache_policy": "static_topk"})
    rec = run(cfg, steps=2, device="cpu")
    f = rec.fetches
    assert (f["cache_hits"] + f["host_rows"] == f["unique_rows"]).all() and f["cache_hits"].sum() > 0


def test_baseline_without_engram():
    rec = run(tiny(), placement="none", steps=2, device="cpu")
    assert len(rec.fetches) == 0 and (rec.steps["exposed_stall_s"] == 0).all()
    assert math.isnan(rec.summary["overlap_fraction"])


def test_workload_inputs_are_seeded_and_shaped():
    cfg = tiny()
    ctx, steps = decode_inputs(cfg, 3, np.random.default_rng(0))
    ctx2, steps2 = decode_inputs(cfg, 3, np.random.default_rng(0))
    assert (ctx == ctx2).all() and all((a.window == b.window).all() for a, b in zip(steps, steps2))
    assert steps[0].window.shape == (cfg.workload.sequences, cfg.engram.max_ngram_size)
    assert (steps[1].window[:, :-1] == steps[0].window[:, 1:]).all()      # a sliding window per sequence
    pcfg = tiny(**{"workload.phase": "prefill", "workload.tokens_per_step": 40})
    pre = prefill_inputs(pcfg, 3, np.random.default_rng(0))
    stream = np.concatenate([st.ids[i, :n] for st in pre for i, n in enumerate(st.lengths)])
    for st in pre:
        assert st.tokens == 40 and st.ids.shape[0] == st.lengths.size == st.context.shape[0]
    # a chunk that continues a prompt carries that prompt's previous N-1 tokens as context
    first = pre[1]
    if (first.context[0] != pcfg.engram.compressed_pad_id).all():
        assert (first.context[0] == stream[40 - 2:40]).all()


@pytest.mark.parametrize("phase", ["decode", "prefill"])
def test_real_steps_match_the_simulator_trace(phase):
    """Same seed, same steps: the real run hashes the very tokens the simulator's trace does."""
    from workloads.trace import build_trace

    cfg = tiny(**{"workload.phase": phase, "workload.steps": 3, "workload.tokens_per_step": 40,
                  "workload.lengths": {"dist": "uniform", "low": 1, "high": 30}})
    trace = build_trace(cfg)
    rec = run(cfg, placement="hbm", steps=3, warmup=0, device="cpu")
    assert rec.steps["tokens"].tolist() == trace.tokens.tolist()
    assert rec.fetches["lookups"].tolist() == trace.lookups[:, 0].tolist()
    assert rec.fetches["unique_rows"].tolist() == trace.distinct_rows[:, 0].tolist()


@pytest.mark.skipif(CUDA, reason="checks the CPU-only error")
@pytest.mark.parametrize("changes", [{"placement.kind": "host_uva"},
                                     {"placement.kind": "hbm_cache", "placement.cache_fraction": 0.1,
                                      "placement.miss_path": "host_uva"}])
def test_gpu_only_placements_fail_clearly_on_cpu(changes, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="host_uva needs a CUDA GPU"):
        run(tiny(**changes), steps=1, device="cpu")


@pytest.mark.skipif(CUDA, reason="checks the CPU-only error")
def test_cuda_device_without_gpu():
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        run(tiny(), steps=1, device="cuda")


@pytest.mark.parametrize("phase", ["decode", "prefill"])
@pytest.mark.parametrize("changes", [{"placement.kind": "host_uva"},
                                     {"placement.kind": "hbm_cache", "placement.cache_fraction": 0.05,
                                      "placement.miss_path": "host_uva"}])
def test_host_uva_runs_on_cpu_in_the_triton_interpreter(tmp_path, monkeypatch, phase, changes):
    pytest.importorskip("triton", reason="the Triton interpreter needs Triton (pip install triton)")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    cfg = tiny(**{"workload.phase": phase, **changes})
    out = tmp_path / "uva.json"
    run(cfg, steps=3, out=out, device="cpu")
    rec = _check_record(out, cfg, 3)
    assert "uva gather" in set(rec.events["actor"]) and "cpu gather" not in set(rec.events["actor"])
    assert (rec.fetches["host_rows"] > 0).all()
    assert any("interpreter" in n for n in rec.extra["notes"])


def test_main_run(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    out = tmp_path / "cli.json"
    code = main_run(SimpleNamespace(config="tiny", placement="hbm", steps=2, out=str(out), device="cpu"))
    assert code == 0 and out.is_file()
    assert "tok/s" in capsys.readouterr().out
    assert json.loads(out.read_text())["kind"] == "measured"
    if not CUDA:
        code = main_run(SimpleNamespace(config="tiny", placement="host_uva", steps=1, out=str(out), device=None))
        assert code == 2 and "host_uva needs a CUDA GPU" in capsys.readouterr().err


def test_bench_cpu_parts(tmp_path):
    from real_runs.bench import main

    out = tmp_path / "bench.json"
    assert main(["--quick", "--parts", "hash,uva", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["hash"]["ratio_numba_over_numpy"] > 0
    if not CUDA:
        assert "needs a CUDA GPU" in data["uva"]["skipped"]


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
@pytest.mark.parametrize("placement", ["hbm", "host_dma", "host_uva", "hbm_cache"])
@pytest.mark.parametrize("phase", ["decode", "prefill"])
def test_tiny_runs_on_gpu(tmp_path, placement, phase):
    cfg = tiny(**{"workload.phase": phase, "placement.cache_fraction": 0.05})
    out = tmp_path / f"{phase}-{placement}.json"
    run(cfg, placement=placement, steps=3, out=out, device="cuda")
    rec = _check_record(out, cfg, 3)
    if placement in ("host_dma", "host_uva"):
        assert (rec.fetches["host_rows"] == rec.fetches["unique_rows"]).all()
