"""Fast Engram N-gram hashing on CPU threads (Numba), with the official rule.

`NgramHasher.hash` is the kernel a serving engine would run on its hashing
threads; `hash_reference` is the NumPy reference (workloads/hashing.py) it
must match bit for bit.
"""

from __future__ import annotations

import time

import numba
import numpy as np
from numba import njit, prange

from vocab.geometry import engram_table_sizes
from workloads.fastmod import mod_prime
from workloads.hashing import hash_layer, layer_multipliers


@njit(parallel=True, cache=True, nogil=True)
def _hash_kernel(ids, multipliers, primes, pad_id, out):
    """out[b, t, o*H + j] = mix_o(b, t) % primes[o, j]; one independent task per token (workloads/fastmod.py
    does the modulo without a division)."""
    batch, length = ids.shape
    n_orders, n_heads = primes.shape
    inv = 1.0 / primes.astype(np.float64)
    for flat in prange(batch * length):
        b = flat // length
        t = flat - b * length
        mix = ids[b, t] * multipliers[0]   # the multipliers keep every product, so the mix, in [0, 2^63)
        for o in range(n_orders):
            k = o + 1  # order o + 2 adds the token k positions back
            prev = ids[b, t - k] if t >= k else pad_id
            mix ^= prev * multipliers[k]
            for j in range(n_heads):
                out[b, t, o * n_heads + j] = mod_prime(mix, primes[o, j], inv[o, j])


def as_id_array(compressed_ids, vocab_size: int) -> np.ndarray:
    """Check ids are a 2-D integer array with values in [0, vocab_size); return it as int64."""
    arr = np.asarray(compressed_ids)
    if arr.ndim != 2:
        raise ValueError(f"compressed_ids must be 2-D [batch, tokens], got shape {arr.shape}")
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iub":
        raise ValueError(f"compressed_ids must be integers, got dtype {arr.dtype}")
    if arr.size:
        # Compare before casting so uint64 values above int64 max are caught, not wrapped.
        bad = (arr < 0) | (arr >= vocab_size)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"compressed id {arr[where]} at {list(where)} is outside [0, {vocab_size}) "
                "(compressed_vocab_size)"
            )
    return np.ascontiguousarray(arr, dtype=np.int64)


class NgramHasher:
    """The official Engram hashing for a set of layers (ENGRAM.md, point 2)."""

    def __init__(
        self,
        engram_vocab_size: list[int],
        max_ngram_size: int,
        n_head_per_ngram: int,
        layer_ids: list[int],
        compressed_vocab_size: int,
        compressed_pad_id: int,
        seed: int = 0,
        threads: int | None = None,  # Numba threads for `hash`; None: Numba's current setting
    ):
        if max_ngram_size < 2:
            raise ValueError(f"max_ngram_size must be >= 2, got {max_ngram_size}")
        if not 0 <= compressed_pad_id < compressed_vocab_size:
            raise ValueError(f"compressed_pad_id {compressed_pad_id} is outside [0, {compressed_vocab_size})")
        self.max_ngram_size = max_ngram_size
        self.n_head_per_ngram = n_head_per_ngram
        self.layer_ids = list(layer_ids)
        self.compressed_vocab_size = compressed_vocab_size
        self.compressed_pad_id = compressed_pad_id
        self.seed = seed
        self.threads = threads
        self._scratch: dict[tuple, np.ndarray] = {}   # hash_scratch's buffers, by shape
        self._sizes = engram_table_sizes(list(engram_vocab_size), max_ngram_size, n_head_per_ngram, self.layer_ids)
        self._multipliers = {
            layer: layer_multipliers(seed, layer, max_ngram_size, compressed_vocab_size) for layer in self.layer_ids
        }

    @classmethod
    def from_config(cls, engram, threads: int | None = None) -> "NgramHasher":
        """Build from a vocab.config.EngramConfig."""
        return cls(engram.configured_rows_per_order(), engram.max_ngram_size, engram.heads_per_order,
                   engram.layer_ids, engram.compressed_vocab_size, engram.compressed_pad_id, engram.seed, threads)

    def _check_layer(self, layer_id: int) -> None:
        if layer_id not in self._sizes:
            raise ValueError(f"unknown layer_id {layer_id}; this hasher has layers {self.layer_ids}")

    def table_sizes(self, layer_id: int) -> list[list[int]]:
        self._check_layer(layer_id)
        return [list(heads) for heads in self._sizes[layer_id]]

    def multipliers(self, layer_id: int) -> np.ndarray:
        self._check_layer(layer_id)
        return self._multipliers[layer_id].copy()

    def hash(self, compressed_ids, layer_id: int, out: np.ndarray | None = None) -> np.ndarray:
        """Row ids [B, T, (N-1)*H] within each head table, by the Numba kernel.

        out: an int64 array of that shape to write into (a serving loop reuses one: fresh memory costs a
        page fault per 4 KiB on first touch, which on a VM can take longer than the hashing itself)."""
        self._check_layer(layer_id)
        ids = as_id_array(compressed_ids, self.compressed_vocab_size)
        primes = np.array(self._sizes[layer_id], dtype=np.int64)
        shape = (*ids.shape, primes.size)
        if out is None:
            out = np.empty(shape, dtype=np.int64)
        elif out.shape != shape or out.dtype != np.int64 or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous int64 array of shape {shape}, got {out.dtype} {out.shape}")
        if ids.size:
            before = numba.get_num_threads()
            numba.set_num_threads(self.threads or before)
            try:
                _hash_kernel(ids, self._multipliers[layer_id], primes, np.int64(self.compressed_pad_id), out)
            finally:
                numba.set_num_threads(before)  # the thread count is process-wide; leave it as found
        return out

    def hash_scratch(self, compressed_ids, layer_id: int) -> np.ndarray:
        """hash() into a buffer this hasher keeps for that shape: valid until its next call of the same shape
        (for callers that pick rows out of it at once, as step_rows does; no fresh memory to fault in)."""
        self._check_layer(layer_id)
        shape = (*np.shape(compressed_ids), np.array(self._sizes[layer_id]).size)
        out = self._scratch.get(shape)
        if out is None:
            out = self._scratch[shape] = np.empty(shape, dtype=np.int64)
        return self.hash(compressed_ids, layer_id, out=out)

    def hash_reference(self, compressed_ids, layer_id: int) -> np.ndarray:
        """The same row ids by the NumPy reference."""
        self._check_layer(layer_id)
        ids = as_id_array(compressed_ids, self.compressed_vocab_size)
        return hash_layer(ids, self._multipliers[layer_id], self._sizes[layer_id], self.max_ngram_size,
                          self.compressed_pad_id)


def bench_hashing(tokens: int = 1 << 20, threads: int | None = None, batch: int = 64, repeats: int = 3) -> dict:
    """Tokens/s of the Numba kernel (into a reused output, and into fresh memory) and of the NumPy reference
    on the demo configuration (best of `repeats`)."""
    hasher = NgramHasher([646400, 646400], 3, 8, [1, 15], 99092, 2, seed=0, threads=threads)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 99092, size=(batch, max(1, tokens // batch)), dtype=np.int64)
    hasher.hash(ids[:, :8], 1)  # compile (or load from cache) outside the timing
    out = hasher.hash(ids, 1)   # the output buffer a serving loop would reuse, already touched
    result = {"tokens": ids.size, "threads": threads or numba.get_num_threads()}
    runs = (("numba", lambda: hasher.hash(ids, 1, out=out)), ("numba_fresh_output", lambda: hasher.hash(ids, 1)),
            ("numpy", lambda: hasher.hash_reference(ids, 1)))
    for name, fn in runs:
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        result[f"{name}_tokens_per_s"] = ids.size / best
    return result
