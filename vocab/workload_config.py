"""The workload part of a run's configuration (vocab.config): what the steps are made of (lengths, the token
source), and for serving runs the requests and the scheduler. Bad values raise ConfigError naming the field."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from vocab.errors import ConfigError
from vocab.schema import INT_LIMIT, check_ranges, require

SEEDS = (0, INT_LIMIT - 1, "(a seed)")


@dataclass
class LengthDistribution:
    dist: Literal["uniform", "fixed", "normal", "lognormal"] = "uniform"
    low: int = 100
    high: int = 1024
    mean: float = 0.0
    std: float = 0.0
    # Decode: contexts grow by one token a step (false: a fixed-length KV cache, as a benchmark may hold it).
    grow: bool = True

    RANGES: ClassVar[dict] = {
        "low": (1, 1 << 24, "tokens"), "high": (1, 1 << 24, "tokens"), "mean": (0, 1 << 24, "tokens"),
        "std": (0, 1 << 24, "tokens")}

    def validate(self, path: str) -> None:
        check_ranges(self, path, self.RANGES, ConfigError)
        require(self.low <= self.high, ConfigError, f"{path}.low",
                f"need 1 <= low <= high (got low={self.low}, high={self.high})", "fix the bounds")


@dataclass
class TokenSourceConfig:
    source: Literal["zipf", "zipf_clipped", "uniform", "text", "npy"] = "zipf"
    # zipf: Zipf-Mandelbrot, p(rank k) ~ 1 / (k + q)^s over the compressed vocabulary.
    # zipf_clipped: p(k) ~ k^-s over all k >= 1 (numpy.random.zipf), ranks beyond the vocabulary
    # clipped to its last one (which then takes the whole tail: about 30 % at s = 1.1).
    # uniform: every compressed id equally likely.
    zipf_s: float = 1.1
    zipf_q: float = 2.7
    # text: a UTF-8 file (default: the Python standard library's own sources);
    # tokenizer: a tokenizer.json (default: a BPE trained offline on that text).
    path: str | None = None
    tokenizer: str | None = None
    # How many distinct steps are hashed exactly; longer runs cycle through them.
    trace_steps: int = 32

    RANGES: ClassVar[dict] = {
        "zipf_s": (0, 100, "(an exponent)"), "zipf_q": (0, 1e6, "ranks"), "trace_steps": (1, 4096, "steps")}

    def validate(self, path: str) -> None:
        check_ranges(self, path, self.RANGES, ConfigError)
        require(self.zipf_s > 0, ConfigError, f"{path}.zipf_s", "must be > 0", "use e.g. 1.1")
        require(self.source != "zipf_clipped" or self.zipf_s > 1, ConfigError, f"{path}.zipf_s",
                "zipf_clipped needs zipf_s > 1 (the tail must converge)", "use e.g. 1.1")
        require(self.source != "npy" or self.path, ConfigError, f"{path}.path",
                "source 'npy' needs a path", "set path to a .npy of token ids")


@dataclass
class RequestsConfig:
    """A serving workload's requests (workload.phase = "serve")."""
    count: int = 512
    # Prompt and output lengths in tokens; outputs are forced to their length (no early end of sequence).
    prompt: LengthDistribution = field(default_factory=LengthDistribution)
    output: LengthDistribution = field(default_factory=LengthDistribution)
    # all_at_once: every request waits at t = 0 (nano-vLLM's benchmark); poisson: exponential gaps at
    # rate_per_s; trace: a CSV file (path) with columns arrival_s, prompt_tokens, output_tokens.
    arrival: Literal["all_at_once", "poisson", "trace"] = "all_at_once"
    rate_per_s: float = 0.0
    path: str | None = None

    RANGES: ClassVar[dict] = {"count": (1, 1 << 20, "requests"), "rate_per_s": (0, 1e9, "requests per second")}

    def validate(self, path: str) -> None:
        check_ranges(self, path, self.RANGES, ConfigError)
        require(self.arrival != "poisson" or self.rate_per_s > 0, ConfigError, f"{path}.rate_per_s",
                "poisson arrivals need a rate", "set rate_per_s, e.g. 10")
        require(self.arrival != "trace" or self.path, ConfigError, f"{path}.path",
                "trace arrivals need a CSV file", "set path to a CSV of arrival_s, prompt_tokens, output_tokens")


@dataclass
class SchedulerConfig:
    """How a serving engine forms each step from waiting and running requests."""
    # prefill_first (nano-vLLM): whole prompts first, up to max_batched_tokens and max_sequences, else one
    # decode token for every running sequence; chunked (vLLM-like): every running sequence's decode token,
    # then prompt chunks in arrival order filling the token budget.
    policy: Literal["prefill_first", "chunked"] = "prefill_first"
    max_batched_tokens: int = 16384
    max_sequences: int = 512
    # The KV cache: blocks of kv_block_tokens tokens, in the HBM left after weights, the table (or caches),
    # staging and activations, times gpu_memory_utilization (nano-vLLM's 0.9); kv_blocks > 0 sets the count.
    kv_block_tokens: int = 256
    gpu_memory_utilization: float = 0.9
    kv_blocks: int = 0
    # Decode-only steps with workload.launch = "cuda_graphs" run the graph captured for the next batch size
    # of this ladder (nano-vLLM: 1, 2, 4, 8, then every 16 up to 512), padded; larger batches and steps with
    # prompt tokens run eagerly. An empty list: no padding.
    graph_batch_sizes: list[int] = field(default_factory=lambda: [1, 2, 4, 8, *range(16, 513, 16)])

    RANGES: ClassVar[dict] = {
        "max_batched_tokens": (1, 1 << 24, "tokens"), "max_sequences": (1, 1 << 20, "sequences"),
        "kv_block_tokens": (1, 1 << 16, "tokens"), "gpu_memory_utilization": (0.01, 1.0, "(a fraction)"),
        "kv_blocks": (0, 1 << 30, "blocks"), "graph_batch_sizes": (1, 1 << 20, "sequences")}

    def validate(self, path: str) -> None:
        check_ranges(self, path, self.RANGES, ConfigError)
        require(self.graph_batch_sizes == sorted(set(self.graph_batch_sizes)), ConfigError,
                f"{path}.graph_batch_sizes", "must be increasing", "list each batch size once, smallest first")


@dataclass
class WorkloadConfig:
    # decode / prefill: a steady batch stepping (the fetch-overlap question); serve: requests arrive, a
    # scheduler forms each step, sequences finish (workload.requests, workload.scheduler).
    phase: Literal["prefill", "decode", "serve"] = "decode"
    sequences: int = 512
    # Prompt lengths (prefill) or context lengths at the first decode step.
    lengths: LengthDistribution = field(default_factory=LengthDistribution)
    # Prefill: tokens per forward pass (chunked prefill).
    tokens_per_step: int = 16384
    steps: int = 200
    seed: int = 0
    tokens: TokenSourceConfig = field(default_factory=TokenSourceConfig)
    # Prefill: the next batch's rows may be fetched during the current batch.
    prefill_prefetch_ahead: int = 1
    # Decode: speculative lookahead steps (0: the next tokens exist only when the step ends).
    decode_lookahead: int = 0
    # How the engine launches a step's kernels: one by one ("eager": each kernel pays the launch
    # cost) or as CUDA graphs (one launch per graph; kernels inside run back to back).
    launch: Literal["eager", "cuda_graphs"] = "eager"
    # Caches (hbm_cache, ssd's HBM and DRAM caches) are replayed over a longer token stream than the trace,
    # until they have filled and as long again, hashing at most this many distinct-row accesses per Engram
    # layer (each costs 8 bytes while the replay runs). A cache too large to fill within it is measured
    # unfilled: its hit rate is then a lower bound.
    cache_replay_rows: int = 1 << 22
    # phase = "serve" only.
    requests: RequestsConfig = field(default_factory=RequestsConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    RANGES: ClassVar[dict] = {
        "sequences": (1, 1 << 20, "sequences"), "tokens_per_step": (1, 1 << 24, "tokens"),
        "steps": (1, 1 << 30, "steps"), "seed": SEEDS, "prefill_prefetch_ahead": (0, 16, "batches"),
        "decode_lookahead": (0, 64, "steps"), "cache_replay_rows": (1 << 10, 1 << 28, "rows")}

    def validate(self, path: str) -> None:
        check_ranges(self, path, self.RANGES, ConfigError)
