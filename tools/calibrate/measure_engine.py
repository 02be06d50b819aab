"""The engine's own time per decode step (host.engine_step_fixed_us, engine_step_per_seq_us): the real
runner (real_runs/runner.py) runs the tiny preset without Engram for a few steps at a few batch sizes,
and the gap between one step's last kernel (the LM head) and the next step's first layer is what the
host spent outside GPU work: the read-back, the loop, the next step's inputs and launches before its first
layer. On the CPU (tests) the same gaps are host times.
"""

from __future__ import annotations

import numpy as np

from tools.calibrate.plan import Sizes
from vocab.config import load_config
from vocab.placements import NONE
from vocab.records import GPU_COMPUTE

ENGINE_PRESET = "tiny"


def step_gaps_s(events) -> np.ndarray:
    """Seconds from each step's last compute interval's end to the next step's first one's start (an event
    table, vocab.records.EVENT_COLUMNS)."""
    compute = events[events["actor"] == GPU_COMPUTE]
    steps = compute.groupby("step").agg(first=("start_s", "min"), last=("end_s", "max")).sort_index()
    return steps["first"].to_numpy()[1:] - steps["last"].to_numpy()[:-1]


def measure_engine_step(sizes: Sizes, raw: dict, device: str = "cuda"):
    """Median gap (us) by batch size."""
    from real_runs.runner import run  # imports torch, an optional heavy dependency

    base = load_config(ENGINE_PRESET)
    raw["engine_step"] = {}
    for batch in sizes.engine_batches:
        cfg = base.with_workload(sequences=int(batch), steps=int(sizes.engine_steps))
        record = run(cfg, placement=NONE, device=device, warmup=max(1, sizes.warmup))
        raw["engine_step"][int(batch)] = float(np.median(step_gaps_s(record.events))) * 1e6
        yield f"engine step B={batch}"
    raw["engine_preset"] = ENGINE_PRESET
