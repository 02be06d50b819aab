"""Exact `x % p` for the hashing kernels, without a 64-bit integer division.

A 64-bit `idiv` costs tens of cycles and does not vectorise; the N-gram hash
takes one modulo per head per token, so it dominated the Numba kernels. Here
the quotient comes from a double-precision multiply by 1/p and is then
corrected: for 0 <= x < 2**63 the float quotient is within 3 * 2**10 / p of
x / p (rounding of x, of 1/p and of the product), so for p >= FAST_MOD_MIN_P
it is off by at most one, and one compare-and-add makes the remainder exact.
Smaller p (toy tables only) take the plain `%`. tests/test_hashing.py checks
it against Python's `%` at the extremes.
"""

from __future__ import annotations

import numpy as np
from numba import njit

FAST_MOD_MIN_P = 1 << 13


@njit(inline="always", nogil=True)
def mod_prime(x, p, inv_p):
    """x % p for 0 <= x < 2**63 and p >= 1, where inv_p = 1.0 / p (float64)."""
    if p < FAST_MOD_MIN_P:
        return x % p
    q = np.int64(np.float64(x) * inv_p)    # x >= 0: truncation is floor
    r = x - q * p                           # exact: wraps, but the true value is in [-p, 2p)
    if r < 0:
        r += p
    elif r >= p:
        r -= p
    return r
