"""Does a configuration fit the profiled machine? The budget of vocab.memory, filled in for a profile."""

from __future__ import annotations

from profiles import HardwareProfile
from sim.placements import Placement, placement_for
from vocab.config import RunConfig
from vocab.memory import (
    MemoryBudget,
    activation_bytes,
    hbm_usable_bytes,
    host_usable_bytes,
    kv_cache_bytes,
    weights_bytes,
)
from vocab.units import GiB


def memory_budget(cfg: RunConfig, profile: HardwareProfile, max_kv_tokens: int, max_step_tokens: int,
                  max_unique_rows: int, placement: Placement | None = None) -> MemoryBudget:
    """The budget of `cfg` on `profile`; what the table, cache and staging need is the placement's."""
    placement = placement or placement_for(cfg)
    return MemoryBudget(
        weights_bytes=weights_bytes(cfg, with_engram=placement.holds_table),
        kv_cache_bytes=kv_cache_bytes(cfg.backbone, max_kv_tokens),
        activation_bytes=activation_bytes(cfg.backbone, max_step_tokens),
        hbm_usable_bytes=hbm_usable_bytes(profile.gpu.hbm_gib, profile.gpu.hbm_reserved_gib),
        host_usable_bytes=host_usable_bytes(profile.host.memory_gib),
        ssd_usable_bytes=int(profile.ssd.capacity_gib * GiB) if profile.ssd is not None else 0,
        **placement.memory_needs(max_unique_rows, profile)._asdict(),
    )


def check_fits(budget: MemoryBudget, cfg: RunConfig, profile: HardwareProfile) -> None:
    budget.check(cfg.placement.kind, profile.name)
