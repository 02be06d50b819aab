"""GPU benchmarks of the real Engram paths, written as JSON.

    python -m real_runs.bench --quick --out out/bench.json [--parts hash,uva,dma,hbm,e2e] [--max-table-gib 64]

- hash: Numba N-gram hashing M tokens/s and its ratio to the NumPy reference (runs on CPU too);
- uva:  the host_uva gather kernel at 4K-256K rows of 160/256/1024 B on 1-64 GiB pinned tables,
        fresh (sorted, unique) ids every repetition, CUDA-event timed;
- dma:  host_dma end to end, 16K x 256 B rows from a 64 GiB table, host-timed (dedup, Numba gather
        into pinned staging, async H2D copy, expand), plus its gather and copy parts;
- hbm:  index_select from an HBM table at 160 B / 256 B / 1 KB rows;
- e2e:  Dense-4B decode with Engram at layer id 1 per placement (none = no Engram, hbm, host_dma,
        host_uva): tokens/s and the overhead against the no-Engram baseline.

Without a CUDA GPU only `hash` runs; the other parts record {"skipped": "needs a CUDA GPU"}.
Each part also records its own errors instead of stopping the others.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np

GiB = 1 << 30
NEEDS_GPU = "needs a CUDA GPU (torch.cuda.is_available() is False)"


def _median(xs) -> float:
    return float(np.median(np.asarray(xs, dtype=float)))


def bench_hash(quick: bool, cuda: bool) -> dict:
    from real_runs.hashing import bench_hashing

    tokens = (1 << 22 if cuda else 1 << 16) if quick else (1 << 24 if cuda else 1 << 18)
    r = bench_hashing(tokens=tokens, repeats=3)
    r["numba_m_tokens_per_s"] = r["numba_tokens_per_s"] / 1e6
    r["numpy_m_tokens_per_s"] = r["numpy_tokens_per_s"] / 1e6
    r["ratio_numba_over_numpy"] = r["numba_tokens_per_s"] / r["numpy_tokens_per_s"]
    return r


def _fresh_ids(rng, footprint_rows: int, n: int) -> np.ndarray:
    ids = np.unique(rng.integers(0, footprint_rows, size=int(n * 1.05) + 8))
    if ids.size > n:
        ids = np.sort(rng.choice(ids, size=n, replace=False))
    return ids.astype(np.int64)


def _big_table(gib: float):
    """One pinned host table (256 B rows, zeros), viewed at other row sizes by the benches."""
    from real_runs.stores import HostTable

    t0 = time.perf_counter()
    t = HostTable(int(gib * GiB) // 256, 128, "bf16", seed=0, pin=True, fill=False)
    return t, time.perf_counter() - t0


def bench_uva(table, quick: bool, reps: int) -> list[dict]:
    import torch

    from real_runs.cuda_gather import uva_gather

    sizes = [s for s in ((1, 16, 64) if quick else (1, 4, 16, 64)) if s * GiB <= table.nbytes]
    rows_list = (4096, 16384, 262144) if quick else (4096, 16384, 65536, 262144)
    rng = np.random.default_rng(0)
    out = []
    for row_bytes in (160, 256, 1024):
        for gib in sizes:
            footprint_rows = int(gib * GiB) // row_bytes
            for n in rows_list:
                dst = torch.empty(n * row_bytes, dtype=torch.uint8, device="cuda")
                times = []
                for r in range(reps + 1):
                    ids = torch.from_numpy(_fresh_ids(rng, footprint_rows, n)).cuda()
                    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    a.record()
                    uva_gather(table, row_bytes, ids, dst[:ids.numel() * row_bytes])
                    b.record()
                    b.synchronize()
                    if r:  # the first one compiles
                        times.append(a.elapsed_time(b) * 1e-3)
                t = _median(times)
                out.append({"table_gib": gib, "row_bytes": row_bytes, "rows": n, "median_s": t,
                            "m_rows_per_s": n / t / 1e6, "gb_per_s": n * row_bytes / t / 1e9, "reps": reps})
                print(f"uva {gib:>3} GiB {row_bytes:>5} B x {n:>6}: {t * 1e6:9.1f} us {n / t / 1e6:7.1f} M rows/s",
                      flush=True)
    return out


def bench_dma(table, quick: bool, reps: int, threads: int | None) -> list[dict]:
    import torch

    from real_runs.stores import HostDMAStore

    store = HostDMAStore(table, "cuda", threads=threads)
    rng = np.random.default_rng(1)
    out = []
    gib = table.nbytes / GiB
    for n in ((16384,) if quick else (4096, 16384, 262144)):
        totals, gathers, copies = [], [], []
        for r in range(reps + 1):
            ids = _fresh_ids(rng, table.rows, n)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            f = store.prefetch(ids)
            store.wait(f)
            torch.cuda.synchronize()
            t1 = time.perf_counter()
            if r:
                totals.append(t1 - t0)
                gathers.append(sum(e - s for a, _, s, e in f.events if a == "cpu gather") * 1e-9)
                copies.append(sum(s.elapsed_time(e) * 1e-3 for a, _, s, e in f.events if a == "h2d link"))
        t = _median(totals)
        out.append({"table_gib": gib, "row_bytes": table.row_bytes, "rows": n, "end_to_end_s": t,
                    "gather_s": _median(gathers), "copy_s": _median(copies), "m_rows_per_s": n / t / 1e6,
                    "reps": reps, "threads": threads})
        print(f"dma {gib:.0f} GiB {table.row_bytes} B x {n}: end to end {t * 1e6:.1f} us "
              f"(gather {_median(gathers) * 1e6:.1f} us, copy {_median(copies) * 1e6:.1f} us)", flush=True)
    return out


def bench_hbm(quick: bool, reps: int) -> list[dict]:
    import torch

    gib = 4 if quick else 8
    table = torch.empty(gib * GiB, dtype=torch.uint8, device="cuda")
    rng = np.random.default_rng(2)
    out = []
    for row_bytes in (160, 256, 1024):
        view = table[: (gib * GiB // row_bytes) * row_bytes].view(-1, row_bytes // 2).view(torch.bfloat16)
        for n in (16384, 262144):
            times = []
            for r in range(reps + 1):
                ids = torch.from_numpy(rng.integers(0, view.shape[0], n)).cuda()
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                view.index_select(0, ids)
                b.record()
                b.synchronize()
                if r:
                    times.append(a.elapsed_time(b) * 1e-3)
            t = _median(times)
            out.append({"table_gib": gib, "row_bytes": row_bytes, "rows": n, "median_s": t,
                        "gb_per_s": n * row_bytes / t / 1e9})
            print(f"hbm {row_bytes:>5} B x {n}: {t * 1e6:.1f} us {n * row_bytes / t / 1e9:.1f} GB/s", flush=True)
    del table
    torch.cuda.empty_cache()
    return out


def bench_e2e(quick: bool, table_gib: float, placements: list[str]) -> dict:
    import torch

    from real_runs.runner import run
    from sim.config import load_config

    cfg = load_config("dense-4b-100b").replace(**{
        "engram.table_gib": table_gib,
        "workload.sequences": 128 if quick else 256,
        "workload.lengths": {"dist": "uniform", "low": 100, "high": 1024},
        "workload.steps": 20 if quick else 50,
        "placement.hash_threads": 8, "placement.gather_threads": 8,
    })
    out = {"config": cfg.to_dict(), "runs": {}}
    for placement in placements:
        try:
            rec = run(cfg, placement=placement, warmup=2)
            s = rec.summary
            out["runs"][placement] = {k: s[k] for k in ("tokens_per_s", "step_time_s", "exposed_stall_s",
                                                          "fetch_time_s", "overlap_fraction")}
            print(f"e2e {placement:>9}: {s['tokens_per_s']:.0f} tok/s, stall {s['exposed_stall_s'] * 1e3:.3f} ms"
                  f"/step, fetch {s['fetch_time_s'] * 1e3:.3f} ms/step", flush=True)
        except Exception as e:  # record and go on with the next placement
            out["runs"][placement] = {"error": f"{type(e).__name__}: {e}"}
        torch.cuda.empty_cache()
    base = out["runs"].get("none", {}).get("tokens_per_s")
    if base:
        for placement, r in out["runs"].items():
            if "tokens_per_s" in r:
                r["overhead_vs_no_engram"] = 1 - r["tokens_per_s"] / base
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m real_runs.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer sizes and repetitions")
    ap.add_argument("--out", default="out/bench.json", help="JSON file to write")
    ap.add_argument("--parts", default="hash,uva,dma,hbm,e2e", help="comma-separated parts to run")
    ap.add_argument("--max-table-gib", type=float, default=64.0, help="largest pinned host table")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions per point (default 12; quick 5)")
    ap.add_argument("--e2e-table-gib", type=float, default=16.0, help="Engram table size of the e2e runs")
    ap.add_argument("--threads", type=int, default=None, help="Numba gather threads (default: all)")
    args = ap.parse_args(argv)
    import torch

    from real_runs.instrument import describe_machine

    cuda = torch.cuda.is_available()
    reps = args.reps or (5 if args.quick else 12)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    result = {"quick": args.quick, "reps": reps, "machine": describe_machine("cuda" if cuda else "cpu")}

    def attempt(name, fn):
        t0 = time.perf_counter()
        try:
            result[name] = fn()
        except Exception as e:
            result[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            print(f"{name}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        result.setdefault("part_seconds", {})[name] = time.perf_counter() - t0

    if "hash" in parts:
        attempt("hash", lambda: bench_hash(args.quick, cuda))
        h = result["hash"]
        if "ratio_numba_over_numpy" in h:
            print(f"hash: numba {h['numba_m_tokens_per_s']:.1f} M tok/s ({h['threads']} threads), numpy "
                  f"{h['numpy_m_tokens_per_s']:.1f} M tok/s, ratio {h['ratio_numba_over_numpy']:.1f}", flush=True)
    gpu_parts = [p for p in ("uva", "dma", "hbm", "e2e") if p in parts]
    if not cuda:
        for p in gpu_parts:
            result[p] = {"skipped": NEEDS_GPU}
        if gpu_parts:
            print(f"{', '.join(gpu_parts)}: skipped, {NEEDS_GPU}", flush=True)
    else:
        table = None
        if "uva" in parts or "dma" in parts:
            table, pin_s = _big_table(args.max_table_gib)
            result["table"] = {"gib": table.nbytes / GiB, "alloc_and_pin_s": pin_s, "pin_s": table.pin_s}
            print(f"pinned a {table.nbytes / GiB:.0f} GiB table in {pin_s:.1f} s", flush=True)
        if "uva" in parts:
            attempt("uva", lambda: bench_uva(table, args.quick, reps))
        if "dma" in parts:
            attempt("dma", lambda: bench_dma(table, args.quick, reps, args.threads))
        if table is not None:
            table.close()
        if "hbm" in parts:
            attempt("hbm", lambda: bench_hbm(args.quick, reps))
        if "e2e" in parts:
            attempt("e2e", lambda: bench_e2e(args.quick, args.e2e_table_gib, ["none", "hbm", "host_dma", "host_uva"]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=float))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
