"""Does a configuration fit the profiled machine? The budget of vocab.memory, filled in for a profile."""

from __future__ import annotations

from profiles import HardwareProfile
from vocab.config import RunConfig
from vocab.memory import (
    MemoryBudget,
    activation_bytes,
    cache_bytes,
    hbm_usable_bytes,
    host_usable_bytes,
    kv_cache_bytes,
    weights_bytes,
)


def memory_budget(cfg: RunConfig, profile: HardwareProfile, max_kv_tokens: int, max_step_tokens: int,
                  max_unique_rows: int) -> MemoryBudget:
    kind = cfg.placement.kind
    table = cfg.engram.total_table_bytes
    w = cfg.workload
    ahead = w.prefill_prefetch_ahead if w.phase == "prefill" else w.decode_lookahead
    landed = (1 + ahead) * max_unique_rows * cfg.engram.row_bytes * len(cfg.engram.layer_ids)
    return MemoryBudget(
        weights_bytes=weights_bytes(cfg),
        kv_cache_bytes=kv_cache_bytes(cfg.backbone, max_kv_tokens),
        table_hbm_bytes=table if kind == "hbm" else cache_bytes(cfg),
        staging_hbm_bytes=0 if kind == "hbm" else landed,
        activation_bytes=activation_bytes(cfg.backbone, max_step_tokens),
        hbm_usable_bytes=hbm_usable_bytes(profile.gpu.hbm_gib, profile.gpu.hbm_reserved_gib),
        table_host_bytes=0 if kind == "hbm" else table,
        host_usable_bytes=host_usable_bytes(profile.host.memory_gib),
    )


def check_fits(budget: MemoryBudget, cfg: RunConfig, profile: HardwareProfile) -> None:
    budget.check(cfg.placement.kind, profile.name)
