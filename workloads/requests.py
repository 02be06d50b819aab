"""Per-sequence lengths (prompt or starting context) from a LengthDistribution, and a serving workload's
requests (arrival times, prompt and output lengths, tokens)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from vocab.config import LengthDistribution, RunConfig
from vocab.errors import ConfigError
from workloads.tokens import make_token_source


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


@dataclass(frozen=True)
class Requests:
    """A serving workload's requests, in arrival order; each request's tokens, prompt then output, are drawn
    up front so that the simulator and the real runs see the very same tokens (outputs are teacher-forced)."""
    arrival_s: np.ndarray   # [R] seconds from the run's start
    prompt: np.ndarray      # [R] prompt tokens
    output: np.ndarray      # [R] output tokens (forced: no request ends early)
    tokens: np.ndarray      # flat: request r's prompt then output tokens are tokens[offsets[r]:offsets[r + 1]]
    offsets: np.ndarray     # [R + 1]

    @property
    def count(self) -> int:
        return self.prompt.size

    @property
    def output_tokens(self) -> int:
        return int(self.output.sum())


TRACE_COLUMNS = ("arrival_s", "prompt_tokens", "output_tokens")


def read_request_trace(path: str, count: int, field: str = "workload.requests.path") -> pd.DataFrame:
    """The first `count` rows of a CSV request trace (columns TRACE_COLUMNS), sorted by arrival."""
    try:
        df = pd.read_csv(path)
    except FileNotFoundError:
        raise ConfigError(field, f"{path} does not exist", "give a CSV of arrival_s, prompt_tokens, "
                          "output_tokens") from None
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise ConfigError(field, f"{path} is not a readable CSV ({str(e).splitlines()[0]})",
                          "give a CSV of arrival_s, prompt_tokens, output_tokens") from None
    missing = [c for c in TRACE_COLUMNS if c not in df.columns]
    if missing:
        raise ConfigError(field, f"{path} lacks the column(s) {', '.join(missing)}",
                          f"name its columns {', '.join(TRACE_COLUMNS)}")
    df = df[list(TRACE_COLUMNS)].head(count)
    if df.empty:
        raise ConfigError(field, f"{path} has no requests", "give at least one row")
    values = df.to_numpy(dtype=float, na_value=np.nan)
    if not np.isfinite(values).all() or (values[:, 0] < 0).any() or (values[:, 1:] < 1).any():
        raise ConfigError(field, f"{path} has a missing, negative or zero value",
                          "arrival_s >= 0 and prompt_tokens, output_tokens >= 1 on every row")
    return df.sort_values("arrival_s", kind="stable").reset_index(drop=True)


def make_requests(cfg: RunConfig, rng: np.random.Generator, source=None) -> Requests:
    """cfg.workload.requests drawn from rng in this order: prompt lengths, output lengths, arrival gaps, then
    each request's tokens (prompt and output as one sequence of the token source)."""
    r = cfg.workload.requests
    if r.arrival == "trace":
        df = read_request_trace(r.path, r.count)
        prompt, output = (df[c].to_numpy(dtype=np.int64) for c in TRACE_COLUMNS[1:])
        arrival = df["arrival_s"].to_numpy(dtype=float)
    else:
        prompt = sample_lengths(r.prompt, r.count, rng, "workload.requests.prompt")
        output = sample_lengths(r.output, r.count, rng, "workload.requests.output")
        arrival = (np.zeros(r.count) if r.arrival == "all_at_once"
                   else np.cumsum(rng.exponential(1.0 / r.rate_per_s, size=r.count)))
    source = make_token_source(cfg) if source is None else source
    lengths = prompt + output
    tokens = np.concatenate(source.sequences(lengths, rng)).astype(np.int64, copy=False)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return Requests(arrival_s=arrival, prompt=prompt, output=output, tokens=tokens, offsets=offsets)
