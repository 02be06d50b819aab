"""The NVMe tier in the simulator: the two-level cache replay, the drive actor, capacity on the drive."""

import dataclasses

import numpy as np
import pytest

from profiles import load_profile
from sim import costs
from sim.engine import simulate, trace_for
from sim.placements import SSD, placement_for
from tools.sweep import sweep
from vocab.config import load_config
from vocab.errors import CapacityError, ProfileError
from vocab.geometry import expected_distinct_blocks, ssd_file_bytes, ssd_row_offset
from workloads.cache import replay_tiers, zipf_trace

H100 = load_profile("h100-sxm")


def _flat(steps):
    return np.concatenate(steps), np.array([len(s) for s in steps])


@pytest.fixture(scope="module")
def zipf_steps():
    return _flat(zipf_trace(400_000, 200_000, 4096, s=1.05, seed=3))


def test_rows_are_conserved_across_tiers(zipf_steps):
    ids, counts = zipf_steps
    t = replay_tiers(ids, counts, 200_000, 5_000, "lru", 20_000, "lru")
    assert 0 < t.hbm_hit_rate < 1 and 0 < t.dram_hit_rate < 1
    assert t.hbm_hit_rate + t.dram_hit_rate + t.drive_rate == pytest.approx(1.0)
    assert t.replay_accesses == counts.sum() and t.filled


@pytest.mark.parametrize("policy", ["lru", "static_topk"])
def test_a_larger_dram_cache_never_reads_the_drive_more(zipf_steps, policy):
    ids, counts = zipf_steps
    drive = [replay_tiers(ids, counts, 200_000, 2_000, "lru", dram, policy).drive_rate
             for dram in (0, 1_000, 5_000, 20_000, 60_000)]
    assert all(a >= b for a, b in zip(drive, drive[1:])), drive
    assert drive[0] > drive[-1]


def test_a_cache_holding_the_whole_table_has_no_steady_state_misses(zipf_steps):
    ids, counts = zipf_steps
    whole = replay_tiers(ids, counts, 200_000, 0, "lru", 200_000, "lru")
    assert whole.drive_rate == 0 and whole.dram_hit_rate == 1.0
    # ... while its warm-up, from cold, did miss: it is reported apart.
    assert whole.warmup_dram_hit_rate < 1.0 and whole.warmup_steps > 0
    in_hbm = replay_tiers(ids, counts, 200_000, 10**9, "lfu")
    assert in_hbm.hbm_hit_rate == 1.0 and in_hbm.drive_rate == 0


def test_a_cache_too_large_to_fill_is_flagged_and_measured_over_the_second_half(zipf_steps):
    ids, counts = zipf_steps
    t = replay_tiers(ids, counts, 10**8, 0, "lru", 10**7, "lru")
    assert not t.filled and t.warmup_steps == counts.size // 2


def test_warm_up_then_steady_state_on_a_real_trace():
    cfg = load_config("tiny").with_placement("ssd", dram_cache_gib=0.002).with_steps(8)
    trace = trace_for(cfg)
    assert trace.tiers is not None and len(trace.tiers) == len(cfg.engram.layer_ids)
    for col, tier in enumerate(trace.tiers):
        assert tier.warmup_dram_hit_rate <= tier.dram_hit_rate
        assert np.array_equal(trace.dram_hits[:, col],
                              np.rint(trace.distinct_rows[:, col] * tier.dram_hit_rate).astype(np.int64))


def test_the_file_layout_packs_rows_whole_into_blocks():
    # 25 rows of 160 B per 4 KiB block; a row never straddles two blocks.
    offsets = ssd_row_offset(np.arange(1000), 160, 4096)
    assert np.all(offsets // 4096 == (offsets + 159) // 4096)
    assert ssd_file_bytes(1000, 160, 4096) == 40 * 4096
    assert ssd_file_bytes(3, 6000, 4096) == 3 * 2 * 4096  # a row larger than a block takes whole blocks
    # Rows that share a block share its read.
    assert expected_distinct_blocks(1, 100) == pytest.approx(1.0)
    assert expected_distinct_blocks(1000, 10) == pytest.approx(10.0)
    assert expected_distinct_blocks(100, 10**9) == pytest.approx(100.0, rel=1e-6)


def test_drive_reads_follow_littles_law_and_the_byte_ceiling():
    one = costs.ssd_read_time(H100, 1, 16, 1)
    # one read: the call's cost (one thread handed a share), then the depth-1 latency
    assert one == pytest.approx(costs.ssd_call_time(H100, 1) + 1 / costs.ssd_read_rate(H100, 1, 16))
    many = costs.ssd_read_time(H100, 1_000_000, 16, 8)
    assert many == pytest.approx(1_000_000 / costs.ssd_read_rate(H100, 128, 16), rel=1e-3)
    # Deeper queues read faster, up to the drive's ceiling.
    assert costs.ssd_read_time(H100, 100_000, 16, 32) < costs.ssd_read_time(H100, 100_000, 16, 1)
    slow_cpu = dataclasses.replace(H100, ssd=dataclasses.replace(H100.ssd, read_cpu_us=1000.0))
    assert costs.ssd_read_rate(slow_cpu, 512, 16) == pytest.approx(16 / 1e-3)


def _ssd_cfg(**placement):
    base = load_config("engram-27b").with_table_gib(4).with_steps(6)
    return base.with_placement("ssd", **placement)


def test_the_des_fetch_alone_matches_the_closed_form():
    cfg = _ssd_cfg(dram_cache_gib=1.0).with_workload(decode_lookahead=0)
    r = simulate(cfg, check_capacity=False)
    placement = placement_for(cfg)
    assert isinstance(placement, SSD)
    f = r.fetches
    assert (f["ssd_reads"] > 0).all() and (f["dram_hits"] > 0).all()
    # Rows are conserved: every row past the HBM (here: no) cache is a DRAM hit or a drive row.
    assert (f["host_rows"] == f["unique_rows"] - f["cache_hits"]).all()
    assert (f["dram_hits"] <= f["host_rows"]).all()
    # More reads than drive rows is impossible; a few fewer: rows that share a block.
    drive_rows = f["host_rows"] - f["dram_hits"]
    assert (f["ssd_reads"] <= drive_rows).all() and (f["ssd_reads"] >= 0.9 * drive_rows).all()


def test_gds_skips_staging_and_needs_a_drive_that_has_it():
    cfg = _ssd_cfg(ssd_reads="gds")
    with pytest.raises(ProfileError, match="ssd.gds"):
        simulate(cfg, check_capacity=False)
    gds = dataclasses.replace(H100, ssd=dataclasses.replace(H100.ssd, gds=True))
    fast = simulate(cfg, gds, check_capacity=False).summary["fetch_time_s"]
    staged = simulate(cfg.with_placement(ssd_reads="staging"), gds, check_capacity=False).summary["fetch_time_s"]
    assert fast < staged


def test_a_profile_without_a_drive_is_refused_in_one_line():
    bare = dataclasses.replace(H100, ssd=None)
    with pytest.raises(ProfileError, match=r"no \[ssd\] section.*calibrate --cpu-only --ssd-path"):
        simulate(_ssd_cfg(), bare, check_capacity=False)


def test_a_table_larger_than_the_drive_does_not_fit_and_is_never_hidden():
    small_drive = dataclasses.replace(H100, ssd=dataclasses.replace(H100.ssd, capacity_gib=2.0))
    with pytest.raises(CapacityError, match="drive space"):
        simulate(_ssd_cfg(), small_drive)
    df = sweep(load_config("tiny").with_steps(4), [0.001, 4.0], ["hbm", "ssd"], profile=small_drive,
               jobs=1, progress=False, threshold=10.0)
    big = df[(df.placement == "ssd") & (df.table_gib_asked == 4.0)].iloc[0]
    assert not big.fits_ssd and not big.fits and not big.hidden
    assert big.capacity.startswith("does not fit: drive, needs 4.0 GiB")
    small = df[(df.placement == "ssd") & (df.table_gib_asked == 0.001)].iloc[0]
    assert small.fits and small.hidden


def test_a_dram_cache_larger_than_host_memory_does_not_fit():
    cfg = _ssd_cfg(dram_cache_gib=500.0)
    with pytest.raises(CapacityError, match="host memory"):
        simulate(cfg)


@pytest.mark.parametrize("miss_path", ["host_dma", "host_uva"])
def test_dram_hits_and_drive_rows_go_to_hbm_in_one_copy(miss_path):
    # The store puts the CPU-gathered DRAM-cache hits beside the rows picked out of the drive's blocks and copies
    # them in one call (real_runs/ssd_store.py); zero-copy hits are read by the GPU apart, so only the drive rows
    # are copied.
    cfg = _ssd_cfg(dram_cache_gib=1.0, miss_path=miss_path)
    r = simulate(cfg, record_events=True, check_capacity=False)
    f = r.fetches
    assert (f["dram_hits"] > 0).all() and (f["host_rows"] > f["dram_hits"]).all()
    copies = r.events[(r.events["actor"] == "h2d link") & r.events["name"].str.startswith("copy")]
    assert (copies.groupby(["step", "layer"]).size() == 1).all()
    assert len(copies) == len(f)
    if miss_path == "host_dma":  # every row past the HBM crosses the link once, in those copies
        assert r.pipe_bytes["pcie_h2d"] == pytest.approx(f["host_rows"].sum() * cfg.engram.row_bytes)

