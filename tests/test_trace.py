"""Chrome traces: no two slices on one track overlap (Perfetto cannot draw that)."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest

from profiles import load_profile
from reports.trace import assign_lanes, chrome_trace, write_chrome_trace
from sim.engine import simulate
from vocab.config import load_config
from vocab.records import CPU_HASH, GPU_COMPUTE, H2D_LINK

# Slack for the seconds-to-microseconds rounding of ts and dur.
_EPS_US = 1e-6


def _tracks(trace: dict) -> tuple[dict, dict]:
    """({(pid, tid): track name}, {(pid, tid): [(ts, end), ...]}) of a trace."""
    names, slices = {}, defaultdict(list)
    for e in trace["traceEvents"]:
        if e["ph"] == "M" and e["name"] == "thread_name":
            names[(e["pid"], e["tid"])] = e["args"]["name"]
        elif e["ph"] == "X":
            slices[(e["pid"], e["tid"])].append((e["ts"], e["ts"] + e["dur"]))
    return names, slices


def _assert_no_overlap(trace: dict) -> None:
    names, slices = _tracks(trace)
    assert set(slices) <= set(names), "a slice on a track without a name"
    for track, spans in slices.items():
        spans.sort()
        for (_, end), (start, _) in zip(spans, spans[1:]):
            assert start >= end - _EPS_US, f"overlapping slices on track {names[track]!r}"


def _events(rows) -> pd.DataFrame:
    return pd.DataFrame([(a, n, s, e, 0, 0) for a, n, s, e in rows],
                        columns=["actor", "name", "start_s", "end_s", "step", "layer"])


def test_assign_lanes_deals_overlaps_to_the_first_free_lane():
    #           [0,2)  [1,3)  [2,4)  [3,5)  [0,10)  [4,4)
    lanes = assign_lanes([0, 1, 2, 3, 0, 4], [2, 3, 4, 5, 10, 4])
    # [0,10) starts first with [0,2): sorted by (start, end) [0,2) takes lane 0, [0,10) lane 1,
    # [1,3) lane 2, [2,4) reuses lane 0, [3,5) lane 2, the empty [4,4) lane 0.
    assert lanes.tolist() == [0, 2, 0, 2, 1, 0]
    assert assign_lanes([], []).tolist() == []
    # back to back is no overlap
    assert assign_lanes([0, 1, 2], [1, 2, 3]).tolist() == [0, 0, 0]


def test_synthetic_overlaps_get_their_own_tracks():
    df = _events([
        (GPU_COMPUTE, "layers", 0.0, 1e-3),
        (H2D_LINK, "chunk 0", 0.0, 4e-4),   # two copy engines busy at once
        (H2D_LINK, "chunk 1", 1e-4, 5e-4),
        (H2D_LINK, "chunk 2", 4e-4, 8e-4),  # the first engine again
        (H2D_LINK, "chunk 3", 5e-4, 9e-4),  # the second, as soon as it is free
        (H2D_LINK, "chunk 4", 6e-4, 9e-4),  # a third at once
        (CPU_HASH, "hash", 0.0, 1e-4),
    ])
    trace = chrome_trace({"predicted": df, "measured": df.iloc[:2]})
    _assert_no_overlap(trace)
    names, slices = _tracks(trace)
    predicted = {name for (pid, _), name in names.items() if pid == 1}
    assert predicted == {GPU_COMPUTE, H2D_LINK, f"{H2D_LINK} #2", f"{H2D_LINK} #3", CPU_HASH}
    by_name = {names[k]: len(v) for k, v in slices.items() if k[0] == 1}
    assert by_name == {GPU_COMPUTE: 1, H2D_LINK: 2, f"{H2D_LINK} #2": 2, f"{H2D_LINK} #3": 1, CPU_HASH: 1}
    # Nothing overlaps in the second process: one track per actor, named plainly.
    assert {name for (pid, _), name in names.items() if pid == 2} == {GPU_COMPUTE, H2D_LINK}
    # Every event is kept.
    assert sum(len(v) for v in slices.values()) == len(df) + 2


def test_the_old_writer_would_have_overlapped():
    """The check itself catches overlapping slices on one track."""
    bad = {"traceEvents": [
        {"ph": "M", "pid": 1, "tid": 1, "name": "thread_name", "args": {"name": H2D_LINK}},
        {"ph": "X", "pid": 1, "tid": 1, "name": "a", "ts": 0.0, "dur": 4.0},
        {"ph": "X", "pid": 1, "tid": 1, "name": "b", "ts": 1.0, "dur": 4.0},
    ]}
    with pytest.raises(AssertionError, match="overlapping"):
        _assert_no_overlap(bad)


@pytest.fixture(scope="module")
def host_dma_prefill():
    """A simulated prefill with host_dma: the chunks of one layer's copy run on two copy engines at once."""
    profile = load_profile("h100-sxm")
    assert profile.link.copy_engines == 2
    cfg = load_config("engram-27b").with_placement("host_dma").with_phase("prefill").with_steps(2)
    return simulate(cfg, profile, record_events=True, check_capacity=False).events


def test_simulated_host_dma_trace_has_no_overlap_on_a_track(host_dma_prefill, tmp_path):
    events = host_dma_prefill
    link = events[events["actor"] == H2D_LINK].sort_values("start_s")
    # The simulator's own intervals overlap on the link (this is what the lanes are for) ...
    assert (link["start_s"].to_numpy()[1:] < np.maximum.accumulate(link["end_s"].to_numpy())[:-1]).any()
    path = write_chrome_trace({"predicted": events}, tmp_path / "t.json")
    trace = json.loads(path.read_text())
    # ... and the written trace puts them on separate tracks.
    _assert_no_overlap(trace)
    names, slices = _tracks(trace)
    link_tracks = sorted(n for n in names.values() if n.startswith(H2D_LINK))
    assert link_tracks == [H2D_LINK, f"{H2D_LINK} #2"]  # one per copy engine
    assert sum(len(v) for v in slices.values()) == len(events)
