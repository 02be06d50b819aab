"""A serving run's tables and summary: one format for a simulated and a measured serving run.

- requests: one row per request (REQUEST_COLUMNS): arrival, lengths, when it
  was first scheduled, its first token, its end, how often it was preempted;
- batches: one row per step (BATCH_COLUMNS): what the scheduler put in it;
- the summary (serving_summary): output tokens per second over the whole run
  (first arrival to last token, prefill included, as nano-vLLM's benchmark
  counts), time to first token and time per output token percentiles.

Times are seconds from the run's start, as in vocab.records.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

REQUEST_COLUMNS = ["request", "arrival_s", "prompt_tokens", "output_tokens", "scheduled_s", "first_token_s",
                   "finish_s", "preemptions", "ttft_s", "tpot_s"]
BATCH_COLUMNS = ["step", "start_s", "step_time_s", "sequences", "prefill_tokens", "decode_tokens",
                 "graph_batch", "kv_blocks_used", "waiting"]
PERCENTILES = (50, 90, 99)


def request_table(**columns) -> pd.DataFrame:
    """REQUEST_COLUMNS from arrays (ttft_s and tpot_s derived): time to first token from arrival; time per
    output token after the first (NaN for one-token outputs)."""
    df = pd.DataFrame({c: np.asarray(v) for c, v in columns.items()})
    df.insert(0, "request", np.arange(len(df), dtype=np.int64))
    df["ttft_s"] = df.first_token_s - df.arrival_s
    later = df.output_tokens - 1
    df["tpot_s"] = np.where(later > 0, (df.finish_s - df.first_token_s) / later.where(later > 0, 1), np.nan)
    return df[REQUEST_COLUMNS]


def batch_table(**columns) -> pd.DataFrame:
    return pd.DataFrame({c: np.asarray(columns[c]) for c in BATCH_COLUMNS})


def serving_summary(requests: pd.DataFrame, batches: pd.DataFrame) -> dict:
    """Per-run figures of a serving run (units in the names)."""
    start = float(requests.arrival_s.min())
    end = float(requests.finish_s.max())
    out_tokens = int(requests.output_tokens.sum())
    summary = {
        "requests": len(requests),
        "output_tokens": out_tokens,
        "prompt_tokens": int(requests.prompt_tokens.sum()),
        "elapsed_s": end - start,
        "output_tokens_per_s": out_tokens / (end - start) if end > start else float("nan"),
        "steps": len(batches),
        "prefill_steps": int((batches.prefill_tokens > 0).sum()),
        "mean_batch": float(batches.sequences.mean()) if len(batches) else 0.0,
        "preemptions": int(requests.preemptions.sum()),
        "unfinished": int(requests.finish_s.isna().sum()),
    }
    for name in ("ttft_s", "tpot_s"):
        values = requests[name].dropna().to_numpy()
        for q in PERCENTILES:
            summary[f"{name[:-2]}_p{q}_s"] = float(np.percentile(values, q)) if values.size else float("nan")
    return summary


def serving_extra(requests: pd.DataFrame, batches: pd.DataFrame, summary: dict) -> dict:
    """A serving run's part of a record file (RunRecord.extra)."""
    return {"serving": summary, "requests": requests[REQUEST_COLUMNS].to_dict(orient="list"),
            "batches": batches[BATCH_COLUMNS].to_dict(orient="list")}


def serving_tables(extra: dict) -> tuple[pd.DataFrame, pd.DataFrame, dict] | None:
    """(requests, batches, summary) of a record's extra part; None for a steady-state run."""
    if "serving" not in extra:
        return None
    return pd.DataFrame(extra["requests"]), pd.DataFrame(extra["batches"]), dict(extra["serving"])
