"""Zero-copy (UVA) gather of table rows from pinned host memory by a GPU kernel (Triton).

The table is host memory registered with cudaHostRegister (real_runs/stores.py):
the kernel dereferences it through its device pointer, so each row crosses
PCIe as the kernel reads it, with no staging and no copy call. Indices are the
step's deduplicated, sorted row ids (sorted ids keep neighbouring reads on the
same pages, which is what the address translation needs; see
shared/reference/H100.md). Rows are read as int32 words in 2-D blocks
[BLOCK_ROWS, BLOCK_COLS]; when a row is a multiple of 16 bytes the compiler is
told so and emits 16-byte vector loads. The grid is one program per BLOCK_ROWS
rows (it grows with the step), or with `ctas` a bounded, persistent grid whose
programs loop over the row blocks (placement.uva_ctas): a slower gather that
leaves more of the GPU's block slots to the layers it overlaps.

Importable without CUDA or Triton: everything that needs them is imported on
first use, and `uva_gather` raises RuntimeError("host_uva needs a CUDA GPU ...")
where there is none. With TRITON_INTERPRET=1 the same kernel runs on the CPU in
Triton's interpreter: that is how the tests check it on machines without a GPU.
"""

from __future__ import annotations

import os

UVA_NEEDS_GPU = "host_uva needs a CUDA GPU"


def uva_unavailable_reason() -> str | None:
    """None when the UVA gather can run here, else why not.

    With TRITON_INTERPRET=1 the kernel runs in Triton's interpreter on the CPU (slowly: for tests and
    tiny runs), reading the host table directly; then only Triton is needed."""
    try:
        import torch  # optional heavy dependency: its absence is one of the answers
    except ImportError:
        return f"{UVA_NEEDS_GPU} (PyTorch is not installed)"
    if not interpreting() and not torch.cuda.is_available():
        return f"{UVA_NEEDS_GPU} (torch.cuda.is_available() is False; TRITON_INTERPRET=1 runs it on the CPU)"
    try:
        import triton  # noqa: F401  (optional heavy dependency: its absence is one of the answers)
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


def interpreting() -> bool:
    """True when TRITON_INTERPRET=1: the kernel then runs in Triton's interpreter, on the CPU."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_kernels: dict = {}


def _kernel():
    """The kernel, compiled for the GPU or wrapped for the interpreter, whichever TRITON_INTERPRET asks now
    (Triton decides at import; tests switch it after)."""
    interp = interpreting()
    if interp not in _kernels:
        from real_runs import triton_gather  # imports triton, an optional heavy dependency

        k = triton_gather.uva_gather_kernel
        if interp != (type(k).__name__ == "InterpretedFunction"):
            if interp:
                from triton.runtime.interpreter import InterpretedFunction  # triton: optional, heavy
                k = InterpretedFunction(k.fn, **triton_gather.JIT_OPTIONS)
            else:
                import triton  # optional heavy dependency
                k = triton.jit(k.fn, **triton_gather.JIT_OPTIONS)
        _kernels[interp] = k
    return _kernels[interp]


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def block_shape(row_bytes: int) -> tuple[int, int, int, int]:
    """(row words, vector words, BLOCK_COLS, BLOCK_ROWS) of the kernel for rows of `row_bytes`."""
    words = row_bytes // 4
    vec = 4 if words % 4 == 0 else (2 if words % 2 == 0 else 1)
    block_cols = _pow2(words)
    return words, vec, block_cols, max(1, min(256, 4096 // block_cols))


def gather_grid(rows: int, row_bytes: int, ctas: int | None = None) -> int:
    """Programs the kernel launches for `rows` rows: one per BLOCK_ROWS rows, at most `ctas` when given."""
    blocks = -(-rows // block_shape(row_bytes)[3])
    return blocks if ctas is None else min(int(ctas), blocks)


def uva_gather(table, row_bytes: int, idx, out, ctas: int | None = None) -> None:
    """out[i] = row idx[i] of the host table, on the current CUDA stream.

    table: a real_runs.stores.HostTable, registered (pinned) on a GPU; its memory is read as rows of
    `row_bytes` (which may differ from the table's own row size: benchmarks view one table at several).
    idx: int64 tensor [n] of row ids, bounds-checked by the caller; out: contiguous tensor holding
    n * row_bytes bytes. Both on the GPU, or both on the CPU under TRITON_INTERPRET=1.
    ctas: None launches one program per BLOCK_ROWS rows; a number bounds the grid at that many programs,
    each looping over its share of the row blocks (the same rows out).
    """
    reason = uva_unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    # Optional heavy dependencies, present once uva_unavailable_reason() says so; this module imports without them.
    import torch

    if row_bytes % 4:
        raise ValueError(f"UVA gather reads 4-byte words; row of {row_bytes} B is not a multiple of 4")
    if ctas is not None and int(ctas) < 1:
        raise ValueError(f"ctas must be None or >= 1 (got {ctas})")
    n = idx.numel()
    if out.numel() * out.element_size() != n * row_bytes or not out.is_contiguous():
        raise ValueError(f"out must be contiguous with {n} x {row_bytes} bytes")
    if idx.dtype != torch.int64 or not idx.is_contiguous() or idx.device != out.device:
        raise ValueError(f"idx must be a contiguous int64 tensor on {out.device} (got {idx.dtype} on {idx.device})")
    if interpreting():
        if out.is_cuda:
            raise ValueError("under TRITON_INTERPRET=1 the UVA gather runs on CPU tensors")
        # the interpreter reads tensors, not raw device pointers: hand it the table's memory as a tensor
        src = torch.from_numpy(table.bytes.reshape(-1)).view(torch.int32)
    else:
        if not (out.is_cuda and getattr(table, "pinned", False)):
            raise ValueError("the UVA gather needs CUDA tensors and a pinned (registered) host table")
        src = HostPointer(table.ptr, torch.int32)
    if n == 0:
        return
    words, vec, block_cols, block_rows = block_shape(row_bytes)
    grid = (gather_grid(n, row_bytes, ctas),)
    _kernel()[grid](src, idx, out.view(torch.int32), n, ROW_WORDS=words, VEC=vec, BLOCK_ROWS=block_rows,
                    BLOCK_COLS=block_cols, num_warps=4)
