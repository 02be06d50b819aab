"""Each placement class: which rows cross the link, its fetch alone (DES and closed form), its memory; `none`."""

import math
from itertools import pairwise

import numpy as np
import pytest
import simpy
from hypothesis import HealthCheck, given, settings, strategies as st

from profiles import load_profile
from sim.analytic import estimate
from sim.compute import StepShape, layer_times
from sim.engine import simulate
from sim.memory import memory_budget
from sim.placements import (
    PLACEMENT_CLASSES,
    HBMCache,
    HostDMA,
    HostUVA,
    MemoryNeeds,
    NoEngram,
    placement_for,
)
from sim.plan import StepPlan, plan_steps
from sim.resources import HOST_DRAM, PCIE_H2D, SSD_DRIVE, SharedResources
from tests.conftest import edited, synthetic_trace
from vocab import placements as names
from vocab.config import load_config
from vocab.memory import cache_bytes
from vocab.records import ACTORS, GPU_COMPUTE, HOST, read_record, write_record

H100 = load_profile("h100-sxm")
quick = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def cfg_for(kind, phase="decode", table_gib=64.0, sequences=64, preset="engram-27b", **more):
    changes = {"placement.kind": kind, "workload.phase": phase, "engram.table_gib": table_gib,
               "workload.sequences": sequences, **more}
    if kind == "hbm_cache":
        changes.setdefault("placement.cache_gib", 4.0)
    return edited(load_config(preset), changes)


def plan_for(host_rows, unique=None, lookups=None, reused=0):
    """A one-layer StepPlan with the given rows (what a fetch reads)."""
    unique = host_rows if unique is None else unique
    lookups = unique if lookups is None else lookups
    one = lambda v: np.array([int(v)], dtype=np.int64)
    return StepPlan(tokens=1, segments=np.zeros(2), compute_time=0.0, hash_time=0.0, host_time=0.0,
                    lookups=one(lookups), unique_rows=one(unique), distinct_rows=one(unique),
                    host_rows=one(host_rows), reused_rows=one(reused),
                    cache_hits=one(unique - host_rows))


def des_alone(placement, plan, k=0, profile=H100):
    """(seconds, pipe bytes) of one layer's DES fetch with nothing else running."""
    env = simpy.Environment()
    res = SharedResources(env, profile, placement.cfg.placement, record_events=True)
    env.process(placement.fetch_layer(res, 0, k, plan))
    env.run()
    assert {e[0] for e in res.events} <= set(ACTORS)
    return env.now, res.pipe_bytes()


HOST_KINDS = ["host_dma", "host_uva", "hbm_cache"]
ALL_CACHES = [("hbm_cache", "host_dma"), ("hbm_cache", "host_uva")]


def test_one_class_per_placement_name():
    assert set(PLACEMENT_CLASSES) == set(names.PLACEMENTS)
    for kind, cls in PLACEMENT_CLASSES.items():
        p = placement_for(cfg_for(kind))
        assert type(p) is cls and p.kind == kind
    assert isinstance(placement_for(cfg_for("hbm_cache", **{"placement.miss_path": "host_dma"})).miss, HostDMA)
    assert isinstance(placement_for(cfg_for("hbm_cache", **{"placement.miss_path": "host_uva"})).miss, HostUVA)


def test_layers_are_in_layer_order_and_none_has_none():
    cfg = cfg_for("host_uva").with_engram(layer_ids=[14, 1])
    p = placement_for(cfg)
    assert p.layer_ids == [1, 14] and list(p.layer_order) == [1, 0]
    assert p.footprints == [cfg.engram.layer_table_bytes(1), cfg.engram.layer_table_bytes(14)]
    none = placement_for(cfg.with_placement("none"))
    assert none.layer_ids == [] and len(none.layer_order) == 0 and not none.holds_table


def test_which_rows_cross_the_link():
    unique, trace_hits = np.array([10, 20]), np.array([3, 30])
    for kind, hits, host in (("hbm", [0, 0], [0, 0]), ("host_dma", [0, 0], [10, 20]),
                             ("host_uva", [0, 0], [10, 20]), ("hbm_cache", [3, 20], [7, 0])):
        p = placement_for(cfg_for(kind))
        got = p.cache_hits(trace_hits, unique)
        assert list(got) == hits and list(p.host_rows(unique, got)) == host
    none = placement_for(cfg_for("none"))
    assert len(none.host_rows(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))) == 0


def test_only_the_cache_replays_a_cache_in_the_trace():
    cfg = cfg_for("hbm_cache")
    assert placement_for(cfg).trace_cache_rows() > 0
    for kind in ("none", "hbm", "host_dma", "host_uva"):
        assert placement_for(cfg_for(kind)).trace_cache_rows() is None


@pytest.mark.parametrize("kind,miss", [("host_dma", None), ("host_uva", None), *ALL_CACHES])
def test_alone_time_grows_with_the_rows(kind, miss):
    more = {"placement.miss_path": miss} if miss else {}
    p = placement_for(cfg_for(kind, **more))
    # (0 rows is not on the curve: then only the step's row ids are uploaded.)
    times = [p.fetch_alone(H100, plan_for(rows, unique=200_000), 0) for rows in (1, 100, 10_000, 100_000, 200_000)]
    assert all(b >= a for a, b in pairwise(times)) and times[-1] > times[0]


def test_hbm_moves_only_row_ids_whatever_the_rows():
    p = placement_for(cfg_for("hbm"))
    for lookups in (10, 10_000):
        t, moved = des_alone(p, plan_for(0, lookups=lookups))
        assert t == pytest.approx(p.fetch_alone(H100, plan_for(0, lookups=lookups), 0), rel=1e-12)
        assert moved == {PCIE_H2D: lookups * 8, HOST_DRAM: 0.0, SSD_DRIVE: 0.0}


@pytest.mark.parametrize("kind,miss", [("host_dma", None), ("host_uva", None), *ALL_CACHES])
@pytest.mark.parametrize("rows", [0, 5_000, 20_000])
def test_the_des_fetch_alone_is_the_closed_form(kind, miss, rows):
    # One staging chunk (4 MiB holds 26214 rows of 160 B): the closed form is exact.
    more = {"placement.miss_path": miss} if miss else {}
    p = placement_for(cfg_for(kind, **more))
    plan = plan_for(rows, unique=25_000, reused=2_000)
    t, moved = des_alone(p, plan)
    assert t == pytest.approx(p.fetch_alone(H100, plan, 0), rel=1e-9)
    payload = rows * p.cfg.engram.row_bytes
    path = p.path if isinstance(p, HBMCache) else p
    dram = 3 * payload if isinstance(path, HostDMA) else payload  # a CPU gather reads and writes DRAM
    # The zero-copy kernel reads its row ids from GPU memory: they go up first.
    ids = 25_000 * 8 if rows == 0 or isinstance(path, HostUVA) else 0
    assert moved[PCIE_H2D] == pytest.approx(payload + ids, rel=1e-9)
    assert moved[HOST_DRAM] == pytest.approx(dram, rel=1e-9)


def test_memory_needs_per_placement():
    table = cfg_for("hbm").engram.total_table_bytes
    rows = 1000

    def landed(c):
        return (1 + c.workload.decode_lookahead) * rows * c.engram.row_bytes * len(c.engram.layer_ids)

    assert placement_for(cfg_for("none")).memory_needs(rows) == MemoryNeeds(0, 0, 0)
    assert placement_for(cfg_for("hbm")).memory_needs(rows) == MemoryNeeds(table, 0, 0)
    for kind in ("host_dma", "host_uva"):
        c = cfg_for(kind)
        assert placement_for(c).memory_needs(rows) == MemoryNeeds(0, landed(c), table)
    c = cfg_for("hbm_cache")
    assert placement_for(c).memory_needs(rows) == MemoryNeeds(cache_bytes(c), landed(c), table)
    assert cache_bytes(c) == 4 * (1 << 30)


def test_prefetching_ahead_lands_more_rows():
    c = cfg_for("host_dma", "prefill")
    ahead = c.workload.prefill_prefetch_ahead
    needs = placement_for(c).memory_needs(1000)
    assert needs.staging_hbm_bytes == (1 + ahead) * 1000 * c.engram.row_bytes * len(c.engram.layer_ids)


def test_none_budgets_the_backbone_alone():
    none, hbm = (memory_budget(cfg_for(k), H100, 1000, 64, 1000) for k in ("none", "hbm"))
    assert none.table_hbm_bytes == none.staging_hbm_bytes == none.table_host_bytes == 0
    assert none.weights_bytes < hbm.weights_bytes  # no Engram module projections
    assert none.kv_cache_bytes == hbm.kv_cache_bytes


def test_none_runs_no_engram_module():
    cfg = cfg_for("hbm")
    shape = StepShape(tokens=64, attn_context_sum=64 * 500.0, sequences=64, lookups=64 * cfg.engram.tables_per_layer)
    with_engram = layer_times(cfg, H100, shape)
    without = layer_times(cfg, H100, shape, placement_for(cfg.with_placement("none")))
    engram = sorted(cfg.engram.layer_ids)
    assert (without[engram] < with_engram[engram]).all()
    others = [i for i in range(cfg.backbone.layers) if i not in engram]
    assert (without[others] == with_engram[others]).all()


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["decode", "prefill"]), st.sampled_from([8, 64, 512]),
       st.sampled_from(["engram-27b", "dense-4b-100b", "tiny"]), st.sampled_from([1.0, 64.0]))
def test_none_is_never_slower_than_hbm(phase, sequences, preset, table_gib):
    cfg = cfg_for("hbm", phase, table_gib, sequences, preset=preset, **{"workload.tokens_per_step": 2048})
    trace = synthetic_trace(cfg)
    hbm = simulate(cfg, H100, trace, steps=6, check_capacity=False)
    none = simulate(cfg.with_placement("none"), H100, trace, steps=6, check_capacity=False)
    assert (none.steps["step_time_s"].values <= hbm.steps["step_time_s"].values).all()
    assert none.summary["tokens_per_s"] >= hbm.summary["tokens_per_s"]


def test_none_writes_a_valid_record(tmp_path):
    path = tmp_path / "none.toml"
    path.write_text('extends = "tiny"\n[placement]\nkind = "none"\n')
    cfg = load_config(path)
    assert cfg.placement.kind == "none"
    r = simulate(cfg, record_events=True)
    s = r.steps
    assert len(s) == cfg.workload.steps and (s["step_time_s"] > 0).all()
    assert (s["fetch_time_s"] == 0).all() and s["overlap_fraction"].isna().all()
    assert (s["exposed_stall_s"] == 0).all() and (s["host_bytes"] == 0).all() and (s["hbm_bytes"] == 0).all()
    # The step is its compute and the engine's own step work on the host.
    host = load_profile(cfg.profile).host.engine_step_fixed_us * 1e-6
    assert np.allclose(s["step_time_s"], s["compute_time_s"] + host, rtol=1e-12)
    assert len(r.fetches) == 0 and set(r.events["actor"]) == {GPU_COMPUTE, HOST}
    assert set(r.pipe_bytes.values()) == {0.0}
    assert math.isnan(r.summary["overlap_fraction"]) and r.summary["fetch_time_s"] == 0
    back = read_record(write_record(r.to_record(), tmp_path / "none.json"))
    assert back.kind == "simulated" and back.config["placement"]["kind"] == "none"
    assert np.allclose(back.steps["step_time_s"], s["step_time_s"]) and len(back.fetches) == 0
    # And via the Python API on a preset.
    base = load_config("tiny")
    assert simulate(base.with_placement("none")).summary["tokens_per_s"] > 0


def test_the_closed_form_of_none_is_its_compute():
    cfg = cfg_for("none")
    trace = synthetic_trace(cfg)
    plans = plan_steps(cfg, H100, trace)
    assert all(p.hash_time == 0 and len(p.lookups) == 0 for p in plans)
    est = estimate(cfg, H100, plans)
    assert est["step_time_s"] == pytest.approx(plans[0].compute_time + plans[0].host_time, rel=1e-12)
    assert est["exposed_stall_s"] == 0 and est["fetch_time_s"] == 0 and math.isnan(est["overlap_fraction"])
    des = simulate(cfg, H100, trace, steps=4, check_capacity=False).summary
    assert des["step_time_s"] == pytest.approx(est["step_time_s"], rel=1e-12)


def test_none_hashes_and_fetches_nothing_even_with_lookahead():
    cfg = cfg_for("none", **{"workload.decode_lookahead": 2})
    assert isinstance(placement_for(cfg), NoEngram)
    r = simulate(cfg, H100, synthetic_trace(cfg), steps=5, check_capacity=False, record_events=True)
    assert (r.steps["fetch_time_s"] == 0).all() and set(r.events["actor"]) == {GPU_COMPUTE, HOST}


def test_a_step_streaming_less_than_l2_between_gathers_never_pays_cold_page_table_lines():
    """uva.cold_line_ns applies only where the layers stream more than gpu.l2_mib between two gathers."""
    import dataclasses

    from sim import costs

    p = load_profile("h100-sxm")
    assert p.gpu.l2_mib == 50 and p.uva.cold_line_ns > 0
    big = load_config("h100-e2e-dense4b").with_placement(kind="host_uva").with_table_gib(64).with_steps(4)
    small = load_config("tiny").with_placement(kind="host_uva").with_table_gib(64).with_steps(4)
    assert costs.streamed_between_gathers(small) < 50 * 2**20 < costs.streamed_between_gathers(big)

    def step_s(cfg, profile):
        return float(np.mean(simulate(cfg, profile, check_capacity=False).steps["step_time_s"]))

    # No cold lines at all (cold_line_ns 0) against the profile's: the tiny step (about 2 MiB between its
    # gathers) keeps its time, the Dense-4B step (about 7 GiB) pays them.
    no_cold = dataclasses.replace(p, uva=dataclasses.replace(p.uva, cold_line_ns=0.0))
    assert step_s(small, p) == step_s(small, no_cold)
    assert step_s(big, p) > step_s(big, no_cold)
    # An L2 larger than what the step streams keeps the upper levels warm; an unknown L2 (0) never does.
    huge_l2 = dataclasses.replace(p, gpu=dataclasses.replace(p.gpu, l2_mib=1e6))
    unknown_l2 = dataclasses.replace(p, gpu=dataclasses.replace(p.gpu, l2_mib=0.0))
    assert step_s(big, huge_l2) == step_s(big, no_cold)
    assert step_s(small, unknown_l2) > step_s(small, p)
