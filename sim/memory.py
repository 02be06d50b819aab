"""HBM and host-memory accounting: does a configuration fit the machine?"""

from __future__ import annotations

from dataclasses import dataclass

from profiles import HardwareProfile
from vocab.config import DTYPE_BYTES, GiB, RunConfig
from vocab.errors import CapacityError


def backbone_params(cfg: RunConfig) -> int:
    b = cfg.backbone
    a = b.attention
    h = b.hidden_size
    attn = h * (2 * a.heads * a.head_dim + 2 * a.kv_heads * a.head_dim)
    dense = 3 * h * b.intermediate_size
    moe = 0
    if b.moe is not None:
        m = b.moe
        moe = (m.shared_experts + m.routed_experts) * 3 * h * m.expert_intermediate_size + h * m.routed_experts
    layers = sum(attn + (dense if b.is_dense(i) else moe) + 2 * h for i in range(b.layers))
    engram = len(cfg.engram.layer_ids) * (cfg.engram.branches + 1) * cfg.engram.d_mem * h
    return layers + engram + 2 * b.vocab_size * h


def cache_bytes(cfg: RunConfig) -> int:
    """HBM bytes of the hot-row cache (hbm_cache placement), else 0."""
    p = cfg.placement
    if p.kind != "hbm_cache":
        return 0
    if p.cache_gib is not None:
        return int(p.cache_gib * GiB)
    return int(p.cache_fraction * cfg.engram.total_table_bytes)


def cache_rows_per_layer(cfg: RunConfig) -> int:
    """The cache is split across Engram layers in proportion to their tables."""
    return cache_bytes(cfg) // (cfg.engram.row_bytes * len(cfg.engram.layer_ids))


@dataclass
class MemoryBudget:
    weights_bytes: int
    kv_cache_bytes: int
    table_hbm_bytes: int       # the table (hbm) or the cache (hbm_cache)
    staging_hbm_bytes: int     # rows landed for the current and prefetched steps
    activation_bytes: int
    hbm_usable_bytes: int
    table_host_bytes: int
    host_usable_bytes: int

    @property
    def hbm_needed_bytes(self) -> int:
        return (self.weights_bytes + self.kv_cache_bytes + self.table_hbm_bytes
                + self.staging_hbm_bytes + self.activation_bytes)

    @property
    def fits_hbm(self) -> bool:
        return self.hbm_needed_bytes <= self.hbm_usable_bytes

    @property
    def fits_host(self) -> bool:
        return self.table_host_bytes <= self.host_usable_bytes


def memory_budget(cfg: RunConfig, profile: HardwareProfile, max_kv_tokens: int, max_step_tokens: int,
                  max_unique_rows: int) -> MemoryBudget:
    b = cfg.backbone
    dt = DTYPE_BYTES[b.dtype]
    kind = cfg.placement.kind
    table = cfg.engram.total_table_bytes
    ahead = cfg.workload.prefill_prefetch_ahead if cfg.workload.phase == "prefill" else cfg.workload.decode_lookahead
    landed = (1 + ahead) * max_unique_rows * cfg.engram.row_bytes * len(cfg.engram.layer_ids)
    return MemoryBudget(
        weights_bytes=backbone_params(cfg) * dt,
        kv_cache_bytes=int(max_kv_tokens * b.layers * b.attention.cache_dim * dt),
        table_hbm_bytes=table if kind == "hbm" else cache_bytes(cfg),
        staging_hbm_bytes=0 if kind == "hbm" else landed,
        # Hidden states, FFN intermediates and logits of one step, with slack.
        activation_bytes=int(max_step_tokens * (16 * b.hidden_size + 2 * (b.moe.expert_intermediate_size * b.moe.top_k
                                                                          if b.moe else b.intermediate_size)) * dt),
        hbm_usable_bytes=int((profile.gpu.hbm_gib - profile.gpu.hbm_reserved_gib) * GiB),
        table_host_bytes=0 if kind == "hbm" else table,
        # Leave a tenth of host memory to the OS and the serving process.
        host_usable_bytes=int(0.9 * profile.host.memory_gib * GiB),
    )


def check_fits(budget: MemoryBudget, cfg: RunConfig, profile: HardwareProfile) -> None:
    if not budget.fits_hbm:
        parts = (f"weights {budget.weights_bytes / GiB:.1f} + KV {budget.kv_cache_bytes / GiB:.1f}"
                 f" + table/cache {budget.table_hbm_bytes / GiB:.1f} + staging {budget.staging_hbm_bytes / GiB:.1f}"
                 f" + activations {budget.activation_bytes / GiB:.1f} GiB")
        raise CapacityError(
            "placement.kind" if cfg.placement.kind in ("hbm", "hbm_cache") else "workload.sequences",
            f"needs {budget.hbm_needed_bytes / GiB:.1f} GiB of HBM ({parts}) but {profile.name} has "
            f"{budget.hbm_usable_bytes / GiB:.1f} GiB usable",
            "put the table in host memory (host_dma or host_uva), shrink the cache, or use fewer sequences")
    if not budget.fits_host:
        raise CapacityError(
            "engram.table_gib",
            f"the {budget.table_host_bytes / GiB:.1f} GiB table exceeds {profile.name}'s usable host memory "
            f"({budget.host_usable_bytes / GiB:.1f} GiB)",
            "use a smaller table or a profile with more host memory")
