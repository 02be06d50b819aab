"""Sizes of what a configuration puts in memory: parameters, KV cache, the HBM cache, fits.

One memory model for the simulator and the real runs. Which memory a table
lives in is the placement's business (sim/placements.py); the budget here
adds up what it is told and says whether it fits.
"""

from __future__ import annotations

from dataclasses import dataclass

from vocab.config import BackboneConfig, DeploymentConfig, EngramConfig, RunConfig
from vocab.errors import CapacityError
from vocab.placements import HBM_CACHED, SSD
from vocab.units import DTYPE_BYTES, GiB

# Host memory left to the OS and the serving process.
HOST_RESERVED_FRACTION = 0.1


def parameter_counts(backbone: BackboneConfig, engram: EngramConfig | None = None) -> dict:
    """Parameters by part (MLA presets counted as MHA, as the real runs build them)."""
    b, a = backbone, backbone.attention
    D = b.hidden_size
    attn = D * (a.heads + 2 * a.kv_heads) * a.head_dim + a.heads * a.head_dim * D
    dense = 3 * D * b.intermediate_size
    moe = 0
    if b.moe is not None:
        m = b.moe
        moe = (m.shared_experts + m.routed_experts) * 3 * D * m.expert_intermediate_size + D * m.routed_experts
    n_dense = sum(1 for i in range(b.layers) if b.is_dense(i))
    counts = {
        "embedding": b.vocab_size * D,
        "lm_head": b.vocab_size * D,
        "attention": b.layers * attn,
        "dense_ffn": n_dense * dense,
        "moe_ffn": (b.layers - n_dense) * moe,
        "norms": b.layers * 2 * D + D,
        "engram_module": 0,
        "engram_tables": 0,
    }
    if engram is not None:
        M, dm = engram.branches, engram.d_mem
        per = (M + 1) * D * dm + 3 * M * D + M * D * engram.conv_kernel
        counts["engram_module"] = len(engram.layer_ids) * per
        counts["engram_tables"] = sum(engram.layer_rows(layer) for layer in engram.layer_ids) * engram.values_per_row
    counts["backbone"] = sum(v for k, v in counts.items() if k != "engram_tables")
    counts["total"] = counts["backbone"] + counts["engram_tables"]
    return counts


def weights_bytes(cfg: RunConfig, with_engram: bool = True) -> int:
    """Bytes of the model's weights on the GPU (the Engram module's projections, not its tables)."""
    counts = parameter_counts(cfg.backbone, cfg.engram if with_engram else None)
    return counts["backbone"] * DTYPE_BYTES[cfg.backbone.dtype]


def kv_cache_bytes(backbone: BackboneConfig, tokens: int, as_run: bool = False) -> int:
    """KV cache bytes for `tokens` cached tokens: the config's cache_dim (MLA: the latent), or K and V
    as the real runs build them (as_run)."""
    a = backbone.attention
    dim = 2 * a.kv_heads * a.head_dim if as_run else a.cache_dim
    return int(tokens * backbone.layers * dim * DTYPE_BYTES[backbone.dtype])


def activation_bytes(backbone: BackboneConfig, step_tokens: int) -> int:
    """Hidden states, FFN intermediates and logits of one step, with slack."""
    b = backbone
    ffn = b.moe.expert_intermediate_size * b.moe.top_k if b.moe else b.intermediate_size
    return int(step_tokens * (16 * b.hidden_size + 2 * ffn) * DTYPE_BYTES[b.dtype])


def cache_bytes(cfg: RunConfig) -> int:
    """HBM bytes of the hot-row cache (hbm_cache, and ssd when it has one), else 0."""
    p = cfg.placement
    if p.kind not in HBM_CACHED:
        return 0
    if p.cache_gib is not None:
        return int(p.cache_gib * GiB)
    if p.cache_fraction is not None:
        return int(p.cache_fraction * cfg.engram.total_table_bytes)
    return 0


def cache_rows_per_layer(cfg: RunConfig) -> int:
    """The cache is split across Engram layers in proportion to their tables."""
    return cache_bytes(cfg) // (cfg.engram.row_bytes * len(cfg.engram.layer_ids))


def dram_cache_bytes(cfg: RunConfig) -> int:
    """Host bytes of the ssd placement's DRAM cache of warm rows, else 0."""
    p = cfg.placement
    return int((p.dram_cache_gib or 0.0) * GiB) if p.kind == SSD else 0


def dram_cache_rows_per_layer(cfg: RunConfig) -> int:
    """The DRAM cache, like the HBM cache, is split across Engram layers in proportion to their tables."""
    return dram_cache_bytes(cfg) // (cfg.engram.row_bytes * len(cfg.engram.layer_ids))


def landed_bytes(cfg: RunConfig, max_unique_rows: int) -> int:
    """HBM staging for rows fetched for the current step and the steps prefetched ahead of it (every placement
    whose rows travel lands them there)."""
    w = cfg.workload
    prompts_ahead = w.phase == "prefill" or (w.phase == "serve" and w.scheduler.policy == "prefill_first")
    ahead = w.prefill_prefetch_ahead if prompts_ahead else w.decode_lookahead
    return (1 + ahead) * max_unique_rows * cfg.engram.row_bytes * len(cfg.engram.layer_ids)


def host_usable_bytes(host_memory_gib: float) -> int:
    return int((1.0 - HOST_RESERVED_FRACTION) * host_memory_gib * GiB)


def hbm_usable_bytes(hbm_gib: float, hbm_reserved_gib: float) -> int:
    return int((hbm_gib - hbm_reserved_gib) * GiB)


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
    # ssd: the table file on the drive, and the drive's space for it (0 without an [ssd] profile section).
    table_ssd_bytes: int = 0
    ssd_usable_bytes: int = 0

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

    @property
    def fits_ssd(self) -> bool:
        return self.table_ssd_bytes <= self.ssd_usable_bytes

    def verdict(self) -> str:
        """"" when the configuration fits; else which memory it overflows, what it needs and what there is."""
        if not self.fits_hbm:
            return (f"does not fit: HBM, needs {self.hbm_needed_bytes / GiB:,.1f} GiB, "
                    f"has {self.hbm_usable_bytes / GiB:,.1f} GiB")
        if not self.fits_host:
            return (f"does not fit: host memory, needs {self.table_host_bytes / GiB:,.1f} GiB, "
                    f"has {self.host_usable_bytes / GiB:,.1f} GiB")
        if not self.fits_ssd:
            return (f"does not fit: drive, needs {self.table_ssd_bytes / GiB:,.1f} GiB, "
                    f"has {self.ssd_usable_bytes / GiB:,.1f} GiB")
        return ""

    def check(self, kind: str, machine: str) -> None:
        """CapacityError naming what does not fit, and where."""
        if not self.fits_hbm:
            parts = (f"weights {self.weights_bytes / GiB:.1f} + KV {self.kv_cache_bytes / GiB:.1f}"
                     f" + table/cache {self.table_hbm_bytes / GiB:.1f} + staging {self.staging_hbm_bytes / GiB:.1f}"
                     f" + activations {self.activation_bytes / GiB:.1f} GiB")
            raise CapacityError(
                "placement.kind" if kind in ("hbm", "hbm_cache") else "workload.sequences",
                f"needs {self.hbm_needed_bytes / GiB:.1f} GiB of HBM ({parts}) but {machine} has "
                f"{self.hbm_usable_bytes / GiB:.1f} GiB usable",
                "put the table in host memory (host_dma or host_uva), shrink the cache, or use fewer sequences")
        if not self.fits_host:
            raise CapacityError(
                "engram.table_gib",
                f"the {self.table_host_bytes / GiB:.1f} GiB table exceeds {machine}'s usable host memory "
                f"({self.host_usable_bytes / GiB:.1f} GiB)",
                "use a smaller table, the ssd placement, or a profile with more host memory")
        if not self.fits_ssd:
            raise CapacityError(
                "engram.table_gib",
                f"the {self.table_ssd_bytes / GiB:.1f} GiB table file exceeds {machine}'s drive space "
                f"({self.ssd_usable_bytes / GiB:.1f} GiB, ssd.capacity_gib)",
                "use a smaller table or a profile whose [ssd] drive is larger")


def memory_footprint(cfg: RunConfig, gpu_bytes: float, kv_tokens: int | None = None) -> dict:
    """Bytes of weights, Engram tables and KV cache of a RunConfig, and whether they fit a GPU of gpu_bytes.

    kv_tokens defaults to the decode workload's worst case: sequences x (longest context + steps).
    The KV cache is given both for the config's cache_dim (MLA: the latent) and as run here (K and V).
    """
    b, e, w = cfg.backbone, cfg.engram, cfg.workload
    counts = parameter_counts(b, e)
    if kv_tokens is None:
        kv_tokens = w.sequences * (w.lengths.high + (w.steps if w.phase == "decode" else 0))
    kv_config = kv_cache_bytes(b, kv_tokens)
    kv_run = kv_cache_bytes(b, kv_tokens, as_run=True)
    weights = weights_bytes(cfg)
    tables = e.total_table_bytes
    out = {
        "parameters": counts,
        "weights_bytes": weights,
        "engram_table_bytes": tables,
        "kv_tokens": kv_tokens,
        "kv_bytes_config": kv_config,
        "kv_bytes_as_run": kv_run,
        "gpu_bytes": gpu_bytes,
    }
    out["weights_and_tables_fit"] = weights + tables <= gpu_bytes
    out["all_in_hbm_fits"] = weights + tables + kv_config <= gpu_bytes
    out["tables_on_host_fits"] = weights + kv_config <= gpu_bytes
    # Largest KV token count that fits beside the weights (and the tables, when they are in HBM).
    per_token = kv_cache_bytes(b, 1)
    out["max_kv_tokens_tables_in_hbm"] = max(0, int((gpu_bytes - weights - tables) // per_token))
    out["max_kv_tokens_tables_on_host"] = max(0, int((gpu_bytes - weights) // per_token))
    return out


def kv_block_bytes(backbone: BackboneConfig, block_tokens: int, as_run: bool = False) -> int:
    return kv_cache_bytes(backbone, block_tokens, as_run)


def serving_kv_blocks(cfg: RunConfig, budget: MemoryBudget) -> int:
    """KV blocks a serving run has: workload.scheduler.kv_blocks if set, else (as nano-vLLM sizes them) the
    HBM usable times gpu_memory_utilization, less everything but the KV cache, in blocks."""
    s = cfg.workload.scheduler
    if s.kv_blocks > 0:
        return s.kv_blocks
    others = budget.hbm_needed_bytes - budget.kv_cache_bytes
    free = budget.hbm_usable_bytes * s.gpu_memory_utilization - others
    return max(0, int(free // kv_block_bytes(cfg.backbone, s.kv_block_tokens)))


# -- a server of several GPUs (sim.server) -------------------------------------------------------------

def kv_share(backbone: BackboneConfig, tensor_parallel: int) -> float:
    """Share of the KV cache one tensor-parallel rank holds: its KV heads (ceil(kv_heads / tp) of them); an MLA
    latent (attention.kv_cache_dim set) has no heads to split, so every rank holds it whole."""
    a = backbone.attention
    if a.kv_cache_dim is not None:
        return 1.0
    return -(-a.kv_heads // tensor_parallel) / a.kv_heads


def node_host_bytes(table_bytes: int, private_bytes: int, gpu_nodes: list[int], nodes: int,
                    deployment: DeploymentConfig) -> list[int]:
    """Host bytes each NUMA node holds. The table (table_bytes): a copy on each node with a GPU of the deployment
    (replicate, per_numa), one copy interleaved over all nodes (per_server), or each GPU's 1/g slice on its own
    node (shard); and each GPU's own host memory (private_bytes: ssd's DRAM cache and staging) on its node."""
    out = [0] * nodes
    d = deployment
    for node in gpu_nodes:
        out[node] += private_bytes
        if d.shard_size > 1:
            out[node] += -(-table_bytes // d.shard_size)
    if d.shard_size == 1:
        for node in range(nodes):
            if d.host_copies == "per_server":
                out[node] += -(-table_bytes // nodes)
            elif node in gpu_nodes:
                out[node] += table_bytes
    return out
