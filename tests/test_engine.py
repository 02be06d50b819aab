"""The discrete-event model: invariants, monotonicity, determinism, and the closed form."""

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from profiles import load_profile
from sim import costs
from sim.analytic import estimate
from sim.engine import simulate
from sim.placements import placement_for
from sim.plan import plan_steps
from tests.conftest import edited, synthetic_trace
from vocab.config import load_config
from vocab.errors import CapacityError

H100 = load_profile("h100-sxm")


def cfg_for(placement="host_uva", phase="decode", table_gib=64.0, sequences=64, preset="engram-27b", **more):
    changes = {"placement.kind": placement, "workload.phase": phase, "engram.table_gib": table_gib,
               "workload.sequences": sequences, **more}
    if placement == "hbm_cache":
        changes.setdefault("placement.cache_gib", 4.0)
    return edited(load_config(preset), changes)


def run(cfg, profile=H100, steps=6, **trace_kw):
    return simulate(cfg, profile, synthetic_trace(cfg, **trace_kw), steps=steps, record_events=True,
                    check_capacity=False)


def with_profile(profile, **sections):
    """A copy of `profile` with fields replaced per section: with_profile(p, link={"h2d_gbps": 10})."""
    changes = {name: dataclasses.replace(getattr(profile, name), **fields) for name, fields in sections.items()}
    return dataclasses.replace(profile, **changes)


placements = st.sampled_from(["hbm", "host_dma", "host_uva", "hbm_cache"])
phases = st.sampled_from(["decode", "prefill"])
sizes = st.sampled_from([1.0, 16.0, 256.0])
seqs = st.sampled_from([8, 64, 512])
quick = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@quick
@given(placements, phases, sizes, seqs)
def test_bytes_are_conserved(placement, phase, table, sequences):
    cfg = cfg_for(placement, phase, table, sequences, **{"workload.tokens_per_step": 4096})
    r = run(cfg)
    rb = cfg.engram.row_bytes
    host_rows = r.fetches["host_rows"].sum()
    assert r.steps["host_bytes"].sum() == host_rows * rb
    # Row ids go up for the GPU to gather by: always for a table in HBM and for a zero-copy gather (the cache's
    # misses go that way here); for a CPU gather only when no row crosses the link.
    reads_ids = placement in ("hbm", "host_uva") or (placement == "hbm_cache" and cfg.placement.misses_via == "host_uva")
    ids = (r.fetches["lookups"] * 8 * (reads_ids | (r.fetches["host_rows"] == 0))).sum()
    assert r.pipe_bytes["pcie_h2d"] == pytest.approx(host_rows * rb + ids, rel=1e-9)
    if placement == "hbm":
        assert host_rows == 0 and r.steps["host_bytes"].sum() == 0


@quick
@given(placements, phases, sizes, seqs)
def test_time_never_decreases_and_overlap_is_a_fraction(placement, phase, table, sequences):
    r = run(cfg_for(placement, phase, table, sequences, **{"workload.tokens_per_step": 4096}))
    s = r.steps
    assert (np.diff(s["start_s"]) >= 0).all()
    assert (s["step_time_s"] > 0).all()
    assert np.allclose(s["start_s"].iloc[1:].values, (s["start_s"] + s["step_time_s"]).iloc[:-1].values)
    assert (r.events["end_s"] >= r.events["start_s"]).all()
    f = r.fetches
    assert (f["fetch_end_s"] >= f["fetch_start_s"]).all() and (f["exposed_stall_s"] >= 0).all()
    assert ((s["overlap_fraction"] >= 0) & (s["overlap_fraction"] <= 1)).all()
    assert 0 <= r.summary["overlap_fraction"] <= 1
    # A step is its compute, its exposed stalls, the host's critical path (the same every step here: the
    # engine's step work) and, while a zero-copy gather holds SMs, the compute it slowed.
    extra = s["step_time_s"] - s["compute_time_s"] - s["exposed_stall_s"]
    host = H100.host.engine_step_fixed_us * 1e-6
    assert (extra >= host - 1e-12).all()
    if placement in ("hbm", "host_dma"):
        assert np.allclose(extra, host, rtol=1e-6)


@quick
@given(st.sampled_from(["host_dma", "host_uva", "hbm_cache"]), phases, sizes, seqs,
       st.sampled_from([1.5, 2.0, 8.0]))
def test_a_faster_link_never_makes_a_step_slower(placement, phase, table, sequences, factor):
    cfg = cfg_for(placement, phase, table, sequences, **{"workload.tokens_per_step": 4096})
    slow = with_profile(H100, link={"h2d_gbps": 8.0}, uva={**{"max_gbps": 8.0}})
    fast = with_profile(slow, link={"h2d_gbps": 8.0 * factor}, uva={"max_gbps": 8.0 * factor})
    a, b = run(cfg, slow), run(cfg, fast)
    assert (b.steps["step_time_s"].values <= a.steps["step_time_s"].values * (1 + 1e-12)).all()


@quick
@given(st.sampled_from(["host_dma", "host_uva"]), seqs, st.sampled_from([1, 4]))
def test_more_compute_before_the_engram_layer_never_adds_stall(placement, sequences, deeper):
    base = cfg_for(placement, "decode", 256.0, sequences)
    deep = base.with_engram(layer_ids=[1 + deeper, 14])
    a, b = run(base), run(deep)
    assert b.steps["exposed_stall_s"].sum() <= a.steps["exposed_stall_s"].sum() + 1e-12
    assert (b.steps["step_time_s"].values <= a.steps["step_time_s"].values * (1 + 1e-12)).all()


def test_hbm_moves_no_table_bytes_over_the_link():
    r = run(cfg_for("hbm", "decode", 64.0, 512))
    assert r.steps["host_bytes"].sum() == 0 and r.fetches["host_rows"].sum() == 0
    assert r.pipe_bytes["host_dram"] == 0


def test_a_cache_that_always_hits_moves_no_host_bytes():
    cfg = cfg_for("hbm_cache", "decode", 64.0, 512)
    r = run(cfg, unique_fraction=0.9, hit_fraction=1.0)
    assert r.steps["host_bytes"].sum() == 0 and r.pipe_bytes["host_dram"] == 0
    hbm = run(cfg_for("hbm", "decode", 64.0, 512))
    assert r.summary["tokens_per_s"] == pytest.approx(hbm.summary["tokens_per_s"], rel=1e-12)


def test_same_config_same_result():
    cfg = cfg_for("host_dma", "prefill", 64.0, 64, **{"workload.tokens_per_step": 8192})
    a, b = run(cfg), run(cfg)
    assert a.steps.equals(b.steps) and a.fetches.equals(b.fetches) and a.events.equals(b.events)


@pytest.mark.parametrize("placement", ["none", "hbm", "host_dma", "host_uva", "hbm_cache"])
@pytest.mark.parametrize("sequences", [16, 512])
@pytest.mark.parametrize("preset", ["engram-27b", "dense-4b-100b"])
def test_des_matches_the_closed_form_without_contention(placement, sequences, preset):
    cfg = cfg_for(placement, "decode", 512.0, sequences, preset=preset)
    trace = synthetic_trace(cfg)
    des = simulate(cfg, H100, trace, steps=8, check_capacity=False).summary
    est = estimate(cfg, H100, plan_steps(cfg, H100, trace))
    assert des["step_time_s"] == pytest.approx(est["step_time_s"], rel=0.01)
    assert des["exposed_stall_s"] == pytest.approx(est["exposed_stall_s"], rel=0.01, abs=1e-9)


def test_closed_form_is_exact_where_a_fetch_is_exposed():
    # A slow link exposes the fetch: the closed form still matches when nothing is shared.
    cfg = cfg_for("host_uva", "decode", 512.0, 512, preset="dense-4b-100b")
    # Without SM sharing the GPU computes on and then waits: the wait is the exposed stall.
    slow = with_profile(H100, uva={"max_gbps": 0.3}, gpu={"uva_interference": 0.0})
    trace = synthetic_trace(cfg)
    des = simulate(cfg, slow, trace, steps=4, check_capacity=False).summary
    est = estimate(cfg, slow, plan_steps(cfg, slow, trace))
    assert des["exposed_stall_s"] > 0.1 * des["step_time_s"]
    assert des["step_time_s"] == pytest.approx(est["step_time_s"], rel=0.01)


@pytest.mark.parametrize("interference", [0.3, 1.0])
@pytest.mark.parametrize("ctas", [None, 16, 132, 1024])
def test_closed_form_follows_the_des_when_a_gather_holds_sms(interference, ctas):
    cfg = cfg_for("host_uva", "decode", 64.0, 512, preset="h100-e2e-dense4b", **{"placement.uva_ctas": ctas})
    prof = with_profile(H100, gpu={"uva_interference": interference})
    trace = synthetic_trace(cfg)
    des = simulate(cfg, prof, trace, steps=4, check_capacity=False).summary
    est = estimate(cfg, prof, plan_steps(cfg, prof, trace))
    assert des["step_time_s"] == pytest.approx(est["step_time_s"], rel=1e-6)
    assert des["exposed_stall_s"] == pytest.approx(est["exposed_stall_s"], rel=1e-6, abs=1e-12)


def _step_s(cfg, profile=H100, trace=None):
    return simulate(cfg, profile, trace or synthetic_trace(cfg), steps=4, check_capacity=False).summary["step_time_s"]


@pytest.mark.parametrize("table_gib", [4.0, 64.0])
def test_a_bigger_gather_grid_never_makes_compute_faster(table_gib):
    # More blocks gather faster but take more SMs from the layers: compute alone only ever slows.
    base = cfg_for("host_uva", "decode", table_gib, 512, preset="h100-e2e-dense4b")
    prof = with_profile(H100, gpu={"uva_interference": 0.5})
    shares = [costs.uva_sm_share(prof, 8192, c) for c in (8, 33, 132, 264, 1000, None)]
    assert shares == sorted(shares[:-1]) + [shares[-1]] and shares[0] < shares[3]
    slowdowns = []
    for ctas in (8, 33, 132, 264):
        cfg = edited(base, {"placement.uva_ctas": ctas})
        r = simulate(cfg, prof, synthetic_trace(cfg), steps=4, check_capacity=False).steps
        slowdowns.append(float((r["step_time_s"] - r["compute_time_s"] - r["exposed_stall_s"]).mean()))
    assert slowdowns == sorted(slowdowns)
    # ... and a smaller grid gathers slower.
    plan = plan_steps(base, prof, synthetic_trace(base))[0]
    times = [placement_for(edited(base, {"placement.uva_ctas": c})).fetch_alone(prof, plan, 0) for c in (8, 33, 132)]
    assert times == sorted(times, reverse=True) and times[0] > times[-1]


@pytest.mark.parametrize("placement", ["hbm", "host_dma", "host_uva"])
def test_moving_hashing_off_the_critical_path_never_makes_a_step_slower(placement):
    cfg = cfg_for(placement, "decode", 16.0, 512, preset="h100-e2e-dense4b")
    critical = _step_s(edited(cfg, {"placement.hash_on": "critical_path"}))
    worker = _step_s(edited(cfg, {"placement.hash_on": "worker"}))
    assert worker <= critical * (1 + 1e-12)


@pytest.mark.parametrize("preset", ["h100-e2e-dense4b", "engram-27b", "dense-4b-100b"])
@pytest.mark.parametrize("phase", ["decode", "prefill"])
def test_none_is_never_slower_than_hbm(preset, phase):
    cfg = cfg_for("hbm", phase, 4.0, 64, preset=preset, **{"workload.tokens_per_step": 4096})
    trace = synthetic_trace(cfg)
    assert _step_s(cfg.with_placement("none"), trace=trace) <= _step_s(cfg, trace=trace)


def test_compute_rates_follow_the_profile_curves():
    from sim.compute import matmul_fraction, memory_fraction

    assert matmul_fraction(H100, 512) == pytest.approx(0.74) and matmul_fraction(H100, 8192) == pytest.approx(1.0)
    assert matmul_fraction(H100, 512) < matmul_fraction(H100, 2048) < matmul_fraction(H100, 8192)
    assert memory_fraction(H100, 1 << 20) < memory_fraction(H100, 1 << 28)
    flat = with_profile(H100, gpu={"matmul_curve": [], "memory_curve": []})
    assert matmul_fraction(flat, 17) == flat.gpu.matmul_efficiency
    # A bigger batch runs its GEMMs at a higher rate: step time grows less than the batch.
    small, big = (_step_s(cfg_for("none", "decode", 4.0, b, preset="h100-e2e-dense4b")) for b in (128, 512))
    assert big < 4 * small


def test_contention_makes_the_des_slower_than_the_closed_form():
    # Two Engram layers fetched at once share the link; the closed form times each alone. (No SM sharing: the
    # compute waits at the Engram layers, so the waits are the stalls.)
    cfg = cfg_for("host_uva", "decode", 512.0, 512, preset="engram-27b",
                  **{"placement.fetch_streams": 2, "engram.layer_ids": [1, 2]})
    slow = with_profile(H100, uva={"max_gbps": 3.0}, link={"h2d_gbps": 3.0}, gpu={"uva_interference": 0.0})
    trace = synthetic_trace(cfg)
    des = simulate(cfg, slow, trace, steps=4, check_capacity=False).summary
    est = estimate(cfg, slow, plan_steps(cfg, slow, trace))
    assert des["fetch_time_s"] > est["fetch_time_s"] * 1.5
    assert des["exposed_stall_s"] > est["exposed_stall_s"] * 2
    assert des["step_time_s"] > est["step_time_s"]
    # Host DRAM shared by CPU gathers and DMA copies: same direction.
    dma = cfg_for("host_dma", "decode", 512.0, 512, preset="dense-4b-100b", **{"placement.gather_threads": 16})
    thin = with_profile(H100, host={"dram_gbps": 40.0})
    trace = synthetic_trace(dma)
    des = simulate(dma, thin, trace, steps=4, check_capacity=False).summary
    est = estimate(dma, thin, plan_steps(dma, thin, trace))
    assert des["fetch_time_s"] > est["fetch_time_s"] * 1.02


def test_a_table_that_does_not_fit_hbm_is_a_clear_error():
    cfg = cfg_for("hbm", "decode", 512.0, 64)
    with pytest.raises(CapacityError, match=r"placement\.kind: needs .* GiB of HBM .* put the table in host memory"):
        simulate(cfg, H100, synthetic_trace(cfg), steps=2)
    host = cfg_for("host_uva", "decode", 512.0, 64)
    with pytest.raises(CapacityError, match=r"engram\.table_gib: the .* GiB table exceeds"):
        simulate(host, H100, synthetic_trace(host), steps=2)


@pytest.mark.parametrize("placement", ["none", "hbm", "host_dma", "host_uva", "hbm_cache"])
@pytest.mark.parametrize("phase", ["decode", "prefill"])
@pytest.mark.parametrize("slow", [False, True])
def test_replaying_repeated_steps_changes_nothing(placement, phase, slow):
    cfg = cfg_for(placement, phase, 256.0, 64, **{"workload.tokens_per_step": 4096})
    profile = with_profile(H100, uva={"max_gbps": 0.5}, link={"h2d_gbps": 0.5}) if slow else H100
    trace = synthetic_trace(cfg, steps=3)
    fast = simulate(cfg, profile, trace, steps=12, record_events=True, check_capacity=False)
    full = simulate(cfg, profile, trace, steps=12, record_events=True, check_capacity=False, memoize=False)
    assert full.replayed_steps == 0
    if not slow:
        assert fast.replayed_steps > 0
    for a, b in ((fast.steps, full.steps), (fast.fetches, full.fetches)):
        assert np.allclose(a.to_numpy(float), b.to_numpy(float), rtol=1e-9, atol=1e-12, equal_nan=True)
    ev_a = fast.events.sort_values(["start_s", "actor", "name"]).reset_index(drop=True)
    ev_b = full.events.sort_values(["start_s", "actor", "name"]).reset_index(drop=True)
    assert len(ev_a) == len(ev_b) and (ev_a["actor"] == ev_b["actor"]).all()
    assert np.allclose(ev_a[["start_s", "end_s"]], ev_b[["start_s", "end_s"]], rtol=1e-9, atol=1e-12)
    assert fast.pipe_bytes == pytest.approx(full.pipe_bytes, rel=1e-9)
