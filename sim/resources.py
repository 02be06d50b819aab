"""What concurrent fetches contend for, and the timeline they write.

CPU cores are a Container (hashing and gathers take threads from it), copy
engines and fetch streams are Resources, staging buffers a Container; the PCIe
H2D direction and host DRAM are fluid pipes (bandwidth.SharedBandwidth). The
GPU's SMs are shared by rate: while zero-copy gather blocks sit resident, the
compute stream runs at `compute_rate` < 1, and `rate_changed` fires when that
rate changes.
"""

from __future__ import annotations

import simpy

from profiles import HardwareProfile
from sim import costs
from sim.bandwidth import SharedBandwidth
from vocab.config import PlacementConfig

# The shared pipes, by name (SimResult.pipe_bytes keys).
PCIE_H2D = "pcie_h2d"
HOST_DRAM = "host_dram"
SSD_DRIVE = "ssd_drive"  # block bytes the drive delivers (a profile with an [ssd] section)


class SharedResources:
    def __init__(self, env: simpy.Environment, profile: HardwareProfile, placement: PlacementConfig,
                 record_events: bool = False):
        host = profile.host
        self.env = env
        self.profile = profile
        self.cores = simpy.Container(env, capacity=host.cpu_cores, init=host.cpu_cores)
        self.copy_engines = simpy.Resource(env, capacity=profile.link.copy_engines)
        self.fetch_streams = simpy.Resource(env, capacity=placement.fetch_streams)
        buffers = placement.staging_buffers * placement.fetch_streams
        self.staging = simpy.Container(env, capacity=buffers, init=buffers)
        pipes = {PCIE_H2D: profile.link.h2d_gbps * 1e9, HOST_DRAM: host.dram_gbps * 1e9}
        if profile.ssd is not None:
            pipes[SSD_DRIVE] = costs.ssd_drive_bytes_per_s(profile)
        self.net = SharedBandwidth(env, pipes)
        self.sm_share = 0.0        # compute throughput lost to resident gather blocks (summed, at most 1)
        self.rate_changed = env.event()
        self.record_events = record_events
        # (actor, name, start_s, end_s, step, layer), as vocab.records.EVENT_COLUMNS.
        self.events: list[tuple] = []

    @property
    def compute_rate(self) -> float:
        return 1.0 - min(1.0, self.sm_share)

    def hold_sms(self, share: float) -> None:
        """A gather's blocks take (share > 0) or give back (share < 0) compute throughput."""
        if share == 0.0:
            return
        self.sm_share = max(0.0, self.sm_share + share)
        if self.sm_share < 1e-12:
            self.sm_share = 0.0
        changed, self.rate_changed = self.rate_changed, self.env.event()
        changed.succeed()

    def log(self, actor: str, name: str, start: float, step: int, layer: int = -1) -> None:
        """An interval on `actor` from `start` to now."""
        if self.record_events:
            self.events.append((actor, name, start, self.env.now, step, layer))
