"""Profiles: loading, validation, fitting, and the H100 reference figures."""

import numpy as np
import pytest

from profiles import load_profile, shipped_names
from profiles.fit import fit_copy, fit_linear_time, fit_uva
from sim import costs
from vocab.errors import ProfileError

GiB = 1 << 30


def test_every_shipped_profile_loads_and_says_where_it_came_from():
    names = shipped_names()
    assert {"h100-sxm", "h800-sxm", "h200-sxm", "a100-sxm4-80gb", "gh200"} <= set(names)
    for name in names:
        p = load_profile(name)
        assert p.name == name
        assert p.provenance.source in ("measured", "datasheet")
        assert p.provenance.machine and p.provenance.date


def test_h100_uva_model_reproduces_the_reference_step_table_within_10_percent():
    """H100.md per-step table, UVA fresh ids: the simulator's cost within 10 %."""
    p = load_profile("h100-sxm")
    assert len(p.uva.points) == 11
    for pt in p.uva.points:
        # The points ran back to back: nothing between the gathers evicted the page table from L2.
        fixed, body = costs.uva_gather_time(p, pt.rows, pt.row_bytes, pt.table_gib * GiB, work_between=False)
        assert (fixed + body) == pytest.approx(pt.us * 1e-6, rel=0.10), pt


def test_refitting_the_h100_raw_points_gives_the_stored_parameters():
    p = load_profile("h100-sxm")
    pts = p.uva.points
    fit = fit_uva([q.table_gib for q in pts], [q.row_bytes for q in pts], [q.rows for q in pts], [q.us for q in pts])
    assert fit.fixed_us == pytest.approx(p.uva.fixed_us, rel=0.01)
    assert fit.walk_ns == pytest.approx(p.uva.walk_ns, rel=0.01)
    assert fit.translation_unit_kib == p.uva.translation_unit_kib
    assert fit.max_rel_error < 0.10
    copy = fit_copy([q.x for q in p.link.h2d_points], [q.y for q in p.link.h2d_points])
    assert copy.peak_gbps == pytest.approx(p.link.h2d_gbps, rel=0.01)
    assert copy.fixed_us == pytest.approx(p.link.copy_fixed_us, rel=0.02)


def test_uva_gathers_slow_down_with_footprint_and_recover_with_reuse():
    p = load_profile("h100-sxm")
    times = [sum(costs.uva_gather_time(p, 16384, 160, g * GiB)) for g in (1, 16, 64, 1024)]
    assert times == sorted(times) and times[-1] > 2 * times[0]
    warm = costs.uva_warm_fraction(p, 16384, 16384, 16 * GiB)
    assert sum(costs.uva_gather_time(p, 16384, 256, 16 * GiB, warm)) < 0.5 * sum(
        costs.uva_gather_time(p, 16384, 256, 16 * GiB))
    # Reused rows spanning more units than the TLB holds are not warm (262K rows repeat as slowly).
    assert costs.uva_warm_fraction(p, 262144, 262144, 16 * GiB) < 0.2


def test_cold_upper_page_table_levels_never_make_a_gather_faster_and_grow_with_the_footprint():
    p = load_profile("h100-sxm")
    assert p.uva.cold_line_ns > 0
    extra = []
    for gib in (0.25, 1, 4, 16, 64, 1024):
        for rows, rb, warm, ctas in ((8192, 160, 0.0, None), (262144, 256, 0.0, None), (8192, 1024, 0.5, 64)):
            args = (p, rows, rb, gib * GiB, warm, None, ctas)
            cold, back_to_back = sum(costs.uva_gather_time(*args)), sum(costs.uva_gather_time(*args, work_between=False))
            assert cold >= back_to_back
        extra.append(sum(costs.uva_gather_time(p, 8192, 160, gib * GiB))
                     - sum(costs.uva_gather_time(p, 8192, 160, gib * GiB, work_between=False)))
    # Within the TLB's reach nothing walks, so no upper level is read; beyond it the extra grows with the table.
    assert extra[0] == 0.0 and extra[1] == 0.0
    assert extra[2:] == sorted(extra[2:]) and extra[2] > 0
    # The H100 e2e gap it explains (uva 64 GiB - uva 16 GiB: 204 us measured): of the order of 100 us at 8K rows.
    assert 50e-6 < extra[4] - extra[3] < 200e-6
    # Reused rows do not walk, so they read no upper level either.
    assert (sum(costs.uva_gather_time(p, 8192, 160, 64 * GiB, 1.0))
            == sum(costs.uva_gather_time(p, 8192, 160, 64 * GiB, 1.0, work_between=False)))


def test_profiles_without_cold_line_ns_keep_their_gathers():
    """The default (0) leaves a profile's zero-copy gathers as fitted, other work between them or not."""
    for name in shipped_names():
        p = load_profile(name)
        if p.uva.cold_line_ns == 0:
            assert (sum(costs.uva_gather_time(p, 8192, 160, 64 * GiB))
                    == sum(costs.uva_gather_time(p, 8192, 160, 64 * GiB, work_between=False)))


def test_fit_copy_recovers_known_parameters():
    sizes = np.array([4e3, 64e3, 1e6, 16e6, 256e6])
    t = 15e-6 + sizes / 40e9
    fit = fit_copy(sizes, sizes / t / 1e9)
    assert fit.fixed_us == pytest.approx(15.0, rel=1e-3)
    assert fit.peak_gbps == pytest.approx(40.0 * (256e6 / 40e9) / (256e6 / 40e9 + 15e-6), rel=1e-3)


def test_fit_uva_recovers_a_synthetic_model():
    rng = np.random.default_rng(0)
    table = rng.choice([1, 4, 16, 64, 256], 40).astype(float)
    rows = rng.choice([4096, 16384, 65536, 262144], 40)
    rb = rng.choice([128, 256, 1024], 40)
    from profiles.uva import miss_fraction, units_touched
    walks = units_touched(rows, table * GiB, 64 * 1024) * miss_fraction(table * GiB, 2 * GiB, 0.5)
    us = (20e-6 + rows * 3e-9 + rows * rb * 1e-12 + walks * 40e-9) * 1e6
    fit = fit_uva(table, rb, rows, us)
    assert (fit.translation_unit_kib, fit.tlb_reach_gib, fit.miss_exponent) == (64, 2, 0.5)
    assert fit.walk_ns == pytest.approx(40, rel=1e-6) and fit.fixed_us == pytest.approx(20, rel=1e-6)
    assert fit.max_rel_error < 1e-9


def test_fit_linear_time():
    fit = fit_linear_time([1000, 10000, 100000], [12, 30, 210])
    assert fit.fixed_us == pytest.approx(10, rel=1e-6) and fit.per_item_ns == pytest.approx(2, rel=1e-6)


def test_bad_profiles_give_one_line_errors(tmp_path):
    good = (load_profile.__module__ and open(__import__("profiles").shipped_path("h100-sxm")).read())
    bad = tmp_path / "bad.toml"
    for was, now, message in [
        ("h2d_gbps = 54.3", "h2d_gbps = -1", r"link\.h2d_gbps: must be > 0"),
        ("copy_engines = 2", "copy_engine = 2", r"link\.copy_engine: unknown field; did you mean 'copy_engines'"),
        ("cold_line_ns = 35.37", "cold_line_ns = -1", r"uva\.cold_line_ns: must be >= 0"),
        ("upper_line_mib = 16.0", "upper_line_mib = 0", r"uva\.upper_line_mib: must be > 0"),
    ]:
        bad.write_text(good.replace(was, now))
        with pytest.raises(ProfileError, match=message):
            load_profile(bad)
    bad.write_text("name = [")
    with pytest.raises(ProfileError, match="not valid TOML"):
        load_profile(bad)
    with pytest.raises(ProfileError, match="no profile named"):
        load_profile("no-such-gpu")
