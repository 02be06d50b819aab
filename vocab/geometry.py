"""Table geometry: prime rows per head table (the rule in ENGRAM.md) and where each head starts.

One running set of used primes covers the whole model: walk the layers in the
order given, then orders 2..N, then heads. The first head of an order takes
the smallest unused prime >= the configured size for that order; each next
head takes the smallest unused prime greater than the one just taken.
"""

from __future__ import annotations

import numpy as np

# Deterministic Miller-Rabin bases: exact for every n < 3.3e24.
_MR_BASES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    for p in _MR_BASES:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for a in _MR_BASES:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def next_prime(n: int) -> int:
    """Smallest prime >= n."""
    n = max(n, 2)
    if n > 2 and n % 2 == 0:
        n += 1
    while not is_prime(n):
        n += 1 if n == 2 else 2
    return n


def engram_table_sizes(
    engram_vocab_size: list[int],
    max_ngram_size: int,
    n_head_per_ngram: int,
    layer_ids: list[int],
) -> dict[int, list[list[int]]]:
    """{layer_id: [[prime per head] per order 2..N]} following the global rule."""
    if len(engram_vocab_size) != max_ngram_size - 1:
        raise ValueError(
            f"engram_vocab_size has {len(engram_vocab_size)} entries; need max_ngram_size - 1 = {max_ngram_size - 1}"
        )
    used: set[int] = set()
    sizes: dict[int, list[list[int]]] = {}
    for layer in layer_ids:
        per_order = []
        for order_index in range(max_ngram_size - 1):
            heads = []
            candidate = engram_vocab_size[order_index]
            for _ in range(n_head_per_ngram):
                p = next_prime(candidate)
                while p in used:
                    p = next_prime(p + 1)
                used.add(p)
                heads.append(p)
                candidate = p + 1
            per_order.append(heads)
        sizes[layer] = per_order
    return sizes


def table_offsets(table_sizes_for_layer: list[list[int]]) -> np.ndarray:
    """First row of each head table inside the layer's one big table (same column order as the hashes)."""
    sizes = np.array([p for heads in table_sizes_for_layer for p in heads], dtype=np.int64)
    return np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)


# -- the table file of the ssd placement -------------------------------------------------------------
# Rows are packed whole into the drive's read blocks (a row never straddles two blocks, so one row costs
# one block read); a row larger than a block takes whole blocks of its own. Both the simulator and the
# real SSD store use this layout.

def ssd_rows_per_block(row_bytes: int, block_bytes: int) -> int:
    """Rows in one read block (at least 1: a larger row takes blocks_per_row blocks)."""
    return max(1, block_bytes // row_bytes)


def ssd_blocks_per_row(row_bytes: int, block_bytes: int) -> int:
    """Blocks one row's read covers (1 unless the row is larger than a block)."""
    return -(-row_bytes // block_bytes)


def ssd_file_bytes(rows: int, row_bytes: int, block_bytes: int) -> int:
    """Bytes of a table file of `rows` rows in this layout."""
    per = ssd_rows_per_block(row_bytes, block_bytes)
    return -(-rows // per) * ssd_blocks_per_row(row_bytes, block_bytes) * block_bytes


def ssd_row_offset(row, row_bytes: int, block_bytes: int):
    """Byte offset of row (an int or an int64 array) in the file; its block starts at
    offset - offset % block_bytes."""
    per = ssd_rows_per_block(row_bytes, block_bytes)
    span = ssd_blocks_per_row(row_bytes, block_bytes) * block_bytes
    return (row // per) * span + (row % per) * row_bytes


def expected_distinct_blocks(rows: float, blocks: float) -> float:
    """Distinct blocks that `rows` distinct rows spread uniformly over `blocks` blocks fall in
    (rows sharing a block share its read)."""
    if blocks <= 0 or rows <= 0:
        return 0.0
    # Each block is missed by all rows with probability (1 - 1/blocks)^rows.
    return float(blocks * -np.expm1(rows * np.log1p(-1.0 / blocks))) if blocks > 1 else 1.0
