"""The run record: one format for a simulated and a measured run.

Both the simulator and the real runs describe a run with the same tables and
the same names, so a prediction and a measurement line up column by column:

- steps:   one row per step (STEP_COLUMNS)
- fetches: one row per step and Engram layer (FETCH_COLUMNS)
- events:  the timeline, one row per interval on an actor (EVENT_COLUMNS)
- summary: per-run totals (SUMMARY_KEYS)

A record file is JSON: {"schema", "kind", "config", "machine", "summary",
"steps", "fetches", "events", ...}. Times are seconds from the run's start.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from vocab.errors import UserError
from vocab.files import atomic_write

SCHEMA = "engram-sim.record/1"

STEP_COLUMNS = [
    "step", "start_s", "step_time_s", "compute_time_s", "tokens",
    "exposed_stall_s", "fetch_time_s", "overlap_fraction",
    "host_bytes", "hbm_bytes", "link_bytes",
]
FETCH_COLUMNS = [
    "step", "layer", "fetch_start_s", "fetch_end_s", "fetch_time_s",
    "wait_start_s", "exposed_stall_s", "lookups", "unique_rows", "host_rows", "cache_hits",
    # ssd placement: rows served by the DRAM cache, and block reads from the drive (0 elsewhere).
    "dram_hits", "ssd_reads",
]
# Columns a fetch row may leave out (older records, placements without those tiers): they read as 0.
OPTIONAL_FETCH_COLUMNS = ("dram_hits", "ssd_reads")
EVENT_COLUMNS = ["actor", "name", "start_s", "end_s", "step", "layer"]
SUMMARY_KEYS = [
    "steps", "tokens", "elapsed_s", "tokens_per_s", "step_time_s",
    "exposed_stall_s", "fetch_time_s", "overlap_fraction",
    "host_bytes_per_step", "hbm_bytes_per_step", "link_utilisation",
]


# Actors of the timeline (EVENT_COLUMNS.actor), the same names predicted and measured.
GPU_COMPUTE = "gpu compute"
CPU_HASH = "cpu hash"
CPU_GATHER = "cpu gather"
H2D_LINK = "h2d link"
UVA_GATHER = "uva gather"
STALL = "stall"
HOST = "host"  # the host's critical path: engine step work, hashing on the host, launches
SSD_READ = "ssd read"  # block reads from the drive into staging (or HBM, with GDS)
ACTORS = (GPU_COMPUTE, CPU_HASH, CPU_GATHER, H2D_LINK, UVA_GATHER, STALL, HOST, SSD_READ)


# -- the formulas every table uses ------------------------------------------------------------------

def overlap_fraction(stall_s, fetch_s):
    """Hidden fetch time over total fetch time, in [0, 1]; no fetch -> nothing to hide (NaN).

    Scalars give a float, arrays an array."""
    stall, fetch = np.asarray(stall_s, dtype=float), np.asarray(fetch_s, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(fetch > 0, np.clip(1.0 - stall / fetch, 0.0, 1.0), np.nan)
    return float(out) if out.ndim == 0 else out


def overhead(tokens_per_s: float, baseline_tokens_per_s: float) -> float:
    """Throughput lost against a baseline run (0.01 = 1 % fewer tokens per second)."""
    return 1.0 - tokens_per_s / baseline_tokens_per_s


def window_use(fetches: pd.DataFrame) -> float:
    """How much of its window a fetch uses: fetch time over the time from the fetch's start to when
    the GPU needs the rows, worst Engram layer per step, median over steps (1.0 = just hidden)."""
    window = fetches["wait_start_s"] - fetches["fetch_start_s"]
    use = fetches["fetch_time_s"] / window.where(window > 0)
    return float(use.groupby(fetches["step"]).max().median())


def step_table(*, step, start_s, step_time_s, compute_time_s, tokens, exposed_stall_s, fetch_time_s,
               host_bytes, hbm_bytes, link_bytes) -> pd.DataFrame:
    """The per-step table (STEP_COLUMNS) from per-step columns; overlap_fraction is derived here."""
    return pd.DataFrame({
        "step": step, "start_s": start_s, "step_time_s": step_time_s, "compute_time_s": compute_time_s,
        "tokens": tokens, "exposed_stall_s": exposed_stall_s, "fetch_time_s": fetch_time_s,
        "overlap_fraction": overlap_fraction(exposed_stall_s, fetch_time_s),
        "host_bytes": host_bytes, "hbm_bytes": hbm_bytes, "link_bytes": link_bytes,
    }, columns=STEP_COLUMNS)


def fetch_table(rows=None, **columns) -> pd.DataFrame:
    """The per-fetch table (FETCH_COLUMNS), from row tuples in column order or from columns."""
    if rows is not None:
        rows = list(rows)
        width = len(rows[0]) if rows else len(FETCH_COLUMNS)
        table = pd.DataFrame(rows, columns=FETCH_COLUMNS[:width])
    else:
        table = pd.DataFrame(columns)
    return _with_optional_fetch_columns(table)


def _with_optional_fetch_columns(table: pd.DataFrame) -> pd.DataFrame:
    for name in OPTIONAL_FETCH_COLUMNS:
        if name not in table.columns:
            table[name] = 0
    return table.reindex(columns=FETCH_COLUMNS)


def event_table(rows) -> pd.DataFrame:
    """The timeline (EVENT_COLUMNS) from (actor, name, start_s, end_s, step, layer) tuples."""
    return pd.DataFrame(rows, columns=EVENT_COLUMNS)


class RecordError(UserError):
    """A run record file is missing, unreadable or malformed."""


@dataclass
class RunRecord:
    kind: str  # "simulated" or "measured"
    config: dict
    machine: dict
    summary: dict
    steps: pd.DataFrame
    fetches: pd.DataFrame
    events: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=EVENT_COLUMNS))
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "schema": SCHEMA,
            "kind": self.kind,
            "config": self.config,
            "machine": self.machine,
            "summary": self.summary,
            "steps": self.steps[STEP_COLUMNS].to_dict(orient="list"),
            "fetches": self.fetches[FETCH_COLUMNS].to_dict(orient="list"),
            "events": self.events[EVENT_COLUMNS].to_dict(orient="list"),
            **self.extra,
        }


def summarise(steps: pd.DataFrame, link_peak_bytes_per_s: float | None = None) -> dict:
    """Per-run totals from the per-step table (same rule for predicted and measured)."""
    elapsed = float(steps["step_time_s"].sum())
    fetch = float(steps["fetch_time_s"].sum())
    stall = float(steps["exposed_stall_s"].sum())
    n = len(steps)
    out = {
        "steps": n,
        "tokens": int(steps["tokens"].sum()),
        "elapsed_s": elapsed,
        "tokens_per_s": float(steps["tokens"].sum()) / elapsed if elapsed > 0 else float("nan"),
        "step_time_s": elapsed / n if n else float("nan"),
        "exposed_stall_s": stall / n if n else float("nan"),
        "fetch_time_s": fetch / n if n else float("nan"),
        "overlap_fraction": overlap_fraction(stall, fetch),
        "host_bytes_per_step": float(steps["host_bytes"].mean()) if n else 0.0,
        "hbm_bytes_per_step": float(steps["hbm_bytes"].mean()) if n else 0.0,
        "link_utilisation": (float(steps["link_bytes"].sum()) / (elapsed * link_peak_bytes_per_s)
                             if link_peak_bytes_per_s and elapsed > 0 else float("nan")),
    }
    return out


def write_record(record: RunRecord, path: str | Path) -> Path:
    """Write atomically: a failure leaves the old file (or nothing) in place."""
    return atomic_write(path, lambda f: json.dump(record.to_json(), f, default=_json_default))


def read_record(path: str | Path) -> RunRecord:
    path = Path(path)
    if not path.is_file():
        raise RecordError(str(path), "record file not found", "give the path of a record JSON")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RecordError(str(path), f"not valid JSON ({e})", "give a record written by engram-sim") from None
    if data.get("schema") != SCHEMA:
        raise RecordError(f"{path}: schema", f"is {data.get('schema')!r}", f"expected {SCHEMA!r}")
    for key in ("kind", "config", "machine", "summary", "steps", "fetches"):
        if key not in data:
            raise RecordError(f"{path}: {key}", "missing", "give a complete record")
    steps = pd.DataFrame(data["steps"])
    fetches = _with_optional_fetch_columns(pd.DataFrame(data["fetches"]))
    missing = [c for c in STEP_COLUMNS if c not in steps.columns]
    if missing:
        raise RecordError(f"{path}: steps", f"lacks columns {missing}", "give a complete record")
    known = {"schema", "kind", "config", "machine", "summary", "steps", "fetches", "events"}
    return RunRecord(
        kind=data["kind"], config=data["config"], machine=data["machine"], summary=data["summary"],
        steps=steps, fetches=fetches,
        events=pd.DataFrame(data.get("events") or {c: [] for c in EVENT_COLUMNS}),
        extra={k: v for k, v in data.items() if k not in known},
    )


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")
