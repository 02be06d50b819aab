"""A server's physical pipes, and the route each GPU's logical pipes take over them (sim.resources).

Physical pipes (bytes/s):
    pcie_h2d/g{i}          GPU i's own x16 link, host to device
    uplink/s{j}            PCIe switch j's uplink to the host, shared by its GPUs (switches of more than one GPU)
    host_dram/n{k}         NUMA node k's DRAM, reads and writes together
    cross_socket/to_n{k}   the socket link, the direction into node k (more than one node)
    nvlink_out/g{i}, nvlink_in/g{i}   GPU i's NVLink, each direction (a profile with NVLink)
    ssd_drive/g{i}         GPU i's drive (a profile with an [ssd] section: one drive per GPU)
    cores/n{k}, cores/all  NUMA node k's cores (gather_numa local), or all the host's (any): capacity in cores,
                           shared by every GPU's hash and gather threads that run there (processor sharing)

A route is the expected flow of one payload byte: DRAM traffic lands on the node that holds the memory;
a byte crosses the socket link when the reader (or writer) sits on another node than the memory, in the
direction of the data. Where the CPU threads run (deployment.gather_numa: their GPU's node, or any node
with equal chance) and where the table's pages sit (host_copies: the GPU's node, or interleaved over
all nodes; a shard's slice on its GPU's node) give the weights.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from profiles import HardwareProfile, ServerProfile, server_topology
from sim import costs
from sim.resources import (
    CORE_PIPE_PREFIX,
    CPU_CORES,
    NVLINK_IN,
    NVLINK_OUT,
    PCIE_H2D,
    SSD_DRIVE,
    STAGING_CPU,
    STAGING_GPU,
    TABLE_CPU,
    TABLE_GPU,
)
from vocab.config import DeploymentConfig

# Physical pipe names: one template per kind, filled with the GPU's, switch's or node's index.
PCIE, UPLINK, DRAM, CROSS = "pcie_h2d/g{}", "uplink/s{}", "host_dram/n{}", "cross_socket/to_n{}"
GPU_OUT, GPU_IN, DRIVE = "nvlink_out/g{}", "nvlink_in/g{}", "ssd_drive/g{}"
NODE_CORES, ALL_CORES = CORE_PIPE_PREFIX + "/n{}", CORE_PIPE_PREFIX + "/all"


@dataclass(frozen=True)
class Topology:
    """The GPUs 0..deployment.gpus-1 of the profile's server, deployed as `deployment` says."""
    profile: HardwareProfile
    deployment: DeploymentConfig

    @property
    def server(self) -> ServerProfile:
        return server_topology(self.profile)

    @property
    def gpus(self) -> range:
        return range(self.deployment.gpus)

    @property
    def nodes(self) -> int:
        return len(self.server.numa)

    def pipes(self) -> dict[str, float]:
        """Bytes/s of every physical pipe the deployment's GPUs can use."""
        s = self.server
        out = {PCIE.format(i): self.profile.link.h2d_gbps * 1e9 for i in self.gpus}
        for j, switch in enumerate(s.switches):
            if len(switch.gpus) > 1 and any(g in self.gpus for g in switch.gpus):
                out[UPLINK.format(j)] = switch.uplink_gbps * 1e9
        out.update({DRAM.format(k): n.dram_gbps * 1e9 for k, n in enumerate(s.numa)})
        if self.nodes > 1:
            out.update({CROSS.format(k): s.cross_socket_gbps * 1e9 for k in range(self.nodes)})
        if s.nvlink_gbps > 0:
            for i in self.gpus:
                out[GPU_OUT.format(i)] = out[GPU_IN.format(i)] = s.nvlink_gbps * 1e9
        if self.profile.ssd is not None:
            out.update({DRIVE.format(i): costs.ssd_drive_bytes_per_s(self.profile) for i in self.gpus})
        if self.deployment.gather_numa == "any":
            out[ALL_CORES] = float(sum(n.cores for n in s.numa))
        else:
            out.update({NODE_CORES.format(k): float(n.cores) for k, n in enumerate(s.numa)})
        return out

    def _spread(self, local: bool, gpu: int) -> dict[int, float]:
        """Node -> chance: all on the GPU's node, or evenly over all nodes."""
        return {self.server.node_of(gpu): 1.0} if local else {k: 1.0 / self.nodes for k in range(self.nodes)}

    def thread_nodes(self, gpu: int) -> dict[int, float]:
        """Where GPU `gpu`'s hash and gather threads run."""
        return self._spread(self.deployment.gather_numa == "local", gpu)

    def page_nodes(self, gpu: int) -> dict[int, float]:
        """Where the pages of the host table GPU `gpu` reads sit."""
        d = self.deployment
        return self._spread(d.table == "shard" or d.host_copies == "per_numa", gpu)

    def routes(self, gpu: int) -> dict[str, dict[str, float]]:
        """GPU `gpu`'s logical pipes as weighted physical ones."""
        home = self.server.node_of(gpu)
        threads, pages = self.thread_nodes(gpu), self.page_nodes(gpu)
        link = {PCIE.format(gpu): 1.0}
        switch = self.server.switch_of(gpu)
        if switch is not None and len(switch.gpus) > 1:
            link[UPLINK.format(self.server.switches.index(switch))] = 1.0
        table_cpu = _flows([(p, a, wp * wa) for p, wp in pages.items() for a, wa in threads.items()])
        cores = ALL_CORES if self.deployment.gather_numa == "any" else NODE_CORES.format(home)
        staging_cpu = _flows([(home, home, 1.0)], written_from=threads)
        return {PCIE_H2D: link, TABLE_CPU: table_cpu, STAGING_CPU: staging_cpu,
                TABLE_GPU: _flows([(p, home, w) for p, w in pages.items()]), STAGING_GPU: {DRAM.format(home): 1.0},
                NVLINK_OUT: {GPU_OUT.format(gpu): 1.0}, NVLINK_IN: {GPU_IN.format(gpu): 1.0},
                SSD_DRIVE: {DRIVE.format(gpu): 1.0}, CPU_CORES: {cores: 1.0}}

    def gpu_view(self, gpu: int) -> HardwareProfile:
        """The profile as GPU `gpu` sees it alone: [host] is its core pool, its node's DRAM and memory."""
        s = self.server
        node = s.numa[s.node_of(gpu)]
        cores = sum(n.cores for n in s.numa) if self.deployment.gather_numa == "any" else node.cores
        host = replace(self.profile.host, cpu_cores=cores, dram_gbps=node.dram_gbps, memory_gib=node.memory_gib)
        return replace(self.profile, host=host, server=None)


def _flows(moves: list[tuple[int, int, float]], written_from: dict[int, float] | None = None) -> dict[str, float]:
    """Pipe weights of bytes read from memory on node `src` by a reader on node `dst` (weight w each), or, with
    written_from, of bytes written into node `src`'s memory by threads on those nodes (node -> chance)."""
    out: dict[str, float] = {}

    def add(pipe: str, w: float) -> None:
        if w > 0:
            out[pipe] = out.get(pipe, 0.0) + w

    for src, dst, w in moves:
        add(DRAM.format(src), w)
        if written_from is None:
            if src != dst:
                add(CROSS.format(dst), w)
        else:
            for writer, chance in written_from.items():
                if writer != src:
                    add(CROSS.format(src), w * chance)
    return out
