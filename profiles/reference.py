"""Published reference measurements shipped under profiles/reference/ (data, read-only).

One H100 SXM machine (16 vCPU Xeon, 2026-11-24); shared/reference/H100.md
summarises it. The calibration report and the GPU benchmark compare against
these figures, and nothing else types them in.
"""

from __future__ import annotations

import json
from pathlib import Path

from vocab.units import GiB

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"


def _load(name: str) -> list | dict:
    return json.loads((REFERENCE_DIR / name).read_text())


def reference_figures() -> dict:
    """{key: (what, figure, unit)} of the H100 reference limits (h100-limits.json)."""
    rows = _load("h100-limits.json")

    def one(kind, **match):
        return next(r for r in rows if r.get("kind") == kind and all(r.get(k) == v for k, v in match.items()))

    copy = one("copy", bytes=GiB)
    figures = {
        "h2d_gbps": ("H2D pinned copy, 1 GiB", copy["h2d_GBps"], "GB/s"),
        "d2h_gbps": ("D2H pinned copy, 1 GiB", copy["d2h_GBps"], "GB/s"),
        "d2d_gbps": ("device-to-device copy (read+write)", one("d2d")["GBps_rw"], "GB/s"),
        "bf16_tflops": ("bf16 GEMM 8192^3", one("gemm_bf16")["TFLOPs"], "TFLOP/s"),
        "hbm_gather_1k": ("HBM index_select gather, 1 KB rows", one("gather_hbm", row_bytes=1024)["GBps_payload"],
                          "GB/s"),
        "hash_best": ("N-gram hashing, 16 threads", one("hash_cpu_numba")["Mtokens_per_s"] * 1e6, "tokens/s"),
        "hash_1": ("N-gram hashing, 1 thread", one("hash_cpu_numba_1thread")["Mtokens_per_s"] * 1e6, "tokens/s"),
    }
    for rb, label in ((256, "256 B"), (1024, "1 KB"), (4096, "4 KB")):
        figures[f"cpu_gather_{rb}"] = (f"CPU gather {label} rows, 16 threads",
                                       one("gather_cpu_numba", row_bytes=rb)["GBps_payload"], "GB/s")
    return figures


def reference_step_fetch() -> list[dict]:
    """The reference per-step fetch points (h100-step-fetch.json): UVA gather and CPU path per shape."""
    return [r for r in _load("h100-step-fetch.json") if "rows" in r]


def reference_e2e() -> dict:
    """The H100 end-to-end decode experiment (h100-e2e-decode-b512.json): machine, setup and runs."""
    return _load("h100-e2e-decode-b512.json")


def reference_table4() -> dict:
    """The paper's Table 4 (paper-table4.json): source, setup and one run per backbone."""
    return _load("paper-table4.json")


def reference_limits() -> dict:
    """The reference's hashing rate (16 threads, tokens/s) and HBM gather rate at 1 KB rows (GB/s)."""
    ref = reference_figures()
    return {"hash_tokens_per_s": ref["hash_best"][1], "hbm_gather_1k_gbps": ref["hbm_gather_1k"][1]}
