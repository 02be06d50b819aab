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


def test_the_measured_sections_go_into_the_base_profile(tmp_path):
    from profiles import load_profile

    seconds = {n: 40e-6 + n / 20e9 for n in cpu_device.COPY_BYTES}
    base = load_profile("dev-vm-cpu")
    gpu = {"name": "a test CPU", "bf16_tflops": 0.5, "kernel_launch_us": 7.0}
    host = {"serve_step_fixed_us": 400.0, "serve_step_per_seq_us": 3.0, "fetch_pickup_us": 120.0}
    text = cpu_device.merged_profile("dev-vm-cpu", gpu, cpu_device.link_section(seconds), host,
                                     {"link": ["the copy, measured"]}, "merged by a test.")
    out = tmp_path / "p.toml"
    out.write_text(text)
    p = load_profile(out)
    assert (p.gpu.name, p.gpu.bf16_tflops, p.gpu.kernel_launch_us) == ("a test CPU", 0.5, 7.0)
    assert p.gpu.sm_count == base.gpu.sm_count          # a field not measured on a CPU is kept, and said so
    assert p.link.copy_fixed_us == pytest.approx(40.0, rel=0.01)
    assert (p.host.serve_step_fixed_us, p.host.fetch_pickup_us) == (400.0, 120.0)
    assert p.host.hash_call_curve == base.host.hash_call_curve and p.ssd == base.ssd
    assert "# the copy, measured" in text and "kept from dev-vm-cpu" in text
    assert "# store_*" in text                          # the base's own comments survive
    assert p.provenance.notes.endswith("merged by a test.")


def test_a_bad_base_profile_is_one_line_before_anything_is_measured(tmp_path):
    with pytest.raises(ProfileError, match="profile"):
        cpu_device.base_path(str(tmp_path / "missing.toml"))
