"""NumPy reference of the official Engram N-gram hashing (ENGRAM.md, point 2).

This is the slow, obviously-correct version. The fast Numba kernel in
real_runs/hashing.py and the trace builder must agree with it bit for bit.
"""

from __future__ import annotations

import numpy as np

INT64_MAX = np.iinfo(np.int64).max


def layer_multipliers(seed: int, layer_id: int, max_ngram_size: int, compressed_vocab_size: int) -> np.ndarray:
    """Odd int64 multipliers, one per shift k = 0..max_ngram_size-1.

    The bound keeps every product id * m below int64 max, so the mix never overflows.
    """
    rng = np.random.default_rng(seed + 10007 * layer_id)
    half_bound = max(1, (INT64_MAX // compressed_vocab_size) // 2)
    r = rng.integers(0, half_bound, size=max_ngram_size, dtype=np.int64)
    return 2 * r + 1


def shifted(ids: np.ndarray, k: int, pad_id: int) -> np.ndarray:
    """ids shifted right by k positions along T, left-padded with pad_id."""
    if k == 0:
        return ids
    out = np.full_like(ids, pad_id)
    if k < ids.shape[1]:
        out[:, k:] = ids[:, :-k]
    return out


def hash_layer(
    compressed_ids: np.ndarray,
    multipliers: np.ndarray,
    table_sizes_for_layer: list[list[int]],
    max_ngram_size: int,
    pad_id: int,
) -> np.ndarray:
    """Row ids [B, T, (N-1)*H], each within its own head table (0..p-1).

    Columns: order 2 heads 0..H-1, then order 3 heads 0..H-1, and so on.
    """
    ids = np.asarray(compressed_ids, dtype=np.int64)
    m = np.asarray(multipliers, dtype=np.int64)
    batch, length = ids.shape
    n_heads = len(table_sizes_for_layer[0])
    out = np.empty((batch, length, (max_ngram_size - 1) * n_heads), dtype=np.int64)
    mix = ids * m[0]
    for n in range(2, max_ngram_size + 1):
        # Order n extends order n-1's mix by one more shifted term.
        mix = mix ^ (shifted(ids, n - 1, pad_id) * m[n - 1])
        for j, p in enumerate(table_sizes_for_layer[n - 2]):
            out[:, :, (n - 2) * n_heads + j] = mix % p
    return out
