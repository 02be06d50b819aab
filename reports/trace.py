"""Chrome trace-event JSON (opens in Perfetto and chrome://tracing).

One process per source ("predicted", "measured"), one track (thread) per
actor ("gpu compute", "cpu hash", ...), complete events ("ph": "X") in
microseconds.

An actor can be busy more than once at a time (two copy engines on the
"h2d link", hashing ahead on the "cpu hash"), but a track's slices must not
overlap: Perfetto nests or drops them.  So each actor's intervals are dealt
into lanes, the first free one each, and lane n > 0 gets its own track named
"<actor> #<n + 1>".
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from vocab.files import atomic_write


def assign_lanes(start_s, end_s) -> np.ndarray:
    """Per interval, the lowest lane whose previous interval has ended by its start (0, 1, ...).

    Intervals are half-open [start, end): one ending exactly when the next starts shares its lane.
    """
    start = np.asarray(start_s, dtype=float)
    end = np.maximum(np.asarray(end_s, dtype=float), start)
    lanes = np.zeros(len(start), dtype=int)
    lane_free_at: list[float] = []
    for i in np.lexsort((end, start)):
        lane = next((n for n, free in enumerate(lane_free_at) if free <= start[i]), len(lane_free_at))
        if lane == len(lane_free_at):
            lane_free_at.append(end[i])
        else:
            lane_free_at[lane] = end[i]
        lanes[i] = lane
    return lanes


def track_name(actor: str, lane: int) -> str:
    return actor if lane == 0 else f"{actor} #{lane + 1}"


def _process_events(pid: int, source: str, df: pd.DataFrame) -> list[dict]:
    events = [{"ph": "M", "pid": pid, "name": "process_name", "args": {"name": source}}]
    lanes = np.zeros(len(df), dtype=int)
    for _, rows in df.groupby("actor", sort=False):
        positions = df.index.get_indexer(rows.index)
        lanes[positions] = assign_lanes(rows["start_s"], rows["end_s"])
    # Tracks in actor order (first appearance), each actor's lanes together.
    tids: dict[tuple[str, int], int] = {}
    for actor in dict.fromkeys(df["actor"]):
        for lane in range(int(lanes[(df["actor"] == actor).to_numpy()].max()) + 1):
            tid = tids[(actor, lane)] = len(tids) + 1
            events.append({"ph": "M", "pid": pid, "tid": tid, "name": "thread_name",
                           "args": {"name": track_name(actor, lane)}})
            events.append({"ph": "M", "pid": pid, "tid": tid, "name": "thread_sort_index",
                           "args": {"sort_index": tid}})
    for row, lane in zip(df.itertuples(index=False), lanes):
        events.append({
            "ph": "X", "pid": pid, "tid": tids[(row.actor, int(lane))], "name": row.name,
            "ts": row.start_s * 1e6, "dur": max(0.0, (row.end_s - row.start_s) * 1e6),
            "args": {"step": int(row.step), "layer": int(row.layer)},
        })
    return events


def chrome_trace(timelines: dict[str, pd.DataFrame]) -> dict:
    events = []
    for pid, (source, df) in enumerate(timelines.items(), start=1):
        events += _process_events(pid, source, df.reset_index(drop=True))
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def write_chrome_trace(timelines: dict[str, pd.DataFrame], path: str | Path) -> Path:
    return atomic_write(path, lambda f: json.dump(chrome_trace(timelines), f))
