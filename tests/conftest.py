import os
from types import SimpleNamespace

import numpy as np
import pytest

# Numba and torch may use every core; keep the suite to the machine's 2.
os.environ.setdefault("NUMBA_NUM_THREADS", "2")


def synthetic_trace(cfg, steps=4, tokens=None, unique_fraction=0.85, reuse_fraction=0.1, hit_fraction=0.5):
    """A hand-made trace: the same shape every step (what the simulator reads)."""
    n = len(cfg.engram.layer_ids)
    w = cfg.workload
    if tokens is None:
        tokens = w.sequences if w.phase == "decode" else w.tokens_per_step
    context = 560.0 * tokens if w.phase == "decode" else 280.0 * tokens
    lookups = tokens * cfg.engram.tables_per_layer
    full = lambda v: np.full((steps, n), int(v), dtype=np.int64)  # noqa: E731
    return SimpleNamespace(
        tokens=np.full(steps, tokens), attn_context_sum=np.full(steps, context),
        sequences=np.full(steps, w.sequences if w.phase == "decode" else max(1, tokens // 560)),
        kv_tokens=np.full(steps, w.sequences * 600), lookups=full(lookups),
        unique_rows=full(lookups * unique_fraction), distinct_rows=full(lookups * unique_fraction),
        reused_rows=full(lookups * reuse_fraction),
        cache_hits=full(lookups * unique_fraction * hit_fraction), dram_hits=None)


@pytest.fixture
def make_trace():
    return synthetic_trace


def edited(cfg, changes: dict):
    """cfg with {"section.field": value} changes, through the typed edits (with_engram, with_placement, ...)."""
    parts: dict[str, dict] = {}
    for dotted, value in changes.items():
        section, _, name = dotted.partition(".")
        parts.setdefault(section, {})[name] = value
    for section, fields in parts.items():
        cfg = {"engram": cfg.with_engram, "placement": cfg.with_placement, "workload": cfg.with_workload,
               "backbone": cfg.with_backbone}[section](**fields)
    return cfg
