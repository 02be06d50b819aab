"""Serving workloads: requests, the scheduler, the KV blocks, and the serving DES."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from profiles import load_profile
from sim.engine import simulate
from sim.predict import predict, throughput
from sim.serve import simulate_serving
from vocab.config import load_config
from vocab.errors import CapacityError, ConfigError
from workloads.hashing import hash_layer, layer_multipliers
from workloads.requests import make_requests
from workloads.scheduler import Scheduler, graph_batch
from workloads.serving_rows import ServingRows, step_contexts


def serve_cfg(count=12, prompt=(8, 40), output=(2, 12), policy="prefill_first", placement="hbm", **scheduler):
    cfg = load_config("tiny").with_placement(placement)
    s = dataclasses.replace(cfg.workload.scheduler, policy=policy, **scheduler)
    r = dataclasses.replace(cfg.workload.requests, count=count,
                            prompt=dataclasses.replace(cfg.workload.requests.prompt, low=prompt[0], high=prompt[1]),
                            output=dataclasses.replace(cfg.workload.requests.output, low=output[0], high=output[1]))
    return cfg.with_workload(phase="serve", requests=r, scheduler=s)


def run_scheduler(cfg, blocks, step_s=1e-3):
    requests = make_requests(cfg, np.random.default_rng(cfg.workload.seed))
    sched = Scheduler(cfg, requests, blocks)
    now, steps = 0.0, []
    while not sched.done:
        step = sched.schedule(now)
        if step is None:
            now = sched.next_arrival()
            continue
        steps.append(step)
        assert step.kv_blocks_used <= blocks
        now += step_s
        sched.finish(step, now)
    return requests, sched, steps


@pytest.mark.parametrize("policy", ["prefill_first", "chunked"])
def test_every_request_gets_all_its_tokens_and_each_token_is_computed_once(policy):
    cfg = serve_cfg(policy=policy, max_batched_tokens=64)
    requests, sched, steps = run_scheduler(cfg, blocks=10_000)
    assert np.array_equal(sched.generated, requests.output)
    assert sched.preemptions.sum() == 0
    # Without preemption each request computes its prompt and all its outputs but the last, exactly once.
    assert sum(s.tokens for s in steps) == int((requests.prompt + requests.output - 1).sum())
    for s in steps:
        assert s.tokens <= 64
    seen = {}
    for s in steps:
        for r, a, n in zip(s.requests, s.starts, s.counts):
            seen.setdefault(int(r), []).append((int(a), int(n)))
    for r, chunks in seen.items():  # positions are contiguous: each chunk starts where the last ended
        ends = np.cumsum([n for _, n in chunks])
        assert [a for a, _ in chunks] == [0, *ends[:-1]]


@pytest.mark.parametrize("policy", ["prefill_first", "chunked"])
def test_the_batch_never_exceeds_the_kv_blocks_and_preempted_requests_still_finish(policy):
    cfg = serve_cfg(count=16, prompt=(20, 40), output=(20, 40), policy=policy, kv_block_tokens=8)
    requests, sched, steps = run_scheduler(cfg, blocks=24)  # room for ~3 requests at a time
    assert sched.preemptions.sum() > 0
    assert np.array_equal(sched.generated, requests.output)
    assert max(s.kv_blocks_used for s in steps) <= 24
    assert sched.kv.free == 24  # every block released at the end


def test_prefill_first_runs_whole_prompts_before_any_decode():
    cfg = serve_cfg(count=8, prompt=(10, 10), output=(5, 5), max_batched_tokens=40)
    _, _, steps = run_scheduler(cfg, blocks=10_000)
    kinds = ["decode" if s.decode_only else "prefill" for s in steps]
    assert kinds[:2] == ["prefill", "prefill"] and set(kinds[2:]) == {"decode"}
    assert [s.sequences for s in steps[:2]] == [4, 4]
    assert all(not s.decodes.any() for s in steps[:2])


def test_chunked_prefill_mixes_decodes_and_prompt_chunks_within_the_budget():
    cfg = serve_cfg(count=6, prompt=(30, 30), output=(6, 6), policy="chunked", max_batched_tokens=32)
    _, _, steps = run_scheduler(cfg, blocks=10_000)
    assert any(s.decodes.any() and not s.decodes.all() for s in steps)
    assert all(s.tokens <= 32 for s in steps)


def test_a_request_that_can_never_fit_is_refused_with_the_field():
    cfg = serve_cfg(prompt=(40, 40), output=(10, 10), kv_block_tokens=8)
    requests = make_requests(cfg, np.random.default_rng(0))
    with pytest.raises(CapacityError) as e:
        Scheduler(cfg, requests, kv_blocks=4)
    assert e.value.field == "workload.scheduler.kv_blocks"
    with pytest.raises(ConfigError) as e:
        Scheduler(serve_cfg(prompt=(40, 40), output=(10, 10), max_batched_tokens=32), requests, kv_blocks=1000)
    assert e.value.field == "workload.scheduler.max_batched_tokens"


def test_graph_padding_follows_the_ladder_and_only_for_decode_only_steps():
    cfg = serve_cfg().with_workload(launch="cuda_graphs")
    assert graph_batch(cfg, np.ones(3, dtype=bool)) == 4
    assert graph_batch(cfg, np.ones(17, dtype=bool)) == 32
    assert graph_batch(cfg, np.array([True, False])) == 0
    assert graph_batch(cfg, np.ones(513, dtype=bool)) == 0
    assert graph_batch(cfg.with_workload(launch="eager"), np.ones(3, dtype=bool)) == 0


def test_poisson_arrivals_make_the_scheduler_wait_for_the_first_request():
    cfg = serve_cfg()
    cfg = cfg.with_workload(requests=dataclasses.replace(cfg.workload.requests, arrival="poisson", rate_per_s=50.0))
    requests = make_requests(cfg, np.random.default_rng(0))
    assert np.all(np.diff(requests.arrival_s) > 0) and requests.arrival_s[0] > 0
    sched = Scheduler(cfg, requests, 10_000)
    assert sched.schedule(0.0) is None and sched.next_arrival() == requests.arrival_s[0]
    result = simulate_serving(cfg)
    assert result.batches.start_s.iloc[0] >= requests.arrival_s[0]
    assert (result.requests.ttft_s > 0).all()


def test_a_request_trace_file_is_read_and_a_bad_one_names_the_field(tmp_path):
    good = tmp_path / "trace.csv"
    good.write_text("arrival_s,prompt_tokens,output_tokens\n0.5,12,3\n0.0,20,4\n")
    cfg = serve_cfg()
    cfg = cfg.with_workload(requests=dataclasses.replace(cfg.workload.requests, arrival="trace", path=str(good)))
    requests = make_requests(cfg, np.random.default_rng(0))
    assert requests.prompt.tolist() == [20, 12] and requests.output.tolist() == [4, 3]  # sorted by arrival
    bad = tmp_path / "bad.csv"
    bad.write_text("arrival_s,prompt\n0,1\n")
    cfg = cfg.with_workload(requests=dataclasses.replace(cfg.workload.requests, path=str(bad)))
    with pytest.raises(ConfigError) as e:
        make_requests(cfg, np.random.default_rng(0))
    assert e.value.field == "workload.requests.path" and "prompt_tokens" in str(e.value)


def test_serving_rows_hash_with_the_official_rule():
    cfg = serve_cfg(count=3)
    requests, _, steps = run_scheduler(cfg, blocks=10_000)
    eng = cfg.engram
    rows = ServingRows(cfg, requests)
    step = steps[0]
    ctx = step_contexts(requests, step, eng.max_ngram_size - 1, eng.compressed_pad_id)
    layer = eng.layer_ids[0]
    # The reference hashes a [1, T] sequence; the context's own tokens, oldest first, are that sequence.
    r, a, n = int(step.requests[0]), int(step.starts[0]), int(step.counts[0])
    seq = requests.tokens[requests.offsets[r]:requests.offsets[r] + a + n][None, :]
    ref = hash_layer(seq, layer_multipliers(eng.seed, layer, eng.max_ngram_size, eng.compressed_vocab_size),
                     eng.table_sizes[layer], eng.max_ngram_size, eng.compressed_pad_id)[0, a:]
    assert np.array_equal(ctx[:n, 0], seq[0, a:])
    counts = rows.rows(step)
    offsets = np.concatenate([[0], np.cumsum([p for order in eng.table_sizes[layer] for p in order])[:-1]])
    first = {int(x) for x in (ref + offsets[None, :]).ravel()}
    assert counts["distinct"][0] >= len(first)  # the step's other requests add rows, never remove them
    assert counts["lookups"][0] == step.tokens * eng.tables_per_layer


def test_equal_requests_all_at_once_reduce_to_the_steady_decode_batch():
    """B equal requests, all at t = 0: after the prefill, each decode step is the steady model's step."""
    B, P, O = 16, 24, 9
    cfg = serve_cfg(count=B, prompt=(P, P), output=(O, O)).with_workload(launch="cuda_graphs")
    served = simulate_serving(cfg)
    decode = served.steps[served.batches.decode_tokens.to_numpy() == B]
    assert len(decode) == O - 1
    steady_cfg = cfg.with_workload(phase="decode", sequences=B, steps=O - 1,
                                   lengths=dataclasses.replace(cfg.workload.lengths, dist="fixed", low=P, high=P),
                                   tokens=dataclasses.replace(cfg.workload.tokens, trace_steps=O - 1))
    steady = simulate(steady_cfg, memoize=False)
    assert np.allclose(decode.step_time_s.to_numpy(), steady.steps.step_time_s.to_numpy(), rtol=1e-9)
    assert np.array_equal(decode.tokens.to_numpy(), steady.steps.tokens.to_numpy())


def test_no_engram_is_never_slower_than_hbm_and_the_host_placements_pay_more():
    cfg = serve_cfg(count=10).with_workload(launch="cuda_graphs")
    tput = {kind: throughput(predict(cfg.with_placement(kind))) for kind in ("none", "hbm", "host_dma", "host_uva")}
    assert tput["none"] >= tput["hbm"]
    assert tput["hbm"] >= min(tput["host_dma"], tput["host_uva"])


@pytest.mark.parametrize("kind", ["host_dma", "host_uva"])
def test_a_faster_link_never_slows_a_serving_run(kind):
    cfg = serve_cfg(count=10, placement=kind)
    profile = load_profile(cfg.profile)
    fast = dataclasses.replace(profile, link=dataclasses.replace(profile.link, h2d_gbps=profile.link.h2d_gbps * 4,
                                                                  copy_fixed_us=profile.link.copy_fixed_us / 4))
    slow = dataclasses.replace(profile, link=dataclasses.replace(profile.link, h2d_gbps=profile.link.h2d_gbps / 4))
    runs = [throughput(simulate_serving(cfg, p)) for p in (slow, profile, fast)]
    assert runs[0] <= runs[1] <= runs[2]


def test_a_serving_run_is_deterministic_and_its_record_carries_the_serving_tables(tmp_path):
    from vocab.records import read_record, write_record
    from vocab.serving import serving_tables

    cfg = serve_cfg(count=8, placement="host_dma")
    a, b = simulate_serving(cfg), simulate_serving(cfg)
    assert a.serving == b.serving
    assert a.serving["output_tokens"] == a.requests.output_tokens.sum()
    # Every step's fetch covers its tokens' lookups, once per Engram layer.
    assert a.fetches.lookups.sum() == a.steps.tokens.sum() * cfg.engram.tables_per_layer * len(cfg.engram.layer_ids)
    path = write_record(a.to_record(), tmp_path / "serve.json")
    requests, batches, summary = serving_tables(read_record(path).extra)
    assert len(requests) == 8 and len(batches) == a.serving["steps"] and summary == pytest.approx(a.serving,
                                                                                                  nan_ok=True)


def test_the_serving_engines_step_work_slows_serving_runs_only():
    cfg = serve_cfg(count=6)
    profile = load_profile(cfg.profile)
    slow = dataclasses.replace(profile, host=dataclasses.replace(profile.host, serve_step_fixed_us=500.0,
                                                                 serve_step_per_seq_us=10.0))
    assert throughput(simulate_serving(cfg, slow)) < throughput(simulate_serving(cfg, profile))
    steady = load_config("tiny")
    assert simulate(steady, slow).summary == simulate(steady, profile).summary


def test_a_bad_serve_step_figure_names_its_field(tmp_path):
    from profiles import shipped_path
    from vocab.errors import ProfileError

    text = shipped_path("h100-sxm").read_text().replace("[host]\n", "[host]\nserve_step_fixed_us = -1\n", 1)
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    with pytest.raises(ProfileError) as e:
        load_profile(str(bad))
    assert e.value.field.endswith("host.serve_step_fixed_us")


def test_prefill_steps_formed_ahead_have_their_rows_fetched_while_the_step_before_runs():
    cfg = serve_cfg(count=12, prompt=(30, 40), output=(3, 6), placement="host_dma", max_batched_tokens=80)
    ahead = simulate_serving(cfg)
    now = simulate_serving(cfg.with_workload(prefill_prefetch_ahead=0))
    prefill = ahead.batches.prefill_tokens.to_numpy() > 0
    assert prefill[:3].all()
    starts = ahead.fetches.groupby("step").fetch_start_s.min().to_numpy()
    assert (starts[1:3] < ahead.steps.start_s.to_numpy()[1:3]).all()   # fetched before its step began
    starts_now = now.fetches.groupby("step").fetch_start_s.min().to_numpy()
    assert (starts_now >= now.steps.start_s.to_numpy() - 1e-12).all()  # without: only once formed
    assert ahead.serving["output_tokens"] == now.serving["output_tokens"]
