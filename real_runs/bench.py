"""GPU benchmarks of the real Engram paths, written as JSON.

    python -m real_runs.bench --quick --out out/bench.json [--parts hash,uva,dma,hbm,e2e] [--max-table-gib 64]
                              [--e2e-batches 512,128]

- hash: Numba N-gram hashing M tokens/s and its ratio to the NumPy reference (runs on CPU too);
- uva:  the host_uva gather kernel at 4K-256K rows of 160/256/1024 B on 1-64 GiB pinned tables,
        fresh (sorted, unique) ids every repetition, CUDA-event timed;
- dma:  host_dma end to end, 16K x 256 B rows from a 64 GiB table, host-timed (dedup, Numba gather
        into pinned staging, async H2D copy, expand), plus its gather and copy parts;
- hbm:  index_select from an HBM table at 160 B / 256 B / 1 KB rows;
- e2e:  Dense-4B decode with Engram at layer id 1 per placement (none = no Engram, hbm, host_dma,
        host_uva, hbm_cache) at each of --e2e-batches (default 512 and 128; KV cache of 560 tokens a
        sequence, as the H100 end-to-end experiment): tokens/s and the overhead of each against the table
        in HBM and against no Engram; the table is the largest both host memory and the GPU (for the hbm
        run) hold beside that batch's KV cache.

Without a CUDA GPU only `hash` runs; the other parts record {"skipped": "needs a CUDA GPU"}.
Each part also records its own errors instead of stopping the others.

Every figure is then checked, in the same run, against the issue's targets and the H100
reference measurements shipped in profiles/reference/ (taken with simple kernels on one
H100 SXM machine): `targets` in the JSON, one row per check, and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from profiles.reference import reference_limits, reference_step_fetch
from real_runs.instrument import available_gib
from real_runs.timing import HOST_AHEAD_CYCLES, fresh_ids
from vocab.config import load_config
from vocab.memory import memory_footprint
from vocab.records import CPU_GATHER, H2D_LINK
from vocab.units import GiB

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
                    ids = torch.from_numpy(fresh_ids(rng, footprint_rows, n)).cuda()
                    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    torch.cuda._sleep(HOST_AHEAD_CYCLES)   # the GPU waits for the host: device time only
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
            ids = fresh_ids(rng, table.rows, n)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            f = store.prefetch(ids)
            store.wait(f)
            torch.cuda.synchronize()
            t1 = time.perf_counter()
            if r:
                totals.append(t1 - t0)
                gathers.append(sum(e - s for a, _, s, e in f.events if a == CPU_GATHER) * 1e-9)
                copies.append(sum(s.elapsed_time(e) * 1e-3 for a, _, s, e in f.events if a == H2D_LINK))
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
        view = table[: (gib * GiB // row_bytes) * row_bytes].view(-1, row_bytes).view(torch.bfloat16)
        for n in (16384, 262144):
            times = []
            for r in range(reps + 1):
                ids = torch.from_numpy(rng.integers(0, view.shape[0], n)).cuda()
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda._sleep(HOST_AHEAD_CYCLES)
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


# The e2e runs' batches, and their KV length: that of the H100 end-to-end experiment
# (profiles/reference/h100-e2e-decode-b512.json); 512 sequences of up to 1024 tokens would need 81 GB of KV.
E2E_BATCHES = (512, 128)
E2E_CONTEXT = 560


def e2e_config(quick: bool, table_gib: float, batch: int = E2E_BATCHES[0]):
    return (load_config("dense-4b-100b").with_table_gib(table_gib)
            .with_workload(sequences=int(batch), steps=20 if quick else 50,
                           lengths={"dist": "fixed", "low": E2E_CONTEXT, "high": E2E_CONTEXT})
            .with_placement(hash_threads=8, gather_threads=8))


def largest_e2e_tables_gib(quick: bool, host_available_bytes: float, gpu_free_bytes: float,
                           batch: int = E2E_BATCHES[0]) -> tuple[float, float]:
    """(host, hbm): the largest table (whole GiB) host memory holds, and the largest the GPU holds beside the
    model and its KV cache (as run: K and V), with margins for activations, staging and the OS."""
    fp = memory_footprint(e2e_config(quick, 1.0, batch), gpu_free_bytes)
    gpu_room = gpu_free_bytes * 0.9 - fp["weights_bytes"] - fp["kv_bytes_as_run"] - 4 * GiB
    host_room = host_available_bytes * 0.6
    return float(max(1, int(host_room // GiB))), float(max(1, int(min(gpu_room, host_room) // GiB)))


def bench_e2e(quick: bool, table_gib: float | None, placements: list[str], records: Path | None = None,
              batch: int = E2E_BATCHES[0]) -> dict:
    """Each placement's decode throughput at `batch` sequences. The host placements use the largest table host
    memory allows; `hbm` the largest the GPU holds (the same when that is as large): the gather from HBM costs
    the same whatever the table's size, so it stands for the table in HBM at the host size too."""
    import torch

    from real_runs.runner import run

    if table_gib is None:
        free, _ = torch.cuda.mem_get_info()
        host_gib, hbm_gib = largest_e2e_tables_gib(quick, available_gib() * GiB, free, batch)
    else:
        host_gib = hbm_gib = table_gib
    out = {"batch": int(batch), "host_table_gib": host_gib, "hbm_table_gib": hbm_gib, "runs": {}}
    for placement in placements:
        gib = hbm_gib if placement == "hbm" else host_gib
        cfg = e2e_config(quick, gib, batch)
        out.setdefault("config", cfg.to_dict())
        try:
            name = f"e2e-dense4b-b{batch}-{gib:g}gib-decode-{placement}.json"
            out_file = None if records is None else records / name
            rec = run(cfg, placement=placement, warmup=2, out=out_file)
            s = rec.summary
            out["runs"][placement] = {"table_gib": 0.0 if placement == "none" else gib,
                                      **{k: s[k] for k in ("tokens_per_s", "step_time_s", "exposed_stall_s",
                                                           "fetch_time_s", "overlap_fraction")}}
            print(f"e2e B={batch} {placement:>9} ({gib:g} GiB): {s['tokens_per_s']:.0f} tok/s, stall "
                  f"{s['exposed_stall_s'] * 1e3:.3f} ms/step, fetch {s['fetch_time_s'] * 1e3:.3f} ms/step", flush=True)
        except Exception as e:  # record and go on with the next placement
            out["runs"][placement] = {"table_gib": gib, "error": f"{type(e).__name__}: {e}"}
        torch.cuda.empty_cache()
    for name, key in (("none", "overhead_vs_no_engram"), ("hbm", "overhead_vs_hbm")):
        base = out["runs"].get(name, {}).get("tokens_per_s")
        if base:
            for placement, r in out["runs"].items():
                if "tokens_per_s" in r:
                    r[key] = 1 - r["tokens_per_s"] / base
    return out



# The targets (issue 3): (what, unit, target, direction); direction +1: measured >= target, -1: <=.
HASH_MIN_TOKENS_PER_S = 100e6
HASH_MIN_RATIO = 20.0
DMA_MAX_S = 250e-6            # 16K rows of 256 B from a 64 GiB table, end to end
HBM_MIN_GBPS = 1100.0         # 1 KB rows, payload
E2E_MAX_OVERHEAD = 0.03       # best host path against the table in HBM


def _check(name: str, measured, target, unit: str, higher_is_better: bool, reference=None, note: str = "") -> dict:
    ok = None if measured is None else (measured >= target if higher_is_better else measured <= target)
    return {"check": name, "measured": measured, "target": target, "unit": unit,
            "target_is": "at least" if higher_is_better else "at most", "reference": reference, "ok": ok,
            "note": note}


def evaluate(result: dict, ref_points: list[dict], ref: dict | None = None) -> list[dict]:
    """One row per target of the issue, from a bench result; `ok` None where the part did not run.
    ref_points: reference_step_fetch(); ref: reference_limits() (read when not given)."""
    ref = ref or reference_limits()
    rows = []
    h = result.get("hash", {})
    threads = h.get("threads")
    rows.append(_check("hashing, Numba", h.get("numba_tokens_per_s"), HASH_MIN_TOKENS_PER_S, "tokens/s", True,
                       ref["hash_tokens_per_s"], f"{threads} threads; the target is for 16 cores" if threads else ""))
    rows.append(_check("hashing, Numba / NumPy", h.get("ratio_numba_over_numpy"), HASH_MIN_RATIO, "x", True,
                       None, f"{threads} threads against one" if threads else ""))
    uva = result.get("uva") if isinstance(result.get("uva"), list) else []
    measured = {(round(p["table_gib"]), p["row_bytes"], p["rows"]): p["median_s"] for p in uva}
    for r in ref_points:
        if not r.get("uva_ok", True):
            continue
        key = (r["gib"], r["row_bytes"], r["rows"])
        m = measured.get(key)
        rows.append(_check(f"host_uva gather {r['gib']} GiB, {r['row_bytes']} B x {r['rows']}", m, r["uva_s"], "s",
                           False, r["uva_s"], "at most the reference kernel's time" +
                           (f": x{r['uva_s'] / m:.2f} its rate" if m else "")))
    dma = result.get("dma") if isinstance(result.get("dma"), list) else []
    point = next((p for p in dma if p["rows"] == 16384 and p["row_bytes"] == 256 and p["table_gib"] >= 63), None)
    dma_ref = next((r["cpu_path_s"] for r in ref_points
                    if (r["gib"], r["row_bytes"], r["rows"]) == (64, 256, 16384)), None)
    rows.append(_check("host_dma 16K x 256 B from 64 GiB, end to end", point and point["end_to_end_s"], DMA_MAX_S,
                       "s", False, dma_ref, "" if point or not dma else "no 64 GiB table (--max-table-gib)"))
    hbm = result.get("hbm") if isinstance(result.get("hbm"), list) else []
    best = max((p["gb_per_s"] for p in hbm if p["row_bytes"] == 1024), default=None)
    rows.append(_check("hbm gather, 1 KB rows", best, HBM_MIN_GBPS, "GB/s", True, ref["hbm_gather_1k_gbps"]))
    e2e_result = result.get("e2e") if isinstance(result.get("e2e"), dict) else {}
    # {"batches": [one result a batch]}; a single batch's result (older files) is the one batch
    for one in e2e_result.get("batches", [e2e_result]):
        rows += _e2e_checks(one)
    return rows


def _e2e_checks(e2e_result: dict) -> list[dict]:
    """The e2e targets of one batch's runs."""
    e2e = e2e_result.get("runs", {})
    hbm_tps = e2e.get("hbm", {}).get("tokens_per_s")
    host = {k: v for k, v in e2e.items() if k.startswith("host_") and "tokens_per_s" in v}
    what = f"e2e Dense-4B decode B={e2e_result['batch']}" if "batch" in e2e_result else "e2e Dense-4B decode"
    sizes = (f" ({e2e_result.get('host_table_gib', 0):g} GiB in host memory, {e2e_result.get('hbm_table_gib', 0):g} "
             f"GiB in HBM)" if e2e_result.get("host_table_gib") != e2e_result.get("hbm_table_gib") else "")
    rows = [_check(f"{what}, {kind} against hbm{sizes}", 1 - r["tokens_per_s"] / hbm_tps if hbm_tps else None,
                   E2E_MAX_OVERHEAD, "overhead", False, None, "the paper: 1.9-2.8 % against no Engram, on an H800")
            for kind, r in sorted(host.items())]
    if host and hbm_tps:
        kind = max(host, key=lambda k: host[k]["tokens_per_s"])
        rows.append(_check(f"{what}, best host path ({kind}) against hbm{sizes}",
                           1 - host[kind]["tokens_per_s"] / hbm_tps, E2E_MAX_OVERHEAD, "overhead", False, None))
    else:
        rows.append(_check(f"{what}, best host path against hbm", None, E2E_MAX_OVERHEAD, "overhead", False))
    return rows


def print_targets(rows: list[dict]) -> None:
    def fmt(v, unit):
        if v is None:
            return "-"
        if unit == "s":
            return f"{v * 1e6:.1f} us"
        if unit == "overhead":
            return f"{v:.2%}"
        if unit == "tokens/s":
            return f"{v / 1e6:.1f} M tok/s"
        return f"{v:.4g} {unit}"

    def line(r):
        verdict = {True: "pass", False: "FAIL", None: "not run"}[r["ok"]]
        ref = f", reference {fmt(r['reference'], r['unit'])}" if r["reference"] is not None else ""
        note = f" ({r['note']})" if r["note"] else ""
        print(f"  {verdict:7s} {r['check']}: {fmt(r['measured'], r['unit'])}, target {r['target_is']} "
              f"{fmt(r['target'], r['unit'])}{ref}{note}")

    print("\ntargets (issue 3), each against the H100 reference where there is one:")
    uva = [r for r in rows if r["check"].startswith("host_uva gather")]
    for r in rows:
        if r not in uva:
            line(r)
    ran = [r for r in uva if r["ok"] is not None]
    if not ran:
        print(f"  not run host_uva gather at the {len(uva)} reference points")
        return
    speed = [r["reference"] / r["measured"] for r in ran]
    print(f"  {'pass' if all(r['ok'] for r in ran) else 'FAIL':7s} host_uva gather at least the reference kernel's "
          f"rate: {sum(r['ok'] for r in ran)} of {len(uva)} points (x{min(speed):.2f} to x{max(speed):.2f} its rate)")
    for r in ran:
        if not r["ok"]:
            line(r)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m real_runs.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer sizes and repetitions")
    ap.add_argument("--out", default="out/bench.json", help="JSON file to write")
    ap.add_argument("--parts", default="hash,uva,dma,hbm,e2e", help="comma-separated parts to run")
    ap.add_argument("--max-table-gib", type=float, default=64.0, help="largest pinned host table")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions per point (default 12; quick 5)")
    ap.add_argument("--e2e-table-gib", type=float, default=None,
                    help="Engram table size of the e2e runs (default: the largest host memory and, for the hbm run, "
                         "the GPU allow)")
    ap.add_argument("--threads", type=int, default=None, help="Numba gather threads (default: all)")
    ap.add_argument("--records", default=None, help="folder for the e2e runs' records (default: none written)")
    ap.add_argument("--e2e-batches", default=",".join(map(str, E2E_BATCHES)),
                    help="comma-separated decode batch sizes of the e2e runs (default 512,128)")
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
            print(f"hash: numba {h['numba_m_tokens_per_s']:.1f} M tok/s ({h['threads']} threads; "
                  f"{h['numba_fresh_output_tokens_per_s'] / 1e6:.1f} into fresh memory), numpy "
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
            def pin():
                nonlocal table
                table, pin_s = _big_table(args.max_table_gib)
                print(f"pinned a {table.nbytes / GiB:.0f} GiB table in {pin_s:.1f} s", flush=True)
                return {"gib": table.nbytes / GiB, "alloc_and_pin_s": pin_s, "pin_s": table.pin_s}
            attempt("table", pin)
        for name, fn in (("uva", lambda: bench_uva(table, args.quick, reps)),
                         ("dma", lambda: bench_dma(table, args.quick, reps, args.threads))):
            if name in parts:
                if table is None:
                    result[name] = {"skipped": f"no pinned table: {result['table'].get('error')}"}
                else:
                    attempt(name, fn)
        if table is not None:
            torch.cuda.synchronize()
            table.close()
        if "hbm" in parts:
            attempt("hbm", lambda: bench_hbm(args.quick, reps))
        if "e2e" in parts:
            batches = [int(b) for b in args.e2e_batches.split(",") if b.strip()]
            attempt("e2e", lambda: {"batches": [
                bench_e2e(args.quick, args.e2e_table_gib, ["none", "hbm", "host_dma", "host_uva", "hbm_cache"],
                          Path(args.records) if args.records else None, batch) for batch in batches]})
    result["targets"] = evaluate(result, reference_step_fetch())
    print_targets(result["targets"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=float))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
