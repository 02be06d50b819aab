"""Placement names: where the Engram table lives and how its rows reach the GPU.

The names are defined here once. What each placement does is one class on each
side: `sim/placements.py` (what crosses which link, its DES fetch, its
closed-form time, the memory it needs) and `real_runs/stores.py` (the real
store). A new placement is one new name here plus one class on each side.
"""

from __future__ import annotations

NONE = "none"            # the backbone without Engram: the paper's baseline
HBM = "hbm"              # the table in GPU memory; only row ids travel
HOST_DMA = "host_dma"    # CPU threads gather rows into pinned staging; copy engines move the chunks
HOST_UVA = "host_uva"    # a GPU kernel reads pinned host memory directly (zero-copy)
HBM_CACHE = "hbm_cache"  # hot rows in HBM; misses through one of the host paths
SSD = "ssd"              # the table in a file on an NVMe drive; optional DRAM cache and HBM cache in front

# Placements that hold an Engram table, in the order sweeps and charts show them.
ENGRAM_PLACEMENTS = (HBM, HOST_DMA, HOST_UVA, HBM_CACHE, SSD)
PLACEMENTS = (NONE, *ENGRAM_PLACEMENTS)
# How rows cross the host link (host_dma and host_uva themselves, hbm_cache's misses, ssd's DRAM-cache hits).
HOST_PATHS = (HOST_DMA, HOST_UVA)
# Placements with an optional (hbm_cache: required) HBM cache of hot rows in front.
HBM_CACHED = (HBM_CACHE, SSD)
# How an ssd placement's drive reads reach HBM: into pinned staging, then copied (the DMA path), or
# straight into HBM by GPUDirect Storage (where the profile's [ssd] says the machine has it).
SSD_READ_PATHS = ("staging", "gds")
CACHE_POLICIES = ("static_topk", "lru", "lfu")


def default_miss_path(kind: str) -> str:
    """The host path of rows past the HBM cache when the config names none: zero-copy for hbm_cache (the
    engines' choice), the CPU gather for ssd's DRAM-cache hits (its drive reads land in pinned staging anyway)."""
    return HOST_DMA if kind == SSD else HOST_UVA


def host_path(kind: str, miss_path: str | None) -> str | None:
    """The path rows take over the host link under `kind` (None: nothing crosses it)."""
    if kind in HOST_PATHS:
        return kind
    if kind in HBM_CACHED:
        return miss_path or default_miss_path(kind)
    return None


def needs_gpu(kind: str, miss_path: str | None) -> bool:
    """The zero-copy path needs a CUDA GPU (or Triton's interpreter)."""
    return host_path(kind, miss_path) == HOST_UVA

