"""Timing plumbing of real runs that runs without a GPU: clock anchors and NVML device indices."""

import pytest

from real_runs.instrument import Timeline, nvml_index


class FakeEvent:
    """A CUDA event as Timeline sees one: elapsed_time in ms against another event."""

    def __init__(self, gpu_s: float):
        self.gpu_s = gpu_s

    def elapsed_time(self, other: "FakeEvent") -> float:
        return (other.gpu_s - self.gpu_s) * 1e3


def drifting_timeline(anchor_every_s: float | None, drift: float = 50e-6, run_s: float = 60.0) -> Timeline:
    """A timeline whose GPU clock runs `drift` slow against the host's, anchored every `anchor_every_s`."""
    tl = Timeline(cuda=False)
    tl.cuda = True
    tl._ref, tl._ref_ns = FakeEvent(0.0), tl.t0_ns
    t = anchor_every_s
    while anchor_every_s and t <= run_s:
        tl._anchors.append((FakeEvent(t * (1 - drift)), tl.t0_ns + int(t * 1e9)))
        t += anchor_every_s
    return tl


def test_anchors_follow_a_drifting_gpu_clock():
    true_host_s = 45.25
    mark = FakeEvent(true_host_s * (1 - 50e-6))        # a CUDA event at host time 45.25 s
    once = drifting_timeline(None).seconds(mark)        # one anchor at the start: off by 2.3 ms
    assert abs(once - true_host_s) == pytest.approx(45.25 * 50e-6, rel=0.01)
    anchored = drifting_timeline(0.5).seconds(mark)     # an anchor per step: within 1 us
    assert abs(anchored - true_host_s) < 1e-6
    # Host marks are untouched, and marks after the last anchor keep its offset.
    tl = drifting_timeline(0.5, run_s=10.0)
    assert tl.seconds(tl.t0_ns + 3_000_000_000) == pytest.approx(3.0)
    assert abs(tl.seconds(FakeEvent(10.2 * (1 - 50e-6))) - 10.2) < 2e-5          # 0.2 s of drift: 10 us


def test_nvml_index_follows_cuda_visible_devices(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert nvml_index(0) == 0 and nvml_index(1) == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert nvml_index(0) == 3 and nvml_index(1) == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8c1b2f3e")   # UUIDs: NVML's index cannot be told, keep CUDA's
    assert nvml_index(0) == 0
