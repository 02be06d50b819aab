"""calibrate --device cpu's [link]: a CPU run's row copy as the stores make it, a line over sizes."""

import tomllib

import pytest

from profiles import LinkProfile
from vocab.errors import ProfileError
from vocab.schema import build

cpu_device = pytest.importorskip("tools.calibrate.cpu_device")


def test_the_fit_recovers_a_fixed_cost_and_a_rate():
    fixed_s, bytes_per_s = 45e-6, 12e9
    seconds = {n: fixed_s + n / bytes_per_s for n in cpu_device.COPY_BYTES}
    link = cpu_device.link_section(seconds)
    assert link["copy_fixed_us"] == pytest.approx(45.0, rel=0.01)
    assert link["h2d_gbps"] == pytest.approx(12.0, rel=0.01)
    # The raw points are each size's own rate, slowest for the smallest copy.
    rates = [p["y"] for p in link["h2d_points"]]
    assert rates == sorted(rates)


def test_the_section_is_a_valid_link():
    seconds = {n: 40e-6 + n / 20e9 for n in cpu_device.COPY_BYTES}
    text = "[link]\n" + cpu_device.format_link(cpu_device.link_section(seconds), seconds)
    link = build(LinkProfile, tomllib.loads(text)["link"], "link", ProfileError)
    link.validate("link")
    assert link.copy_engines == 1 and link.h2d_gbps == link.d2h_gbps == link.pageable_h2d_gbps
