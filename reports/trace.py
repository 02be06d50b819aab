"""Chrome trace-event JSON (opens in Perfetto and chrome://tracing).

One process per source ("predicted", "measured"), one track (thread) per
actor ("gpu compute", "cpu hash", ...), complete events ("ph": "X") in
microseconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from vocab.files import atomic_write


def chrome_trace(timelines: dict[str, pd.DataFrame]) -> dict:
    events = []
    for pid, (source, df) in enumerate(timelines.items(), start=1):
        events.append({"ph": "M", "pid": pid, "name": "process_name", "args": {"name": source}})
        actors = list(dict.fromkeys(df["actor"]))
        for tid, actor in enumerate(actors, start=1):
            events.append({"ph": "M", "pid": pid, "tid": tid, "name": "thread_name", "args": {"name": actor}})
        tids = {a: i for i, a in enumerate(actors, start=1)}
        for row in df.itertuples(index=False):
            events.append({
                "ph": "X", "pid": pid, "tid": tids[row.actor], "name": row.name,
                "ts": row.start_s * 1e6, "dur": max(0.0, (row.end_s - row.start_s) * 1e6),
                "args": {"step": int(row.step), "layer": int(row.layer)},
            })
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def write_chrome_trace(timelines: dict[str, pd.DataFrame], path: str | Path) -> Path:
    return atomic_write(path, lambda f: json.dump(chrome_trace(timelines), f))
