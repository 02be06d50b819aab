"""The shapes calibrate times its kernels at: Engram-27B's, read from its preset (vocab/presets/engram-27b.toml).

The hashing runs with the preset's Engram configuration; the GEMMs and attention are those of one
16K-token prefill chunk (the preset's tokens_per_step) and of a decode step of its 512 sequences.
The compute-rate ladders take the (K, N) of its attention and dense-FFN GEMMs at every row count, and
its attention dims over a ladder of KV caches; the contention probe runs its dense layer in decode.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from vocab.config import EngramConfig, RunConfig, load_config

PRESET = "engram-27b"

# Decode attention is timed on a KV cache of this many sequences x context tokens: a read large enough
# to stream at HBM speed (the preset's own lengths are a distribution, not one shape).
DECODE_BATCH = 64
DECODE_CONTEXT = 2048
# Rows per routed expert are rounded up to a multiple of this (a GEMM tile), as a balanced router gives.
EXPERT_ROWS_MULTIPLE = 64
# The contention probe's decode layer attends over a KV cache of this many tokens per sequence: enough
# that attention is a real part of the layer, small enough that 512 sequences fit beside a pinned table.
CONTENTION_CONTEXT = 256
# ... and overlaps zero-copy gathers from a table of this size (the end-to-end experiment's smallest).
CONTENTION_TABLE_GIB = 4


@dataclass(frozen=True)
class Shapes:
    preset: str
    engram: EngramConfig                     # the hashing configuration
    layer_gemms: dict                        # name -> (M, K, N)
    moe_experts: dict                        # tokens, hidden, routed, top_k, inter
    prefill_attention: dict                  # tokens, heads, head_dim
    decode_attention: dict                   # batch, heads, kv_heads, head_dim, context
    decode_gemm: tuple                       # (M, K, N) of the decode qkv projection
    ladder_gemms: dict                       # name -> (K, N): a layer's GEMMs, timed at every row count
    contention: dict                         # layer, batch, context, row_bytes, table_gib


def shapes_from(cfg: RunConfig) -> Shapes:
    """The measured shapes of a configuration with an MoE backbone."""
    b, att, moe = cfg.backbone, cfg.backbone.attention, cfg.backbone.moe
    tokens = cfg.workload.tokens_per_step                      # one chunked-prefill pass
    qkv = 3 * att.heads * att.head_dim
    rows = tokens * moe.top_k
    expert_rows = -(-rows // (moe.routed_experts * EXPERT_ROWS_MULTIPLE)) * EXPERT_ROWS_MULTIPLE
    inter = moe.expert_intermediate_size
    dense = b.dense_layers[0] if b.dense_layers else 0
    return Shapes(
        preset=cfg.name,
        engram=cfg.engram,
        layer_gemms={
            "attention qkv": (tokens, b.hidden_size, qkv),
            "attention out": (tokens, att.heads * att.head_dim, b.hidden_size),
            "moe expert gate+up": (expert_rows, b.hidden_size, 2 * inter),
            "moe expert down": (expert_rows, inter, b.hidden_size),
        },
        moe_experts=dict(tokens=tokens, hidden=b.hidden_size, routed=moe.routed_experts, top_k=moe.top_k,
                         inter=inter),
        prefill_attention=dict(tokens=tokens, heads=att.heads, head_dim=att.head_dim),
        decode_attention=dict(batch=DECODE_BATCH, heads=att.heads, kv_heads=att.kv_heads, head_dim=att.head_dim,
                              context=DECODE_CONTEXT),
        # The qkv projection of all the decode sequences: it reads its weights once (memory-bound).
        decode_gemm=(cfg.workload.sequences, b.hidden_size, qkv),
        ladder_gemms={
            "attention qkv": (b.hidden_size, qkv),
            "attention out": (att.heads * att.head_dim, b.hidden_size),
            "dense ffn gate+up": (b.hidden_size, 2 * b.intermediate_size),
            "dense ffn down": (b.intermediate_size, b.hidden_size),
        },
        contention=dict(layer=dense, batch=cfg.workload.sequences, context=CONTENTION_CONTEXT,
                        row_bytes=cfg.engram.row_bytes, table_gib=CONTENTION_TABLE_GIB),
    )


@functools.cache
def preset_shapes(name: str = PRESET) -> Shapes:
    return shapes_from(load_config(name))
