"""One entry point for a prediction: a steady-state run (sim.engine) or a serving run (sim.serve)."""

from __future__ import annotations

from profiles import HardwareProfile
from sim.engine import simulate
from sim.result import SimResult
from sim.serve import simulate_serving
from vocab.config import RunConfig


def predict(cfg: RunConfig, profile: HardwareProfile | None = None, *, record_events: bool = False,
            check_capacity: bool = True) -> SimResult:
    if cfg.workload.phase == "serve":
        return simulate_serving(cfg, profile, record_events=record_events, check_capacity=check_capacity)
    return simulate(cfg, profile, record_events=record_events, check_capacity=check_capacity)


def throughput(result: SimResult) -> float:
    """The figure overheads compare: output tokens per second of a serving run (prefill time included),
    tokens per second of a steady-state run."""
    return result.serving["output_tokens_per_s"] if result.serving is not None else result.summary["tokens_per_s"]
