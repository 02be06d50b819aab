"""Per-sequence lengths (prompt or starting context) from a LengthDistribution."""

from __future__ import annotations

import numpy as np

from vocab.config import LengthDistribution
from vocab.errors import ConfigError


def sample_lengths(dist: LengthDistribution, n: int, rng: np.random.Generator,
                   field: str = "workload.lengths") -> np.ndarray:
    """n lengths (int64), all within [low, high].

    uniform: integers low..high inclusive; fixed: low; normal: mean, std;
    lognormal: a lognormal whose own mean and std (of the lengths, not of their
    log) are mean and std. normal and lognormal are rounded and clipped to [low, high].
    """
    if dist.dist == "uniform":
        return rng.integers(dist.low, dist.high + 1, size=n, dtype=np.int64)
    if dist.dist == "fixed":
        return np.full(n, dist.low, dtype=np.int64)
    if dist.mean <= 0 or dist.std < 0:
        raise ConfigError(f"{field}.mean", f"{dist.dist} needs mean > 0 and std >= 0 (got mean={dist.mean}, "
                          f"std={dist.std})", f"set mean and std, e.g. mean = {(dist.low + dist.high) // 2}")
    if dist.dist == "normal":
        draws = rng.normal(dist.mean, dist.std, size=n)
    else:
        sigma2 = np.log1p((dist.std / dist.mean) ** 2)
        draws = rng.lognormal(np.log(dist.mean) - sigma2 / 2, np.sqrt(sigma2), size=n)
    return np.clip(np.rint(draws), dist.low, dist.high).astype(np.int64)
