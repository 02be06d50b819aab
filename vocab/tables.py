"""The result tables above a run record: a sweep's and a comparison's, and their summary.

A sweep has one row per (table size, placement, phase) (SWEEP_COLUMNS); a
comparison one row per measured record (COMPARE_COLUMNS). Each column list is
defined here once: the tools that write these tables, the reports that draw
them, and the tests all read these lists.
"""

from __future__ import annotations

import io
import json
import os
from importlib import metadata as package_metadata

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vocab.placements import HBM, NONE

# Each overhead column and the placement of the baseline run it is measured against.
OVERHEAD_BASELINES = {"overhead_vs_hbm": HBM, "overhead_vs_none": NONE}

SWEEP_COLUMNS = [
    "table_bytes", "table_gib", "table_gib_asked", "placement", "phase", "step_time_s", "tokens_per_s",
    "exposed_stall_s", "fetch_time_s", "overlap_fraction", "overhead_vs_hbm", "overhead_vs_none", "host_bytes_per_step",
    "hbm_bytes_per_step", "link_utilisation", "window_use",
    # Whether the whole configuration fits the machine's HBM, host memory and drive, and if not, which and by how much.
    "fits_hbm", "fits_host", "fits_ssd", "fits", "capacity",
    "hidden", "steps", "sim_events", "replayed_steps",
    # Where a step's rows come from: HBM (the table or its cache), host DRAM (the table or ssd's DRAM cache),
    # the drive (ssd), its block reads, and the caches' warm-up (cache_filled False: hit rates are lower bounds).
    "dram_cache_gib", "rows_per_step", "rows_hbm_per_step", "rows_dram_per_step", "rows_drive_per_step",
    "drive_reads_per_step", "cache_warmup_steps", "cache_filled",
]
PHASES = ("prefill", "decode")

# Metrics compared; each gets predicted_<m>, measured_<m> and rel_err_<m> columns.
METRICS = ["step_time_s", "tokens_per_s", "exposed_stall_s", "overlap_fraction", "overhead_vs_hbm", "overhead_vs_none"]
# Also carried predicted and measured (no error column): the bytes per tier and the fetch time.
EXTRA_METRICS = ["fetch_time_s", "host_bytes_per_step", "hbm_bytes_per_step"]

COMPARE_COLUMNS = [
    "record", "config", "placement", "phase", "table_bytes", "table_gib", "steps", "device", "machine",
    "profile", "profile_matched",
    *[f"{side}_{m}" for m in METRICS for side in ("predicted", "measured")],
    *[f"rel_err_{m}" for m in METRICS],
    "overhead_error_pp", "overhead_vs_none_error_pp",
    *[f"{side}_{m}" for m in EXTRA_METRICS for side in ("predicted", "measured")],
    "note",
]
# One step of each compared run, predicted and measured, times from the step's start.
TIMELINE_COLUMNS = ["source", "record", "step", "actor", "name", "start_s", "end_s"]

# What `report` needs of each input (a subset, so that older CSVs still draw).
REPORT_COMPARE_COLUMNS = [
    "record", "config", "placement", "phase", "table_gib", "predicted_tokens_per_s", "measured_tokens_per_s",
    "rel_err_tokens_per_s", "predicted_overhead_vs_hbm", "measured_overhead_vs_hbm",
    "predicted_exposed_stall_s", "measured_exposed_stall_s", "profile", "profile_matched",
]
REPORT_SWEEP_COLUMNS = [
    "table_bytes", "table_gib", "placement", "phase", "step_time_s", "tokens_per_s", "exposed_stall_s",
    "overhead_vs_hbm", "host_bytes_per_step", "hbm_bytes_per_step",
]


def summarise_errors(df: pd.DataFrame) -> dict:
    """Median and max absolute relative throughput error, and the overhead error in points."""
    thr = df["rel_err_tokens_per_s"].abs().dropna() if len(df) else pd.Series(dtype=float)
    # An hbm record is its own baseline (0 vs 0): only the other placements say anything about the overhead.
    pp = (df.loc[df["placement"] != "hbm", "overhead_error_pp"].abs().dropna() if len(df)
          else pd.Series(dtype=float))
    nan = float("nan")
    return {
        "compared": int(len(df)),
        "throughput_abs_rel_err_median": float(thr.median()) if len(thr) else nan,
        "throughput_abs_rel_err_max": float(thr.max()) if len(thr) else nan,
        "overhead_abs_err_pp_median": float(pp.median()) if len(pp) else nan,
        "overhead_abs_err_pp_max": float(pp.max()) if len(pp) else nan,
        "overhead_pairs": int(len(pp)),
        "all_profiles_matched": bool(df["profile_matched"].all()) if len(df) else False,
    }


# -- Parquet ------------------------------------------------------------------------------------

# The key, in a Parquet file's key-value metadata, under which a table's own facts (df.attrs) are kept as JSON.
PARQUET_METADATA_KEY = b"engram_sim"


def engram_sim_version() -> str:
    """The installed package's version ("unknown" when run from a checkout that is not installed)."""
    try:
        return package_metadata.version("engram-sim")
    except package_metadata.PackageNotFoundError:
        return "unknown"


def _arrow_table(df: pd.DataFrame, metadata: dict | None) -> pa.Table:
    table = pa.Table.from_pandas(df, preserve_index=False)
    facts = {**df.attrs, **(metadata or {}), "engram_sim_version": engram_sim_version()}
    return table.replace_schema_metadata({**(table.schema.metadata or {}),
                                         PARQUET_METADATA_KEY: json.dumps(facts, default=str).encode()})


def write_parquet(df: pd.DataFrame, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """A table as Parquet, df.attrs and `metadata` (JSON-able) and the engram-sim version kept in its
    key-value metadata. Not atomic by itself: write into a staged folder (vocab.files.staged_dir)."""
    pq.write_table(_arrow_table(df, metadata), path)


def parquet_bytes(df: pd.DataFrame, metadata: dict | None = None) -> bytes:
    """write_parquet's file as bytes: for a worker that hands its table to the process that writes it."""
    buf = io.BytesIO()
    pq.write_table(_arrow_table(df, metadata), buf)
    return buf.getvalue()


def read_parquet(source: str | os.PathLike | bytes) -> pd.DataFrame:
    """A table written by write_parquet (a path, or parquet_bytes' bytes), its metadata back in df.attrs."""
    table = pq.read_table(pa.BufferReader(source) if isinstance(source, bytes) else source)
    df = table.to_pandas()
    df.attrs = json.loads((table.schema.metadata or {}).get(PARQUET_METADATA_KEY, b"{}"))
    return df
