"""A read call's own cost (ssd.read_call_fixed_us, read_handoff_us): in the profile, the drive's cost
functions, the DES, and calibrate's fit of it. No timed assertions."""

import dataclasses
import math

import pytest

from profiles import load_profile
from sim import costs
from sim.engine import simulate
from tools.calibrate.assemble_ssd import read_call_costs
from vocab.config import load_config
from vocab.errors import ProfileError

DEV = load_profile("dev-vm-cpu")


def _with(profile, **ssd):
    return dataclasses.replace(profile, ssd=dataclasses.replace(profile.ssd, **ssd))


FREE = _with(DEV, read_call_fixed_us=0.0, read_handoff_us=0.0)


def test_every_shipped_drive_gives_its_call_costs():
    for name in ("h100-sxm", "h200-sxm", "h800-sxm", "gh200", "a100-sxm4-80gb", "h100-8gpu-server", "dev-vm-cpu"):
        ssd = load_profile(name).ssd
        assert ssd.read_call_fixed_us > 0 and ssd.read_handoff_us > 0, name


def test_the_call_cost_is_added_once_a_call_and_weighs_most_on_few_reads():
    extra = {n: costs.ssd_read_time(DEV, n, 16, 1) - costs.ssd_read_time(FREE, n, 16, 1) for n in (1, 4, 32, 4096)}
    s = DEV.ssd
    assert extra[1] == pytest.approx((s.read_call_fixed_us + s.read_handoff_us) * 1e-6)
    assert extra[4] == pytest.approx((s.read_call_fixed_us + 4 * s.read_handoff_us) * 1e-6)
    for n in (32, 4096):   # at most 16 threads are handed a share
        assert extra[n] == pytest.approx((s.read_call_fixed_us + 16 * s.read_handoff_us) * 1e-6)
    per_read = {n: costs.ssd_read_time(DEV, n, 16, 1) / n for n in (4, 32, 4096)}
    free_per_read = {n: costs.ssd_read_time(FREE, n, 16, 1) / n for n in (4, 32, 4096)}
    # few reads a call pay it over few reads: their time per read grows the most
    assert per_read[4] / free_per_read[4] > per_read[32] / free_per_read[32] > per_read[4096] / free_per_read[4096]
    assert costs.ssd_read_time(DEV, 0, 16, 1) == 0.0   # no reads, no call


def test_the_des_drive_fetch_pays_the_call_cost():
    cfg = load_config("tiny").with_placement("ssd").with_table_gib(0.25).with_steps(4)
    slow = _with(FREE, read_call_fixed_us=5000.0)
    fast, paid = (simulate(cfg, p, check_capacity=False).fetches["fetch_time_s"] for p in (FREE, slow))
    assert list(paid - fast) == pytest.approx([5e-3] * len(paid), rel=0.02)


@pytest.mark.parametrize("field, value", [("read_call_fixed_us", -1.0), ("read_handoff_us", math.nan),
                                          ("read_handoff_us", 1e9)])
def test_a_call_cost_out_of_range_is_one_line_naming_it(field, value):
    with pytest.raises(ProfileError) as e:
        dataclasses.replace(DEV.ssd, **{field: value}).validate("ssd")
    assert f"ssd.{field}" in str(e.value) and "\n" not in str(e.value)


def test_a_drive_without_call_costs_is_refused_naming_the_field(tmp_path):
    text = (load_profile.__globals__["shipped_path"]("dev-vm-cpu")).read_text()
    p = tmp_path / "p.toml"
    p.write_text("\n".join(line for line in text.splitlines() if not line.startswith("read_handoff_us")))
    with pytest.raises(ProfileError, match="ssd.read_handoff_us"):
        load_profile(p)


def _calls(fixed_us, handoff_us, latency_us, ns=(1, 2, 4, 8, 16)):
    points = {n: {"latency_us": latency_us} for n in ns}
    return {n: (latency_us + fixed_us + handoff_us * n) * 1e-6 for n in ns}, points


def test_calibrate_fits_the_fixed_and_per_thread_costs():
    fixed, handoff, extra = read_call_costs(*_calls(80.0, 20.0, 100.0))
    assert fixed == pytest.approx(80.0) and handoff == pytest.approx(20.0)
    assert extra[16] == pytest.approx(80.0 + 320.0)


def test_the_fit_never_gives_a_negative_cost():
    fixed, handoff, _ = read_call_costs(*_calls(-50.0, 20.0, 100.0))   # a line below the origin
    assert fixed == 0.0 and handoff > 0
    fixed, handoff, _ = read_call_costs(*_calls(60.0, -1.0, 100.0))    # falling with the threads
    assert handoff == 0.0 and fixed > 0
    calls, points = _calls(30.0, 5.0, 100.0, ns=(1, 2))
    fixed, handoff, extra = read_call_costs(calls, {1: points[1]})     # one size on the curve: all fixed
    assert set(extra) == {1} and fixed == pytest.approx(35.0) and handoff == 0.0
    with pytest.raises(ValueError, match="no read call size"):
        read_call_costs(calls, {64: points[1]})
