"""GPU compute time per layer: a roofline of FLOPs and bytes.

Each operation takes max(FLOPs / achieved matrix rate, bytes / achieved HBM
rate). The achieved rates depend on the operation's shape where the profile
has curves for them: the matrix rate on the GEMM's rows (the step's tokens),
the memory rate on the bytes the kernel moves; else one efficiency each. A
layer adds the cost of launching its kernels: each kernel's launch (eager) or
the gap between kernels inside a CUDA graph. Weights are read once per step
(all tokens of the step share them); MoE reads only the experts that some
token of the step routes to (in expectation).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import asdict, astuple, dataclass
from itertools import pairwise

import numpy as np

from profiles import HardwareProfile
from sim.costs import hbm_gather_time, interp_curve
from sim.placements import Placement, placement_for
from vocab.config import RunConfig
from vocab.units import DTYPE_BYTES

# Kernels the Engram module launches (gather, projections, norms, gating, residual).
ENGRAM_KERNELS = 8


@dataclass
class StepShape:
    """What one step asks of the GPU."""
    tokens: int                 # new tokens processed
    attn_context_sum: float     # decode: sum of contexts; prefill: causal (query, key) pairs
    sequences: int              # sequences with a token in the step (logits computed for each)
    lookups: int                # Engram rows read per Engram layer (tokens * tables per layer)
    # Serving: keys attention reads from the KV cache (None: the phase's rule), and the CUDA graph's batch a
    # decode step is padded to (its GEMMs and logits run that many rows; 0: no padding).
    kv_read_tokens: float | None = None
    graph_batch: int = 0

    @property
    def rows(self) -> int:
        """Rows the step's GEMMs run: its tokens, or the captured graph's batch it is padded to."""
        return max(self.tokens, self.graph_batch)

    @property
    def logits(self) -> int:
        return max(self.sequences, self.graph_batch)


def matmul_fraction(profile: HardwareProfile, rows: float) -> float:
    """Achieved fraction of the bf16 matrix rate for a GEMM of `rows` rows."""
    g = profile.gpu
    return interp_curve(g.matmul_curve, rows) if g.matmul_curve else g.matmul_efficiency


def memory_fraction(profile: HardwareProfile, nbytes: float) -> float:
    """Achieved fraction of the HBM rate for a kernel that moves `nbytes`."""
    g = profile.gpu
    return interp_curve(g.memory_curve, nbytes) if g.memory_curve else g.memory_efficiency


def _op(profile: HardwareProfile, flops: float, nbytes: float, rows: float) -> float:
    g = profile.gpu
    return max(flops / (g.bf16_tflops * 1e12 * matmul_fraction(profile, rows)),
               nbytes / (g.hbm_gbps * 1e9 * memory_fraction(profile, nbytes)))


def launch_time(cfg: RunConfig, profile: HardwareProfile, kernels: int) -> float:
    """GPU time `kernels` kernels add beyond their work: launches (eager) or gaps inside a CUDA graph."""
    g = profile.gpu
    per_kernel = g.graph_kernel_gap_us if cfg.workload.launch == "cuda_graphs" else g.kernel_launch_us
    return per_kernel * 1e-6 * kernels


def layer_times(cfg: RunConfig, profile: HardwareProfile, shape: StepShape,
                placement: Placement | None = None) -> np.ndarray:
    """Seconds of compute per backbone layer (Engram module included where it sits, if the placement has one)."""
    b = cfg.backbone
    a = b.attention
    dt = DTYPE_BYTES[b.dtype]
    h = b.hidden_size
    t = shape.rows
    launch = launch_time(cfg, profile, profile.gpu.kernels_per_layer)

    attn_w = h * (2 * a.heads * a.head_dim + 2 * a.kv_heads * a.head_dim)
    kv_read = shape.kv_read_tokens
    if kv_read is None:
        kv_read = shape.attn_context_sum if cfg.workload.phase == "decode" else t
    attention = (_op(profile, 2 * t * attn_w, attn_w * dt + 4 * t * h * dt, t)
                 + _op(profile, 4 * a.heads * a.head_dim * shape.attn_context_sum, kv_read * a.cache_dim * dt, t))

    dense_w = 3 * h * b.intermediate_size
    dense_ffn = _op(profile, 2 * t * dense_w, dense_w * dt + 2 * t * h * dt, t)
    moe_ffn = 0.0
    if b.moe is not None:
        m = b.moe
        expert_w = 3 * h * m.expert_intermediate_size
        # Expected experts that at least one of the step's tokens routes to.
        active = m.routed_experts * (1.0 - (1.0 - m.top_k / m.routed_experts) ** t)
        # Each expert's GEMM sees its share of the tokens.
        moe_ffn = _op(profile, 2 * t * (m.shared_experts + m.top_k) * expert_w,
                      (m.shared_experts + active) * expert_w * dt + 2 * t * h * dt,
                      t * (m.shared_experts + m.top_k) / max(m.shared_experts + active, 1.0))

    times = np.array([attention + (dense_ffn if b.is_dense(i) else moe_ffn) + launch for i in range(b.layers)])
    for layer in (placement or placement_for(cfg)).layer_ids:
        times[layer] += engram_module_time(cfg, profile, shape)
    return times


def engram_module_time(cfg: RunConfig, profile: HardwareProfile, shape: StepShape) -> float:
    """The Engram module's own GPU work: row gather from HBM, gating, value, conv."""
    e = cfg.engram
    h = cfg.backbone.hidden_size
    dt = DTYPE_BYTES[cfg.backbone.dtype]
    t = shape.rows
    # W_K per branch and the shared W_V project d_mem -> hidden.
    w = e.d_mem * h * (e.branches + 1)
    # Every placement runs one index_select of the step's lookups in HBM on the compute stream: hbm from the
    # table, the host paths and ssd from the rows landed (real_runs/stores.py, each store's _finish).
    gather = hbm_gather_time(profile, shape.lookups, e.row_bytes)
    proj = _op(profile, 2 * t * w, w * dt + t * (e.d_mem + 6 * h * e.branches) * dt, t)
    return gather + proj + launch_time(cfg, profile, ENGRAM_KERNELS)


def lm_head_time(cfg: RunConfig, profile: HardwareProfile, shape: StepShape) -> float:
    b = cfg.backbone
    if not b.lm_head:
        return 0.0
    w = b.hidden_size * b.vocab_size
    return _op(profile, 2 * shape.logits * w, w * DTYPE_BYTES[b.dtype], shape.logits)


def compute_key(cfg: RunConfig, profile: HardwareProfile, placement: Placement) -> str:
    """Everything layer_times, engram_module_time and lm_head_time read but the step's shape: runs that share
    it (a sweep's table sizes and placements with Engram layers in the same places, a plan's baselines) share
    their steps' compute."""
    e = cfg.engram
    return json.dumps([asdict(cfg.backbone), cfg.workload.phase, cfg.workload.launch, e.d_mem, e.branches,
                       e.row_bytes, asdict(profile.gpu), list(placement.layer_ids)], sort_keys=True)


_SEGMENTS: OrderedDict[tuple, np.ndarray] = OrderedDict()
_SEGMENTS_SIZE = 1 << 14  # steps (a few hundred bytes each)


def compute_segments(cfg: RunConfig, profile: HardwareProfile, shape: StepShape, placement: Placement,
                     key: str | None = None) -> np.ndarray:
    """Seconds of compute before the first Engram layer, between them and after the last (the LM head
    included); with key (compute_key), memoised: a copy of the first answer for the same key and shape."""
    memo = (key, astuple(shape)) if key is not None else None
    if memo in _SEGMENTS:
        _SEGMENTS.move_to_end(memo)
        return _SEGMENTS[memo].copy()
    times = layer_times(cfg, profile, shape, placement)
    bounds = [0, *placement.layer_ids, len(times)]
    segments = np.array([times[a:b].sum() for a, b in pairwise(bounds)])
    segments[-1] += lm_head_time(cfg, profile, shape)
    if memo is not None:
        _SEGMENTS[memo] = segments.copy()
        if len(_SEGMENTS) > _SEGMENTS_SIZE:
            _SEGMENTS.popitem(last=False)
    return segments
