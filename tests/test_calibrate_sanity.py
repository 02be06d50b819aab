"""Calibration sanity: a figure outside its physical bounds, or whose repeats spread too widely, is re-measured,
then flagged in the profile and warned about; one in bounds passes untouched; every measured field has a bound."""

import time

import pytest

from profiles import load_profile, shipped_names
from real_runs import timing
from tests.test_calibrate import TINY, run_calibrate, synthetic_gpu_raw, synthetic_mechanism_raw, synthetic_ssd_raw
from tools.calibrate import assemble, bounds, measure_cpu, measure_gpu, measure_ssd, plan, sanity
from vocab.units import GiB


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(plan, "QUICK", TINY)
    monkeypatch.setattr(timing, "WARM_S", 0.0)
    monkeypatch.setattr(timing, "TIMED_S", 0.0)


def fake_gather(fixed_us_by_call: list, calls: list):
    """A CPU gather step whose fixed cost per call is fixed_us_by_call[n] on its n-th run (the last repeats)."""
    def measure(sizes, plan_, raw, pin_staging=False):
        fixed = fixed_us_by_call[min(len(calls), len(fixed_us_by_call) - 1)]
        calls.append(fixed)
        raw["gather"] = {(rb, t): 8.0 * t for rb in (64, 256, 4096) for t in plan_["threads"]}
        raw["gather_table_bytes"] = GiB
        raw["gather_fixed"] = {n: fixed + 0.01 * n for n in (64, 1024, 16384)}
        yield "cpu gather"
    return measure


def gather_line(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("cpu_gather_fixed_us ="))


def test_an_absurd_figure_is_re_measured_then_flagged_in_the_profile_and_warned(tiny, tmp_path, monkeypatch,
                                                                                capsys):
    calls = []
    monkeypatch.setattr(measure_cpu, "measure_cpu_gather", fake_gather([7990.0], calls))
    out = tmp_path / "p.toml"
    assert run_calibrate(["--cpu-only", "--quick", "--out", str(out)]) == 0
    assert len(calls) == 1 + bounds.MAX_REMEASURES                   # measured, then re-measured, then flagged
    err = capsys.readouterr().err
    assert "calibrate: re-measuring cpu_gather (1 of 2): host.cpu_gather_fixed_us 7990 us is outside 0.1-200 us" in err
    warning = [line for line in err.splitlines() if line.startswith("engram-sim: warning: calibrate: FLAGGED "
                                                                     "host.cpu_gather_fixed_us: 7990 us")]
    assert len(warning) == 1 and "after 2 re-measurements" in warning[0]
    text = out.read_text()
    assert gather_line(text).startswith("cpu_gather_fixed_us = 7990.0  # FLAGGED: 7990 us is outside 0.1-200 us")
    p = load_profile(out)                                            # still a valid profile
    assert p.host.cpu_gather_fixed_us == 7990.0
    assert "FLAGGED host.cpu_gather_fixed_us: 7990 us is outside 0.1-200 us" in p.provenance.notes


def test_a_figure_that_comes_back_in_bounds_on_re_measuring_is_not_flagged(tiny, tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(measure_cpu, "measure_cpu_gather", fake_gather([7990.0, 2.0], calls))
    out = tmp_path / "p.toml"
    assert run_calibrate(["--cpu-only", "--quick", "--out", str(out)]) == 0
    assert calls[:2] == [7990.0, 2.0]
    assert load_profile(out).host.cpu_gather_fixed_us == pytest.approx(2.0)
    assert "FLAGGED host.cpu_gather_fixed_us" not in out.read_text()
    assert "warning: calibrate: FLAGGED host.cpu_gather_fixed_us" not in capsys.readouterr().err


def test_a_figure_in_bounds_passes_untouched(tiny, tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(measure_cpu, "measure_cpu_gather", fake_gather([2.0], calls))
    out = tmp_path / "p.toml"
    assert run_calibrate(["--cpu-only", "--quick", "--out", str(out)]) == 0
    assert calls.count(2.0) >= 1
    assert gather_line(out.read_text()) == "cpu_gather_fixed_us = 2.0"
    err = capsys.readouterr().err
    assert "re-measuring cpu_gather" not in err and "FLAGGED host.cpu_gather" not in err


def test_repeats_that_spread_too_widely_are_re_measured_then_flagged(tiny, tmp_path, monkeypatch, capsys):
    runs = []

    def noisy_dedup(sizes, plan_, raw):
        runs.append(1)
        calls = iter(range(100))
        # the first timed call fast, the others 5 ms: the median is far above the fastest
        raw["dedup"] = 1e6 / timing.median_time(lambda: time.sleep(0 if next(calls) == 1 else 0.005), 1, 3)
        yield "dedup"

    monkeypatch.setattr(measure_cpu, "measure_dedup", noisy_dedup)
    out = tmp_path / "p.toml"
    assert run_calibrate(["--cpu-only", "--quick", "--out", str(out)]) == 0
    assert len(runs) == 1 + bounds.MAX_REMEASURES
    err = capsys.readouterr().err
    assert "re-measuring dedup (1 of 2): host.dedup_rows_per_s_per_core its repeats spread too widely" in err
    assert ("warning: calibrate: FLAGGED host.dedup_rows_per_s_per_core: its repeats spread too widely: "
            "at 'dedup'") in err
    text = out.read_text()
    assert "#   dedup: dedup " in text                               # the spread is recorded beside the figures
    dedup = next(line for line in text.splitlines() if line.startswith("dedup_rows_per_s_per_core ="))
    assert "# FLAGGED: its repeats spread too widely" in dedup


def test_time_spread_gives_min_median_max_and_median_time_its_median(monkeypatch):
    monkeypatch.setattr(timing, "WARM_S", 0.0)
    monkeypatch.setattr(timing, "TIMED_S", 0.0)
    with timing.recording_spreads() as seen:
        s = timing.time_spread(lambda: sum(range(1000)), 1, 5)
        m = timing.median_time(lambda: sum(range(1000)), 1, 5)
    assert s.min <= s.median <= s.max and s.repeats == 5 and isinstance(m, float)
    assert len(seen) == 2 and seen[0] == s


# -- the bounds table ----------------------------------------------------------------------------------

def synthetic_profile() -> dict:
    raw = {**synthetic_gpu_raw(), **synthetic_mechanism_raw(0.4), **synthetic_ssd_raw()}
    profile, _, _ = assemble.assemble(raw, load_profile("h100-sxm"), "h100-sxm", "gpu", "2026-01-01",
                                      quick=False, cpu_only=False)
    return profile


def test_every_measured_field_calibrate_writes_has_a_bound():
    profile = synthetic_profile()
    written = {f"{table}.{name}" for table in ("host", "gpu", "link", "uva", "ssd") for name in profile[table]}
    assert written - set(bounds.BOUNDS) - bounds.NOT_TIMED == set()
    assert set(bounds.BOUNDS) - written == set()                     # no bound for a field no longer written
    assert bounds.NOT_TIMED & set(bounds.BOUNDS) == set()


def test_every_bound_names_a_step_that_calibrate_runs():
    sizes_plan = {"uva_reason": None}
    cpu = [name for name, _ in measure_cpu.cpu_steps(TINY, sizes_plan, False)]
    gpu = [name for name, _ in measure_gpu.gpu_steps(TINY, sizes_plan)]
    ssd = [name for name, _ in measure_ssd.ssd_steps(TINY, "file", 4096)]
    assert tuple(cpu) == bounds.CPU_STEPS and tuple(gpu) == bounds.GPU_STEPS and tuple(ssd) == bounds.SSD_STEPS
    assert {b.step for b in bounds.BOUNDS.values()} <= set(cpu + gpu + ssd)
    for b in bounds.BOUNDS.values():
        assert b.low < b.high and b.unit and b.why, b.field


@pytest.mark.parametrize("name", shipped_names())
def test_the_shipped_profiles_lie_within_the_bounds(name):
    from profiles.writer import plain

    profile = plain(load_profile(name))
    everything = bounds.CPU_STEPS + bounds.GPU_STEPS
    assert sanity.check_bounds(profile, everything) == []
    assert sanity.check_bounds(synthetic_profile(), everything) == []
