"""Serving runs on the real backbone: packed steps, the scheduler's steps, the record, compare."""

from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cli.main import main  # noqa: E402
from real_runs.backbone import Backbone, Packed  # noqa: E402
from real_runs.serve import ServeLoop, kv_blocks_for, run_serving  # noqa: E402
from sim.placements import placement_for  # noqa: E402
from sim.serve import serving_parts  # noqa: E402
from tools.compare import SERVING_METRICS, compare_records  # noqa: E402
from vocab.config import load_config  # noqa: E402
from vocab.placements import PLACEMENTS  # noqa: E402
from vocab.records import read_record, write_record  # noqa: E402
from vocab.serving import BATCH_COLUMNS, REQUEST_COLUMNS, serving_tables  # noqa: E402
from workloads.requests import make_requests  # noqa: E402
from workloads.scheduler import Scheduler  # noqa: E402


def serve_cfg(policy="prefill_first", count=6, **scheduler):
    cfg = load_config("tiny").with_workload(phase="serve")
    w = cfg.workload
    req = replace(w.requests, count=count, prompt=replace(w.requests.prompt, dist="uniform", low=3, high=20),
                  output=replace(w.requests.output, dist="uniform", low=1, high=6))
    sch = replace(w.scheduler, **{"policy": policy, "max_batched_tokens": 48, "max_sequences": 4,
                                   "kv_block_tokens": 8, **scheduler})
    return cfg.with_workload(requests=req, scheduler=sch)


def test_packed_chunks_give_the_whole_sequence_logits():
    """A request run in chunks packed beside another request's equals the same tokens run whole."""
    cfg = serve_cfg()
    bb = Backbone(cfg.backbone, cfg.engram, device="cpu", dtype=torch.float64, seed=3)
    gen = torch.Generator().manual_seed(0)
    for layer in bb.engram_layers:   # the convolution is zero at init: make its history matter
        w = bb.layers[layer].engram.conv_weight
        w.copy_(torch.randn(w.shape, generator=gen, dtype=w.dtype) * 0.3)
    d_mem = cfg.engram.d_mem
    ids = {0: torch.randint(0, 1000, (12,), generator=gen), 1: torch.randint(0, 1000, (8,), generator=gen)}
    rows = {r: torch.randn(len(t), d_mem, generator=gen, dtype=torch.float64) for r, t in ids.items()}

    def whole(r, n):
        return bb(ids[r][None, :n], lambda layer: rows[r][:n], states=bb.new_states(1))[0]

    cache = bb.new_cache(3, 16, np.zeros(3, dtype=np.int64))
    states = bb.new_states(3)
    # request 0 in slot 2, request 1 in slot 0: chunks (request, start, count) of three steps
    slot = {0: 2, 1: 0}
    steps = [[(0, 0, 6), (1, 0, 4)], [(1, 4, 1), (0, 6, 5)], [(0, 11, 1), (1, 5, 1)]]
    for chunks in steps:
        r, start, n = (np.array(c) for c in zip(*chunks))
        tok = torch.cat([ids[i][s:s + k] for i, s, k in chunks])[None]
        step_rows = torch.cat([rows[i][s:s + k] for i, s, k in chunks])
        packed = Packed.build(cache, states, [slot[i] for i in r], start, n, "cpu")
        last = torch.from_numpy(np.cumsum(n) - 1)
        logits = bb(tok, lambda layer: step_rows, packed=packed, last_index=last)
        for k, (i, s, c) in enumerate(chunks):
            torch.testing.assert_close(logits[k], whole(i, s + c), rtol=1e-9, atol=1e-9)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One real serving run of the chunked policy (its loop kept) and its record."""
    cfg = serve_cfg("chunked", count=8, max_batched_tokens=24)
    out = tmp_path_factory.mktemp("serve") / "serve.json"
    loops = []
    real_init = ServeLoop.__init__

    def keep(self, *a, **k):
        real_init(self, *a, **k)
        loops.append(self)
    ServeLoop.__init__ = keep
    try:
        record = run_serving(cfg, device="cpu", out=out)
    finally:
        ServeLoop.__init__ = real_init
    return cfg, loops[0], record, out


def test_every_request_gets_all_its_output_tokens(served):
    cfg, loop, record, _ = served
    req = loop.requests
    np.testing.assert_array_equal(loop.scheduler.generated, req.output)
    s = record.extra["serving"]
    assert s["unfinished"] == 0 and s["output_tokens"] == req.output_tokens
    # each request's chunks cover its prompt and all outputs but the last (sampled, never fed back)
    computed = np.zeros(req.count, dtype=np.int64)
    for step in loop.served:
        np.testing.assert_array_equal(step.starts, computed[step.requests])   # no preemption in this run
        computed[step.requests] += step.counts
    np.testing.assert_array_equal(computed, req.prompt + req.output - 1)


def test_steps_are_the_schedulers_own(served):
    """The run's steps equal a pure replay of the scheduler on the same requests and blocks."""
    cfg, loop, record, _ = served
    requests = make_requests(cfg, np.random.default_rng(cfg.workload.seed))
    np.testing.assert_array_equal(requests.tokens, loop.requests.tokens)
    sched = Scheduler(cfg, requests, loop.scheduler.kv.blocks)
    replay = []
    while not sched.done:
        step = sched.schedule(0.0)
        replay.append(step)
        sched.finish(step, 0.0)
    assert len(replay) == len(loop.served) == len(record.steps) == record.extra["serving"]["steps"]
    for a, b in zip(replay, loop.served):
        for name in ("requests", "starts", "counts", "decodes"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    batches = record.extra["batches"]
    assert batches["sequences"] == [s.sequences for s in replay]
    assert list(record.steps.tokens) == [s.tokens for s in replay]
    assert len(record.fetches) == len(replay) * len(cfg.engram.layer_ids)


def test_the_record_round_trips_with_its_serving_tables(served, tmp_path):
    cfg, loop, record, out = served
    back = read_record(out)
    requests, batches, summary = serving_tables(back.extra)
    assert list(requests.columns) == REQUEST_COLUMNS and list(batches.columns) == BATCH_COLUMNS
    assert len(requests) == loop.requests.count and len(batches) == len(loop.served)
    assert summary == pytest.approx(record.extra["serving"], nan_ok=True)
    assert back.kind == "measured" and back.extra["device"] == "cpu"
    # step times are from the run's start, as the batches' are
    np.testing.assert_allclose(back.steps.start_s, batches.start_s)
    assert (batches.start_s >= 0).all() and (requests.finish_s >= requests.first_token_s).all()
    write_record(back, tmp_path / "again.json")
    assert serving_tables(read_record(tmp_path / "again.json").extra)[2] == pytest.approx(summary, nan_ok=True)


def test_compare_gives_a_row_per_serving_metric(served):
    cfg, loop, record, out = served
    df, summary, _, skipped = compare_records([out], "dev-vm-cpu")
    assert df.empty and skipped == []
    serving = summary["_serving"]
    assert list(serving.metric) == list(SERVING_METRICS)
    row = serving.set_index("metric").loc["output_tokens_per_s"]
    assert row.measured == pytest.approx(record.extra["serving"]["output_tokens_per_s"])
    assert row.predicted > 0 and np.isfinite(row.rel_err)
    steps = serving.set_index("metric").loc["steps"]
    assert steps.measured == steps.predicted == len(loop.served)   # same scheduler, same steps


@pytest.mark.parametrize("kind", PLACEMENTS)
def test_kv_blocks_are_the_simulators(kind):
    from profiles import load_profile

    extra = {"cache_fraction": 0.25} if kind in ("hbm_cache", "ssd") else {}
    cfg = serve_cfg().with_placement(kind, **extra)
    profile = load_profile("h100-sxm" if kind != "ssd" else "dev-vm-cpu")
    _, blocks = serving_parts(cfg, profile, placement_for(cfg), check_capacity=False)
    assert kv_blocks_for(cfg, profile) == blocks
    capped = cfg.with_workload(scheduler=replace(cfg.workload.scheduler, kv_blocks=7))
    assert kv_blocks_for(capped, profile) == 7


def test_a_serving_config_runs_from_the_cli(tmp_path, capsys):
    cfg_path = tmp_path / "serve.toml"
    cfg_path.write_text('extends = "tiny"\nname = "tiny-serve-test"\n[workload]\nphase = "serve"\n'
                        '[workload.requests]\ncount = 3\nprompt = { dist = "fixed", low = 5, high = 5 }\n'
                        'output = { dist = "fixed", low = 2, high = 2 }\n'
                        '[workload.scheduler]\nmax_batched_tokens = 32\nkv_block_tokens = 4\n')
    out = tmp_path / "rec.json"
    assert main(["run", str(cfg_path), "--device", "cpu", "--placement", "hbm", "--out", str(out)]) == 0
    assert "3 requests" in capsys.readouterr().out
    rec = read_record(out)
    assert rec.config["placement"]["kind"] == "hbm" and rec.extra["serving"]["output_tokens"] == 6


def test_a_request_longer_than_the_kv_cache_is_one_line(tmp_path, capsys):
    cfg_path = tmp_path / "serve.toml"
    cfg_path.write_text('extends = "tiny"\nname = "too-long"\n[workload]\nphase = "serve"\n'
                        '[workload.requests]\ncount = 2\nprompt = { dist = "fixed", low = 40, high = 40 }\n'
                        '[workload.scheduler]\nkv_block_tokens = 4\nkv_blocks = 3\n')
    out = tmp_path / "rec.json"
    assert main(["run", str(cfg_path), "--device", "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "workload.scheduler.kv_blocks" in err[0]
    assert not out.exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (this machine has none)")
@pytest.mark.parametrize("placement", ["hbm", "host_dma", "host_uva"])
def test_serving_runs_on_gpu(tmp_path, placement):
    cfg = serve_cfg("chunked", count=8).with_placement(placement)
    record = run_serving(cfg, device="cuda", out=tmp_path / "gpu.json")
    assert record.extra["serving"]["unfinished"] == 0
    assert record.extra["device"].startswith("cuda")


def test_calibrate_counts_the_engram_ops_the_simulator_counts():
    from sim.compute import ENGRAM_KERNELS
    from tools.calibrate import cpu_device

    assert cpu_device.ENGRAM_KERNELS == ENGRAM_KERNELS
