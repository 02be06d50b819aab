"""Zero-copy (UVA) gather of table rows from pinned host memory by a GPU kernel (Triton).

The table is host memory registered with cudaHostRegister (real_runs/stores.py):
the kernel dereferences it through its device pointer, so each row crosses
PCIe as the kernel reads it, with no staging and no copy call. Indices are the
step's deduplicated, sorted row ids (sorted ids keep neighbouring reads on the
same pages, which is what the address translation needs; see
shared/reference/H100.md). Rows are read as int32 words in 2-D blocks
[BLOCK_ROWS, BLOCK_COLS]; when a row is a multiple of 16 bytes the compiler is
told so and emits 16-byte vector loads.

Importable without CUDA or Triton: everything that needs them is imported on
first use, and `uva_gather` raises RuntimeError("host_uva needs a CUDA GPU ...")
where there is none.
"""

from __future__ import annotations

import functools

UVA_NEEDS_GPU = "host_uva needs a CUDA GPU"


def uva_unavailable_reason() -> str | None:
    """None when the UVA gather can run here, else why not."""
    try:
        import torch
    except ImportError:
        return f"{UVA_NEEDS_GPU} (PyTorch is not installed)"
    if not torch.cuda.is_available():
        return f"{UVA_NEEDS_GPU} (torch.cuda.is_available() is False)"
    try:
        import triton  # noqa: F401
    except ImportError:
        return f"{UVA_NEEDS_GPU} and Triton (pip install triton)"
    return None


class HostPointer:
    """What Triton needs of a pointer argument: data_ptr() and dtype. Triton maps a registered host
    pointer to its device pointer itself (cuPointerGetAttribute), and refuses one that is not registered."""

    def __init__(self, ptr: int, dtype):
        self._ptr = int(ptr)
        self.dtype = dtype

    def data_ptr(self) -> int:
        return self._ptr


@functools.lru_cache(maxsize=1)
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def uva_gather_kernel(table_ptr, idx_ptr, out_ptr, n_rows, ROW_WORDS: tl.constexpr, VEC: tl.constexpr,
                          BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
        pid = tl.program_id(0)
        rows = pid * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        row_ok = rows < n_rows
        src = tl.load(idx_ptr + rows, mask=row_ok, other=0).to(tl.int64)
        cols = tl.max_contiguous(tl.multiple_of(tl.arange(0, BLOCK_COLS), VEC), VEC)
        mask = row_ok[:, None] & (cols[None, :] < ROW_WORDS)
        src_off = tl.multiple_of(src * ROW_WORDS, VEC)
        dst_off = tl.multiple_of(rows.to(tl.int64) * ROW_WORDS, VEC)
        vals = tl.load(table_ptr + src_off[:, None] + cols[None, :], mask=mask, other=0)
        tl.store(out_ptr + dst_off[:, None] + cols[None, :], vals, mask=mask)

    return uva_gather_kernel


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def uva_gather(table_ptr: int, row_bytes: int, idx, out) -> None:
    """out[i] = table[idx[i]] for a host table at `table_ptr` (registered), on the current CUDA stream.

    idx: int64 CUDA tensor [n] of row ids (bounds-checked by the caller); out: contiguous CUDA tensor
    holding n * row_bytes bytes.
    """
    reason = uva_unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    import torch
    import triton

    if row_bytes % 4:
        raise ValueError(f"UVA gather reads 4-byte words; row of {row_bytes} B is not a multiple of 4")
    n = idx.numel()
    if out.numel() * out.element_size() != n * row_bytes or not out.is_contiguous():
        raise ValueError(f"out must be contiguous with {n} x {row_bytes} bytes")
    if n == 0:
        return
    words = row_bytes // 4
    vec = 4 if words % 4 == 0 else (2 if words % 2 == 0 else 1)
    block_cols = _pow2(words)
    block_rows = max(1, min(256, 4096 // block_cols))
    grid = (triton.cdiv(n, block_rows),)
    _kernel()[grid](HostPointer(table_ptr, torch.int32), idx, out.view(torch.int32), n, ROW_WORDS=words,
                    VEC=vec, BLOCK_ROWS=block_rows, BLOCK_COLS=block_cols, num_warps=4)
