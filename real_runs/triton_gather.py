"""The Triton kernel behind real_runs/cuda_gather.py (imported only where Triton is installed).

Kept in its own module so the kernel is a plain module-level function: Triton
compiles it from this file's source and globals, and the Triton interpreter
(TRITON_INTERPRET=1) can run the very same function on the CPU for tests.
"""

import triton
import triton.language as tl

# n_rows changes every step (the step's unique rows or cache misses): left unspecialised, Triton would
# compile one variant for n % 16 == 0 and one for n == 1, inside timed steps.
JIT_OPTIONS = dict(do_not_specialize=["n_rows"])


@triton.jit(**JIT_OPTIONS)
def uva_gather_kernel(table_ptr, idx_ptr, out_ptr, n_rows, ROW_WORDS: tl.constexpr, VEC: tl.constexpr,
                      BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    """out[r, :] = table[idx[r], :]; rows are ROW_WORDS int32 words, read BLOCK_ROWS rows at a time.

    Program p reads row blocks p, p + grid, p + 2 grid, ...: with one program per block (the default
    grid) that is block p alone; a smaller (persistent) grid loops, holding fewer of the GPU's block slots."""
    cols = tl.max_contiguous(tl.multiple_of(tl.arange(0, BLOCK_COLS), VEC), VEC)
    blocks = (n_rows + BLOCK_ROWS - 1) // BLOCK_ROWS
    for block in range(tl.program_id(0), blocks, tl.num_programs(0)):
        rows = block * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        row_ok = rows < n_rows
        # int64 offsets: a 64 GiB table has more than 2^31 words
        src = tl.load(idx_ptr + rows, mask=row_ok, other=0).to(tl.int64)
        mask = row_ok[:, None] & (cols[None, :] < ROW_WORDS)
        # VEC words in a row are contiguous and the row starts VEC-aligned: 16-byte loads when VEC == 4
        src_off = tl.multiple_of(src * ROW_WORDS, VEC)
        dst_off = tl.multiple_of(rows.to(tl.int64) * ROW_WORDS, VEC)
        vals = tl.load(table_ptr + src_off[:, None] + cols[None, :], mask=mask, other=0)
        tl.store(out_ptr + dst_off[:, None] + cols[None, :], vals, mask=mask)
