"""`engram-sim calibrate`: measure this machine into a hardware profile.

    engram-sim calibrate [--out profiles/NAME.toml] [--quick] [--cpu-only] [--base PROFILE]

Every figure is the median of repeated timings after a warm-up (host timings by
time.perf_counter, GPU timings by CUDA events), taken with the project's own
kernels: N-gram hashing (real_runs/hashing.py), the Numba gather into staging
and the dedup (real_runs/stores.py), the zero-copy gather (real_runs/cuda_gather.py).
Curves are fitted with profiles/fit.py and written with the raw points beside
the fitted numbers; points the profile schema has no field for are written as
comments in the TOML.

- CPU side (always): hashing rate versus threads, CPU gather into staging versus
  threads and row bytes, the gather's fixed cost, dedup rate, memcpy bandwidth,
  CPU model, cores and memory.
- GPU side (with a CUDA GPU, unless --cpu-only): H2D/D2H pinned and pageable
  copies versus size, both directions at once, device-to-device bandwidth, HBM
  gather versus row bytes, zero-copy gather versus row bytes x table footprint x
  rows per step (sorted ids, and random order at 16K rows), bf16 matmul on a
  large GEMM and on real layer shapes, the backbone's own expert (grouped mm)
  and attention kernels in prefill (-> matmul_efficiency) and decode
  (memory-bound -> memory_efficiency), kernel launch overhead, pinned-allocation
  rates, NVML facts.
  With --cpu-only the gpu, link and uva sections are copied from --base and the
  provenance says so.

The profile is written atomically (a temporary file in the target folder,
validated by profiles.load_profile, then moved into place): nothing is written
when a measurement or the validation fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import math
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

from profiles import load_profile
from profiles.reference import reference_figures
from vocab.errors import ProfileError, UserError
from vocab.files import atomic_write_text, check_writable_file

GiB = 1 << 30
MiB = 1 << 20
KiB = 1 << 10

NO_GPU = "no CUDA GPU found"
NO_GPU_FIX = "use --cpu-only to measure the CPU side only"

# The project's demo hashing configuration (real_runs.hashing.bench_hashing): 2 orders x 8 heads.
HASH_CONFIG = dict(engram_vocab_size=[646400, 646400], max_ngram_size=3, n_head_per_ngram=8, layer_ids=[1, 15],
                   compressed_vocab_size=99092, compressed_pad_id=2, seed=0)

# Real layer shapes (M, K, N) of Engram-27B (sim/presets/engram-27b.toml) in a 16K-token prefill
# chunk: attention projections, and one routed expert's GEMMs (16384 tokens x top-6 / 55 experts).
LAYER_GEMMS = {
    "attention qkv": (16384, 2560, 3 * 32 * 192),
    "attention out": (16384, 32 * 192, 2560),
    "moe expert gate+up": (1792, 2560, 2 * 1536),
    "moe expert down": (1792, 1536, 2560),
}

# The rest of that layer as the backbone runs it (real_runs/backbone.py), so the rates are those of the
# real run's own kernels: the 55 routed experts over the chunk's 16384 x top-6 rows (MoE._experts:
# torch._grouped_mm where it works, else a loop over experts), and causal SDPA over the chunk.
MOE_EXPERTS = dict(tokens=16384, hidden=2560, routed=55, top_k=6, inter=1536)
PREFILL_ATTENTION = dict(tokens=16384, heads=32, head_dim=192)
# Memory-bound work of a decode step: decode_attention reading a KV cache, and the qkv projection of
# 512 sequences (reads its weights once). Their achieved read rate over hbm_gbps is memory_efficiency.
DECODE_ATTENTION = dict(batch=64, heads=32, kv_heads=32, head_dim=192, context=2048)
DECODE_GEMM = (512, 2560, 3 * 32 * 192)
# Zero-copy gathers are also timed with the same ids in random order (sorted is what the stores do).
UVA_RANDOM_ROWS = 16384

class CalibrateError(UserError):
    """Calibration cannot run or cannot write its profile."""


# -- sizes --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Sizes:
    """How much each measurement does. FULL and QUICK below; tests shrink them."""
    warmup: int
    repeats: int
    # CPU side
    hash_tokens: int
    gather_table_bytes: int           # capped by the machine's available memory
    gather_row_bytes: tuple
    gather_payload_bytes: int         # bytes gathered per timed call
    gather_fixed_rows: tuple          # row counts of the fixed-cost fit (256 B rows, all threads)
    dedup_lookups: int
    memcpy_bytes: int
    all_thread_counts: bool           # every power of two up to the cores (else 1 and all)
    # GPU side
    copy_sizes: tuple
    pageable_sizes: tuple
    bidir_bytes: int                  # per direction
    d2d_bytes: int
    hbm_table_bytes: int
    hbm_row_bytes: tuple
    hbm_payload_bytes: int
    uva_table_gib: tuple              # footprints, capped by host memory
    uva_row_bytes: tuple
    uva_rows: tuple
    gemm_n: int
    launch_kernels: int
    pin_bytes: int


FULL = Sizes(
    warmup=2, repeats=7,
    hash_tokens=1 << 21, gather_table_bytes=2 * GiB, gather_row_bytes=(64, 128, 256, 512, 1024, 2048, 4096),
    gather_payload_bytes=64 * MiB, gather_fixed_rows=(64, 256, 1024, 4096, 16384, 65536),
    dedup_lookups=1 << 22, memcpy_bytes=512 * MiB, all_thread_counts=True,
    copy_sizes=(4 * KiB, 64 * KiB, 256 * KiB, MiB, 4 * MiB, 16 * MiB, 64 * MiB, 256 * MiB, GiB),
    pageable_sizes=(16 * MiB, 256 * MiB), bidir_bytes=512 * MiB, d2d_bytes=GiB,
    hbm_table_bytes=8 * GiB, hbm_row_bytes=(64, 128, 256, 512, 1024, 2048, 4096), hbm_payload_bytes=256 * MiB,
    uva_table_gib=(1, 4, 16, 64), uva_row_bytes=(64, 256, 1024, 4096), uva_rows=(4096, 16384, 65536, 262144),
    gemm_n=8192, launch_kernels=2000, pin_bytes=GiB,
)

QUICK = Sizes(
    warmup=1, repeats=5,
    hash_tokens=1 << 19, gather_table_bytes=256 * MiB, gather_row_bytes=(64, 256, 1024, 4096),
    gather_payload_bytes=16 * MiB, gather_fixed_rows=(64, 1024, 16384),
    dedup_lookups=1 << 20, memcpy_bytes=128 * MiB, all_thread_counts=False,
    copy_sizes=(4 * KiB, 64 * KiB, MiB, 16 * MiB, 256 * MiB, GiB),
    pageable_sizes=(256 * MiB,), bidir_bytes=256 * MiB, d2d_bytes=512 * MiB,
    hbm_table_bytes=2 * GiB, hbm_row_bytes=(64, 256, 1024, 4096), hbm_payload_bytes=64 * MiB,
    uva_table_gib=(1, 8), uva_row_bytes=(256, 1024), uva_rows=(4096, 16384, 262144),
    gemm_n=8192, launch_kernels=1000, pin_bytes=256 * MiB,
)


# -- small helpers --------------------------------------------------------------------------------------

def tool_version() -> str:
    try:
        from importlib.metadata import version
        return version("engram-sim")
    except Exception:
        return "dev"


def sig(x: float, digits: int = 4) -> float:
    """x rounded to `digits` significant digits (profiles stay readable)."""
    x = float(x)
    if x == 0 or not math.isfinite(x):
        return x
    return float(f"{x:.{digits}g}")


# Host warm-up lasts at least this long: idle cores (of a VM especially) take a while to wake
# up, and Numba's worker threads to spin up, after the thread count changes.
# Timed calls likewise go on for at least TIMED_S (at most MAX_CALLS calls), so that a short
# disturbance (another process on a shared machine) cannot move the median.
WARM_S = 0.25
TIMED_S = 0.3
MAX_CALLS = 200


def median_time(fn, warmup: int, repeats: int, setup=None) -> float:
    """Median seconds of fn() by time.perf_counter.

    Warm-up: at least `warmup` untimed calls and WARM_S seconds of them; then at least
    `repeats` timed calls and TIMED_S seconds of them (at most MAX_CALLS calls each).
    setup(i) (untimed) runs before call i and returns fn's argument when given."""
    i = 0
    start = time.perf_counter()
    while i < warmup or (time.perf_counter() - start < WARM_S and i < MAX_CALLS):
        fn(setup(i)) if setup else fn()
        i += 1
    times = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start < TIMED_S and len(times) < MAX_CALLS):
        arg = setup(i) if setup else None
        t0 = time.perf_counter()
        fn(arg) if setup else fn()
        times.append(time.perf_counter() - t0)
        i += 1
    return max(float(np.median(times)), 1e-9)


# GPU cycles of a spin kernel queued before each timed call (about 0.5 ms): the host issues the call
# while the GPU spins, so the events time the device work and not Python's launch overhead (which
# kernel_launch_us measures on its own).
HOST_AHEAD_CYCLES = 1_000_000


def cuda_median_time(fn, warmup: int, repeats: int, setup=None) -> float:
    """Median seconds of fn() by CUDA events on the current stream after `warmup` untimed calls."""
    import torch

    total = warmup + repeats
    times = []
    for i in range(total):
        arg = setup(i) if setup else None
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(HOST_AHEAD_CYCLES)
        start.record()
        fn(arg) if setup else fn()
        end.record()
        end.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end) * 1e-3)
    return max(float(np.median(times)), 1e-9)


def thread_counts(max_threads: int, all_counts: bool) -> list[int]:
    """1, 2, 4, ... and max_threads (quick: 1 and max_threads)."""
    out = {1, max_threads}
    if all_counts:
        t = 2
        while t < max_threads:
            out.add(t)
            t *= 2
    return sorted(out)


def fresh_ids(rng, footprint_rows: int, n: int) -> np.ndarray:
    """n distinct row ids drawn uniformly from [0, footprint_rows), sorted (int64)."""
    n = min(n, footprint_rows)
    draw = n
    while True:
        ids = np.unique(rng.integers(0, footprint_rows, size=draw + 8))
        if ids.size >= n:
            break
        draw = int(draw * 1.5) + 8
    if ids.size > n:
        ids = np.sort(rng.choice(ids, size=n, replace=False))
    return ids.astype(np.int64)


def slug(text: str) -> str:
    text = re.sub(r"\((R|TM|tm|r)\)|\bCPU\b|@.*$", " ", text)
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "machine"


def _human_bytes(n: float) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            v = n / size
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{n:.0f} B"


# -- machine facts ---------------------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def meminfo_gib(key: str) -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024 / GiB
    except (OSError, ValueError, IndexError):
        pass
    return None


def memory_gib() -> float:
    total = meminfo_gib("MemTotal")
    if total is None:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
        except (ValueError, OSError, AttributeError):
            total = 1.0
    return total


def available_gib() -> float:
    avail = meminfo_gib("MemAvailable")
    return avail if avail is not None else memory_gib() / 2


def numba_max_threads() -> int:
    import numba
    return max(1, min(os.cpu_count() or 1, numba.config.NUMBA_NUM_THREADS))


# -- fitting helpers -----------------------------------------------------------------------------------

def best_per_core(rates_by_threads: dict) -> tuple[float, int]:
    """(rate / threads at the thread count with the highest rate, that thread count)."""
    best_t = max(rates_by_threads, key=lambda t: (rates_by_threads[t], -t))
    return rates_by_threads[best_t] / best_t, int(best_t)


def fit_gather_curve(gbps: dict, within: float = 0.95) -> tuple[list[dict], int]:
    """CPU gather points {(row_bytes, threads): GB/s} -> (per-thread curve, max threads).

    max threads: the fewest threads at which every row size reaches, on average,
    `within` of its best rate (more threads add nothing); the per-thread rate of a
    row size is its best rate divided by that count, so the simulator's
    per_thread x min(threads, max_threads) gives the best rate from there on.
    """
    sizes = sorted({rb for rb, _ in gbps})
    threads = sorted({t for _, t in gbps})
    best = {rb: max(v for (r, _), v in gbps.items() if r == rb) for rb in sizes}
    mean_share = {t: float(np.mean([gbps.get((rb, t), 0.0) / best[rb] for rb in sizes])) for t in threads}
    max_threads = min(t for t in threads if mean_share[t] >= within) if any(
        v >= within for v in mean_share.values()) else threads[-1]
    return [{"x": rb, "y": sig(best[rb] / max_threads)} for rb in sizes], int(max_threads)


def copy_engines_from(h2d_gbps: float, d2h_gbps: float, both_gbps: float) -> int:
    """2 when copying both directions at once moves clearly more than either alone, else 1."""
    return 2 if both_gbps > 1.3 * max(h2d_gbps, d2h_gbps) else 1


def _uva_translation_us(fit, p: dict) -> float:
    from profiles.fit import miss_fraction, units_touched

    footprint = p["table_gib"] * GiB
    walks = float(units_touched(p["rows"], footprint, fit.translation_unit_kib * 1024)
                  * miss_fraction(footprint, fit.tlb_reach_gib * GiB, fit.miss_exponent))
    return (p["rows"] * fit.row_ns * 1e-3 + p["rows"] * p["row_bytes"] * fit.byte_ps * 1e-6
            + walks * fit.walk_ns * 1e-3)


def fit_uva_points(points: list[dict], iterations: int = 10):
    """Fit the whole zero-copy model, payload limit included, to measured points.

    profiles.fit.fit_uva fits the translation part only, so the points limited by the
    payload rate must be left out of it, and which ones those are depends on the fit:
    start from the points below 80 % of the best payload rate, then alternate (fit the
    translation part; max_gbps = best bytes / (us - fixed); keep the points whose
    predicted translation time is at least their payload time) until the set settles.
    Returns (UvaFit, max_gbps, points used, max relative error of the whole model over
    all points), from the iteration with the smallest such error.
    """
    from profiles.fit import fit_uva

    def rate(p):
        return p["rows"] * p["row_bytes"] / (p["us"] * 1e-6) / 1e9

    best_rate = max(rate(p) for p in points)
    keep = [p for p in points if rate(p) < 0.8 * best_rate]
    if len(keep) < 4:
        keep = list(points)
    best = None
    for _ in range(iterations):
        fit = fit_uva([p["table_gib"] for p in keep], [p["row_bytes"] for p in keep], [p["rows"] for p in keep],
                      [p["us"] for p in keep])
        max_gbps = max(p["rows"] * p["row_bytes"] / max(p["us"] - fit.fixed_us, 0.02 * p["us"]) * 1e-3
                       for p in points)
        err = max(abs(fit.fixed_us + max(_uva_translation_us(fit, p), p["rows"] * p["row_bytes"] / (max_gbps * 1e3))
                      - p["us"]) / p["us"] for p in points)
        if best is None or err < best[3]:
            best = (fit, max_gbps, list(keep), err)
        new = [p for p in points if _uva_translation_us(fit, p) >= p["rows"] * p["row_bytes"] / (max_gbps * 1e3)]
        if len(new) < 4 or new == keep:
            break
        keep = new
    return best


# -- TOML writer -----------------------------------------------------------------------------------------

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _toml_str(key)


def _toml_str(s: str) -> str:
    out = ['"']
    for ch in s:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _plain(value):
    """Dataclasses (also inside lists) to dicts."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if getattr(value, f.name) is not None}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        text = repr(v)
        return text if any(c in text for c in ".eE") else text + ".0"
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }" if v else "{}"
    if isinstance(v, (list, tuple)):
        if not v:
            return "[]"
        items = [_toml_value(x) for x in v]
        if any(isinstance(x, dict) for x in v):
            return "[\n" + "".join(f"  {item},\n" for item in items) + "]"
        return "[" + ", ".join(items) + "]"
    raise TypeError(f"cannot write {type(v).__name__} {v!r} as TOML")


def dump_toml(data, comments: dict | None = None, header: list[str] | None = None) -> str:
    """A dict (or dataclass) as TOML text: scalars and arrays first, then [tables] (nested: [a.b]).

    Arrays of tables are written as arrays of inline tables. comments: {table name: [lines]}
    written under that table's header ("" for the top); header: lines at the very top."""
    data = _plain(data)
    comments = comments or {}
    lines = [f"# {c}" if c else "#" for c in (header or [])]

    def emit(table: dict, name: str) -> None:
        if name:
            if lines:
                lines.append("")
            lines.append(f"[{name}]")
        lines.extend(f"# {c}" if c else "#" for c in comments.get(name, []))
        subtables = []
        for key, value in table.items():
            if isinstance(value, dict):
                subtables.append((key, value))
            else:
                lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
        for key, value in subtables:
            emit(value, f"{name}.{_toml_key(key)}" if name else _toml_key(key))

    emit(data, "")
    return "\n".join(lines) + "\n"


# -- output path -----------------------------------------------------------------------------------------

def default_out(machine_slug: str, today: str) -> Path:
    return Path("profiles") / f"{machine_slug}-measured-{today}.toml"


def check_out(out: Path) -> None:
    """Refuse an --out that cannot be written, before minutes of measuring."""
    check_writable_file(out, "--out")


def write_profile_atomic(text: str, out: Path) -> None:
    """Write text to a temporary file beside `out`, validate it as a profile, then move it into place."""
    def check(tmp: Path) -> None:
        try:
            load_profile(tmp)
        except ProfileError as e:
            raise CalibrateError("calibrate", f"the measured profile does not validate ({e})",
                                 "nothing was written; please report this with the figures above") from None

    try:
        atomic_write_text(out, text, check=check, fsync=True)
    except OSError as e:
        raise CalibrateError("--out", f"cannot write {out} ({e.strerror or e})", "give a writable path") from None


# -- CPU measurements (generators: each yields a label after each measurement) ------------------------

def cpu_plan(sizes: Sizes) -> dict:
    max_t = numba_max_threads()
    threads = thread_counts(max_t, sizes.all_thread_counts)
    table_bytes = int(min(sizes.gather_table_bytes, max(64 * MiB, available_gib() * GiB / 4)))
    table_bytes -= table_bytes % max(sizes.gather_row_bytes)
    return {"threads": threads, "max_threads": max_t, "table_bytes": table_bytes,
            "count": (len(threads) + len(sizes.gather_row_bytes) * len(threads) + len(sizes.gather_fixed_rows)
                      + 1 + len(threads))}


def measure_hashing(sizes: Sizes, plan: dict, raw: dict):
    from real_runs.hashing import NgramHasher

    rng = np.random.default_rng(0)
    batch = 64
    ids = rng.integers(0, HASH_CONFIG["compressed_vocab_size"], size=(batch, max(1, sizes.hash_tokens // batch)),
                       dtype=np.int64)
    raw["hash"] = {}
    for t in plan["threads"]:
        c = HASH_CONFIG
        hasher = NgramHasher(c["engram_vocab_size"], c["max_ngram_size"], c["n_head_per_ngram"], c["layer_ids"],
                             c["compressed_vocab_size"], c["compressed_pad_id"], seed=c["seed"], threads=t)
        hasher.hash(ids[:, :8], c["layer_ids"][0])  # compile (or load from cache) outside the timing
        out = hasher.hash(ids, c["layer_ids"][0])    # reused, as a serving loop reuses its buffers
        s = median_time(lambda: hasher.hash(ids, c["layer_ids"][0], out=out), sizes.warmup, sizes.repeats)
        raw["hash"][t] = ids.size / s
        yield f"hash {t}T"


def measure_cpu_gather(sizes: Sizes, plan: dict, raw: dict, pin_staging: bool = False):
    import numba
    import torch

    from real_runs.stores import HostTable, gather_rows

    max_rb = max(sizes.gather_row_bytes)
    table = HostTable(plan["table_bytes"] // max_rb, max_rb // 2, "bf16", pin=False, fill=False)
    flat = table.bytes.reshape(-1)
    step = 256 * MiB
    for off in range(0, flat.size, step):        # touch every page (an untouched page reads as the zero page)
        flat[off:off + step].fill(1)
    raw["gather_table_bytes"] = table.nbytes
    stage_bytes = max(sizes.gather_payload_bytes, max(sizes.gather_fixed_rows) * 256)
    staging_t = torch.empty(stage_bytes, dtype=torch.uint8, pin_memory=pin_staging)
    staging = staging_t.numpy()
    staging.fill(0)
    rng = np.random.default_rng(1)
    before = numba.get_num_threads()
    sets = sizes.warmup + sizes.repeats
    try:
        raw["gather"] = {}
        for rb in sizes.gather_row_bytes:
            words = flat.view(np.uint64).reshape(-1, rb // 8)
            n = sizes.gather_payload_bytes // rb
            id_sets = [fresh_ids(rng, words.shape[0], n) for _ in range(sets)]
            out = staging[:n * rb].view(np.uint64).reshape(n, rb // 8)
            for t in plan["threads"]:
                numba.set_num_threads(t)
                gather_rows(words, id_sets[0][:8], out[:8])  # compile outside the timing
                s = median_time(lambda ids: gather_rows(words, ids, out[:ids.size]), sizes.warmup, sizes.repeats,
                                setup=lambda i: id_sets[i % sets])
                raw["gather"][(rb, t)] = float(np.mean([x.size for x in id_sets])) * rb / s / 1e9
                yield f"cpu gather {rb} B {t}T"
        # Fixed cost per gather call: 256 B rows, all threads, a range of row counts.
        numba.set_num_threads(plan["max_threads"])
        words = flat.view(np.uint64).reshape(-1, 32)
        raw["gather_fixed"] = {}
        reps = max(sizes.repeats, 15)
        for n in sizes.gather_fixed_rows:
            id_sets = [fresh_ids(rng, words.shape[0], n) for _ in range(8)]
            out = staging[:n * 256].view(np.uint64).reshape(n, 32)
            s = median_time(lambda ids: gather_rows(words, ids, out), sizes.warmup + 2, reps,
                            setup=lambda i: id_sets[i % 8])
            raw["gather_fixed"][n] = s * 1e6
            yield f"cpu gather fixed {n} rows"
    finally:
        numba.set_num_threads(before)
        del staging, staging_t, flat
        table.close()


def measure_dedup(sizes: Sizes, plan: dict, raw: dict):
    from real_runs.stores import dedup

    rng = np.random.default_rng(2)
    n = sizes.dedup_lookups
    sets = [rng.integers(0, 4 * n, size=n, dtype=np.int64) for _ in range(3)]
    s = median_time(lambda ids: dedup(ids, 4 * n), sizes.warmup, sizes.repeats, setup=lambda i: sets[i % 3])
    raw["dedup"] = n / s
    yield "dedup"


def measure_memcpy(sizes: Sizes, plan: dict, raw: dict):
    from concurrent.futures import ThreadPoolExecutor

    src = np.ones(sizes.memcpy_bytes, np.uint8)
    dst = np.zeros_like(src)
    raw["memcpy"] = {}
    for t in plan["threads"]:
        bounds = [(i * src.size // t, (i + 1) * src.size // t) for i in range(t)]
        with ThreadPoolExecutor(t) as pool:
            def copy():
                list(pool.map(lambda b: np.copyto(dst[b[0]:b[1]], src[b[0]:b[1]]), bounds))
            s = median_time(copy, sizes.warmup, sizes.repeats)
        raw["memcpy"][t] = src.nbytes / s / 1e9
        yield f"memcpy {t}T"


def cpu_measurements(sizes: Sizes, plan: dict, raw: dict, pin_staging: bool):
    raw["system"] = {"cpu": cpu_model(), "cores": os.cpu_count() or 1, "memory_gib": memory_gib(),
                     "numba_threads": plan["max_threads"], "threads": plan["threads"]}
    yield from measure_hashing(sizes, plan, raw)
    yield from measure_cpu_gather(sizes, plan, raw, pin_staging)
    yield from measure_dedup(sizes, plan, raw)
    yield from measure_memcpy(sizes, plan, raw)


# -- GPU measurements ---------------------------------------------------------------------------------

def nvml_info() -> dict:
    """GPU name, driver, PCIe generation and width from NVML; {"reason": why not} where NVML is missing."""
    try:
        import pynvml
    except ImportError:
        return {"reason": "pynvml is not installed"}
    try:
        import torch

        pynvml.nvmlInit()
        try:
            from real_runs.instrument import nvml_index

            h = pynvml.nvmlDeviceGetHandleByIndex(nvml_index(torch.cuda.current_device()))

            def text(v):
                return v.decode() if isinstance(v, bytes) else str(v)

            info = {"name": text(pynvml.nvmlDeviceGetName(h)), "driver": text(pynvml.nvmlSystemGetDriverVersion())}
            for key, fn in (("pcie_gen", "nvmlDeviceGetMaxPcieLinkGeneration"),
                            ("pcie_width", "nvmlDeviceGetMaxPcieLinkWidth"),
                            ("pcie_gen_now", "nvmlDeviceGetCurrPcieLinkGeneration"),
                            ("pcie_width_now", "nvmlDeviceGetCurrPcieLinkWidth")):
                try:
                    info[key] = int(getattr(pynvml, fn)(h))
                except Exception:
                    pass
            return info
        finally:
            pynvml.nvmlShutdown()
    except Exception as e:  # no NVML library, no permission, ...: work without it
        return {"reason": f"NVML unavailable ({type(e).__name__}: {e})"}


def gpu_plan(sizes: Sizes) -> dict:
    import torch

    from real_runs.cuda_gather import uva_unavailable_reason

    free, total = torch.cuda.mem_get_info()
    host_cap_gib = min(64.0, available_gib() * 0.6)
    uva_reason = uva_unavailable_reason()
    footprints = [g for g in sizes.uva_table_gib if g <= host_cap_gib]
    if not uva_reason and not footprints:
        uva_reason = f"host memory too small for a {min(sizes.uva_table_gib)} GiB pinned table"
    uva_points = [] if uva_reason else [
        (g, rb, n) for rb in sizes.uva_row_bytes for g in footprints for n in sizes.uva_rows
        if n <= (g * GiB // rb) // 2]
    copy_max = int(min(max(sizes.copy_sizes), free * 0.25, available_gib() * GiB * 0.25))
    copy_sizes = [s for s in sizes.copy_sizes if s <= copy_max]
    pageable = [s for s in sizes.pageable_sizes if s <= copy_max] or [copy_sizes[-1]]
    return {
        "free": free, "total": total, "uva_reason": uva_reason, "uva_points": uva_points,
        "uva_table_gib": max(footprints) if footprints else 0,
        "copy_sizes": copy_sizes, "pageable_sizes": pageable,
        "bidir_bytes": int(min(sizes.bidir_bytes, copy_max // 2)),
        "d2d_bytes": int(min(sizes.d2d_bytes, free * 0.2)),
        "hbm_table_bytes": int(min(sizes.hbm_table_bytes, free * 0.4)),
        "count": (2 * len(copy_sizes) + 2 * len(pageable) + 1 + 1 + len(sizes.hbm_row_bytes) + len(uva_points)
                  + sum(n == UVA_RANDOM_ROWS for _, _, n in uva_points)
                  + 1 + len(LAYER_GEMMS) + 2 + 2 + 1 + 1),
    }


def measure_copies(sizes: Sizes, plan: dict, raw: dict):
    import torch

    biggest = max(plan["copy_sizes"] + plan["pageable_sizes"] + [2 * plan["bidir_bytes"]])
    host = torch.empty(biggest, dtype=torch.uint8, pin_memory=True)
    host.fill_(1)
    dev = torch.empty(biggest, dtype=torch.uint8, device="cuda")
    raw["h2d"], raw["d2h"], raw["h2d_pageable"], raw["d2h_pageable"] = {}, {}, {}, {}
    for name, direction in (("h2d", "up"), ("d2h", "down")):
        for n in plan["copy_sizes"]:
            src, dst = (host[:n], dev[:n]) if direction == "up" else (dev[:n], host[:n])
            reps = sizes.repeats if n >= 64 * MiB else max(sizes.repeats, 20)
            s = cuda_median_time(lambda: dst.copy_(src, non_blocking=True), sizes.warmup + 1, reps)
            raw[name][n] = n / s / 1e9
            yield f"{name} {_human_bytes(n)}"
    pageable = torch.empty(max(plan["pageable_sizes"]), dtype=torch.uint8)
    pageable.fill_(1)
    for name, direction in (("h2d_pageable", "up"), ("d2h_pageable", "down")):
        for n in plan["pageable_sizes"]:
            src, dst = (pageable[:n], dev[:n]) if direction == "up" else (dev[:n], pageable[:n])
            s = cuda_median_time(lambda: dst.copy_(src), sizes.warmup, sizes.repeats)
            raw[name][n] = n / s / 1e9
            yield f"{name} {_human_bytes(n)}"
    del pageable
    # Both directions at once, on two streams.
    n = plan["bidir_bytes"]
    up_src, up_dst, down_src, down_dst = host[:n], dev[:n], dev[n:2 * n], host[n:2 * n]
    s_up, s_down = torch.cuda.Stream(), torch.cuda.Stream()

    def both():
        cur = torch.cuda.current_stream()
        s_up.wait_stream(cur)
        s_down.wait_stream(cur)
        with torch.cuda.stream(s_up):
            up_dst.copy_(up_src, non_blocking=True)
        with torch.cuda.stream(s_down):
            down_dst.copy_(down_src, non_blocking=True)
        cur.wait_stream(s_up)
        cur.wait_stream(s_down)

    s = cuda_median_time(both, sizes.warmup, sizes.repeats)
    raw["bidir_gbps"] = 2 * n / s / 1e9
    raw["bidir_bytes"] = n
    host = dev = up_src = up_dst = down_src = down_dst = None
    torch.cuda.empty_cache()
    yield "h2d+d2h at once"


def measure_hbm(sizes: Sizes, plan: dict, raw: dict):
    import torch

    n = plan["d2d_bytes"]
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    a.fill_(1)
    s = cuda_median_time(lambda: b.copy_(a), sizes.warmup, sizes.repeats)
    raw["d2d_gbps"] = 2 * n / s / 1e9          # read + write
    raw["d2d_bytes"] = n
    a = b = None
    torch.cuda.empty_cache()
    yield "d2d"
    table_bytes = plan["hbm_table_bytes"]
    table = torch.empty(table_bytes, dtype=torch.uint8, device="cuda")
    table.fill_(1)
    raw["hbm_gather"] = {}
    raw["hbm_table_bytes"] = table_bytes
    gen = torch.Generator(device="cuda")
    gen.manual_seed(3)
    for rb in sizes.hbm_row_bytes:
        rows = table_bytes // rb
        view = table[:rows * rb].view(torch.bfloat16).view(rows, rb // 2)
        n = max(1, sizes.hbm_payload_bytes // rb)
        out = torch.empty((n, rb // 2), dtype=torch.bfloat16, device="cuda")
        sets = [torch.randint(0, rows, (n,), device="cuda", generator=gen) for _ in range(3)]
        s = cuda_median_time(lambda ids: torch.index_select(view, 0, ids, out=out), sizes.warmup, sizes.repeats,
                             setup=lambda i: sets[i % 3])
        raw["hbm_gather"][rb] = n * rb / s / 1e9
        out = sets = None
        yield f"hbm gather {rb} B"
    table = view = None
    torch.cuda.empty_cache()


def measure_uva(sizes: Sizes, plan: dict, raw: dict):
    import torch

    from real_runs.cuda_gather import uva_gather
    from real_runs.stores import HostTable

    raw["uva"], raw["uva_random"] = [], []
    if not plan["uva_points"]:
        return
    gib = plan["uva_table_gib"]
    t0 = time.perf_counter()
    # One pinned table (mmap + MADV_HUGEPAGE + cudaHostRegister); smaller footprints use its first part.
    table = HostTable(int(gib * GiB) // 256, 128, "bf16", seed=0, pin=True, fill=False)
    raw["pin_register_s_per_gib"] = (time.perf_counter() - t0) / gib
    raw["uva_table_pinned_gib"] = gib
    rng = np.random.default_rng(4)
    try:
        for g, rb, n in plan["uva_points"]:
            footprint_rows = int(g * GiB) // rb
            sets = [torch.from_numpy(fresh_ids(rng, footprint_rows, n)).cuda() for _ in range(sizes.warmup
                                                                                           + sizes.repeats)]
            out = torch.empty(n * rb, dtype=torch.uint8, device="cuda")
            uva_gather(table, rb, sets[0][:64], out[:64 * rb])   # compile outside the timing
            torch.cuda.synchronize()
            s = cuda_median_time(lambda ids: uva_gather(table, rb, ids, out[:ids.numel() * rb]),
                                 sizes.warmup, sizes.repeats, setup=lambda i: sets[i])
            raw["uva"].append({"table_gib": g, "row_bytes": rb, "rows": n, "us": s * 1e6})
            yield f"uva {g} GiB {rb} B x {n}"
            if n == UVA_RANDOM_ROWS:
                gen = torch.Generator(device="cuda")
                gen.manual_seed(5)
                shuffled = [ids[torch.randperm(ids.numel(), device="cuda", generator=gen)] for ids in sets]
                r = cuda_median_time(lambda ids: uva_gather(table, rb, ids, out[:ids.numel() * rb]),
                                     sizes.warmup, sizes.repeats, setup=lambda i: shuffled[i])
                raw["uva_random"].append({"table_gib": g, "row_bytes": rb, "rows": n, "us_sorted": s * 1e6,
                                          "us_random": r * 1e6})
                shuffled = None
                yield f"uva {g} GiB {rb} B x {n}, random order"
            sets = out = None
    finally:
        torch.cuda.synchronize()
        table.close()


def measure_compute(sizes: Sizes, plan: dict, raw: dict):
    import torch

    n = sizes.gemm_n
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    c = torch.empty(n, n, device="cuda", dtype=torch.bfloat16)
    s = cuda_median_time(lambda: torch.matmul(a, b, out=c), sizes.warmup + 2, sizes.repeats)
    raw["gemm_large"] = {"n": n, "tflops": 2 * n ** 3 / s / 1e12}
    a = b = c = None
    yield f"bf16 gemm {n}^3"
    raw["gemm_layers"] = {}
    for name, (m, k, nn) in LAYER_GEMMS.items():
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(k, nn, device="cuda", dtype=torch.bfloat16)
        y = torch.empty(m, nn, device="cuda", dtype=torch.bfloat16)
        s = cuda_median_time(lambda: torch.matmul(x, w, out=y), sizes.warmup + 2, sizes.repeats)
        raw["gemm_layers"][name] = {"shape": [m, k, nn], "s": s, "tflops": 2 * m * k * nn / s / 1e12}
        x = w = y = None
        yield f"bf16 {name}"
    yield from measure_backbone_kernels(sizes, raw)
    torch.cuda.empty_cache()
    x = torch.zeros(1, device="cuda")
    k = sizes.launch_kernels

    def launches():
        for _ in range(k):
            x.add_(1)

    s = cuda_median_time(launches, 1, 3)
    raw["launch_us"] = s / k * 1e6
    yield "kernel launch"


def measure_backbone_kernels(sizes: Sizes, raw: dict, device: str = "cuda", timer=cuda_median_time,
                             moe_shape=MOE_EXPERTS, prefill=PREFILL_ATTENTION, decode=DECODE_ATTENTION,
                             decode_gemm=DECODE_GEMM):
    """The backbone's own expert and attention kernels (real_runs/backbone.py) at Engram-27B shapes.

    (Tests run it on the CPU with small shapes and the host timer.)"""
    import torch
    import torch.nn.functional as F

    from real_runs.backbone import MoE, decode_attention

    bf16 = dict(device=device, dtype=torch.bfloat16)
    m = moe_shape
    gen = torch.Generator(device=device)
    gen.manual_seed(6)
    moe = MoE(m["hidden"], 0, m["routed"], m["top_k"], m["inter"], gen, device, torch.bfloat16)
    rows = m["tokens"] * m["top_k"]
    counts = torch.full((m["routed"],), rows // m["routed"], dtype=torch.int64, device=device)
    counts[:rows % m["routed"]] += 1                          # balanced routing, every row placed
    xs = torch.randn(rows, m["hidden"], **bf16)
    s = timer(lambda: moe._experts(xs, counts), sizes.warmup + 2, sizes.repeats)
    raw["gemm_layers"][f"moe experts ({moe.impl})"] = {
        "shape": [rows, m["hidden"], 3 * m["inter"]], "s": s, "flops": 2 * rows * m["hidden"] * 3 * m["inter"],
        "tflops": 2 * rows * m["hidden"] * 3 * m["inter"] / s / 1e12}
    moe = xs = None
    yield "moe experts"
    a = prefill
    q, k, v = (torch.randn(1, a["heads"], a["tokens"], a["head_dim"], **bf16) for _ in range(3))
    s = timer(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), sizes.warmup + 2,
                         sizes.repeats)
    flops = 4 * a["heads"] * a["head_dim"] * a["tokens"] * (a["tokens"] + 1) / 2   # causal: half the pairs
    raw["gemm_layers"]["attention prefill (causal SDPA)"] = {
        "shape": [a["tokens"], a["head_dim"], a["tokens"]], "s": s, "flops": flops, "tflops": flops / s / 1e12}
    q = k = v = None
    yield "prefill attention"
    d = decode
    q = torch.randn(d["batch"], d["heads"], 1, d["head_dim"], **bf16)
    keys, values = (torch.randn(d["batch"], d["kv_heads"], d["context"], d["head_dim"], **bf16) for _ in range(2))
    pos = torch.full((d["batch"],), d["context"] - 1, dtype=torch.int64, device=device)
    s = timer(lambda: decode_attention(q, keys, values, pos), sizes.warmup + 2, sizes.repeats)
    kv_bytes = 2 * keys.numel() * keys.element_size()
    raw["memory_bound"] = {"decode attention": {"shape": [d["batch"], d["heads"], d["context"], d["head_dim"]],
                                                "bytes": kv_bytes, "s": s, "gbps": kv_bytes / s / 1e9}}
    q = keys = values = None
    yield "decode attention"
    mm, kk, nn = decode_gemm
    x = torch.randn(mm, kk, **bf16)
    w = torch.randn(kk, nn, **bf16)
    s = timer(lambda: x @ w, sizes.warmup + 2, sizes.repeats)
    nbytes = 2 * (kk * nn + mm * kk + mm * nn)
    raw["memory_bound"]["decode qkv projection"] = {"shape": [mm, kk, nn], "bytes": nbytes, "s": s,
                                                    "gbps": nbytes / s / 1e9}
    x = w = None
    yield "decode projection"


def measure_pinning(sizes: Sizes, plan: dict, raw: dict):
    import torch

    from real_runs.stores import HostTable

    n = sizes.pin_bytes
    if hasattr(torch._C, "_host_emptyCache"):
        torch._C._host_emptyCache()   # else a cached pinned block from measure_copies is handed back, unpinned anew
    t0 = time.perf_counter()
    t = torch.empty(n, dtype=torch.uint8, pin_memory=True)
    raw["pin_torch_s_per_gib"] = (time.perf_counter() - t0) / (n / GiB)
    del t
    t0 = time.perf_counter()
    table = HostTable(n // 256, 128, "bf16", pin=True, fill=False)   # mmap + MADV_HUGEPAGE + cudaHostRegister
    raw["pin_register_small_s_per_gib"] = (time.perf_counter() - t0) / (n / GiB)
    raw["pin_bytes"] = n
    table.close()
    yield "pinned allocation"


def gpu_measurements(sizes: Sizes, plan: dict, raw: dict):
    import torch

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    raw["gpu_info"] = {"name": torch.cuda.get_device_name(), "total_bytes": int(props.total_memory),
                       "context_bytes": int(plan["total"] - plan["free"]), "torch": torch.__version__,
                       "cuda": torch.version.cuda, "nvml": nvml_info(), "uva_reason": plan["uva_reason"]}
    yield from measure_copies(sizes, plan, raw)
    yield from measure_hbm(sizes, plan, raw)
    yield from measure_compute(sizes, plan, raw)
    yield from measure_pinning(sizes, plan, raw)
    yield from measure_uva(sizes, plan, raw)


# -- from raw figures to a profile -------------------------------------------------------------------

def _fmt_points(d: dict, key_fmt=str, val_fmt="{:.4g}") -> str:
    return ", ".join(f"{key_fmt(k)}: {val_fmt.format(v)}" for k, v in sorted(d.items()))


def host_section(raw: dict) -> tuple[dict, list[str]]:
    from profiles.fit import fit_linear_time

    sysinfo = raw["system"]
    per_core, hash_best_t = best_per_core(raw["hash"])
    curve, max_threads = fit_gather_curve(raw["gather"])
    fixed = fit_linear_time(list(raw["gather_fixed"]), list(raw["gather_fixed"].values()))
    mem_best_t = max(raw["memcpy"], key=raw["memcpy"].get)
    host = {
        "cpu": f"{sysinfo['cpu']}, {sysinfo['cores']} cores",
        "cpu_cores": int(sysinfo["cores"]),
        "memory_gib": sig(sysinfo["memory_gib"], 3),
        "dram_gbps": sig(2 * raw["memcpy"][mem_best_t]),
        "hash_tokens_per_s_per_core": sig(per_core),
        "dedup_rows_per_s_per_core": sig(raw["dedup"]),
        "cpu_gather_fixed_us": sig(fixed.fixed_us),
        "cpu_gather_max_threads": max_threads,
        "cpu_gather_per_thread": curve,
    }
    threads = sorted(raw["hash"])
    comments = [
        "Raw points (the schema keeps only the fitted numbers for these):",
        f"hashing, tokens/s by threads (2 orders x 8 heads): {_fmt_points(raw['hash'])}",
        f"  hash_tokens_per_s_per_core = rate / threads at the best count ({hash_best_t})",
        f"CPU gather into staging, payload GB/s by (row bytes, threads), "
        f"{_human_bytes(raw['gather_table_bytes'])} table, sorted fresh ids:",
    ]
    for rb in sorted({r for r, _ in raw["gather"]}):
        comments.append(f"  {rb} B: " + ", ".join(f"{t}T {raw['gather'][(rb, t)]:.3g}" for t in threads
                                                  if (rb, t) in raw["gather"]))
    comments += [
        f"  per thread = best rate / cpu_gather_max_threads ({max_threads}: the fewest threads within 5 % of the best)",
        f"CPU gather call, us by rows (256 B, {max(threads)} threads): {_fmt_points(raw['gather_fixed'])}",
        f"  fit: fixed {fixed.fixed_us:.3g} us + {fixed.per_item_ns:.3g} ns/row",
        f"memcpy payload GB/s by threads: {_fmt_points(raw['memcpy'])} (dram_gbps = 2 x best: read + write)",
        f"dedup (np.unique with inverse, 1 thread): {raw['dedup']:.4g} lookups/s",
    ]
    return host, comments


def gpu_sections(raw: dict, base) -> tuple[dict, dict, dict, dict, list[str]]:
    """(gpu, link, uva, comments by table, notes) from the GPU measurements."""
    from profiles.fit import fit_copy

    info = raw["gpu_info"]
    nv = info.get("nvml", {})
    hbm_gib = info["total_bytes"] / GiB
    reserved = min(max(base.gpu.hbm_reserved_gib, info["context_bytes"] / GiB + 1.0), hbm_gib / 2)
    layers = raw["gemm_layers"]
    layer_tflops = (sum(v.get("flops", 2 * np.prod(v["shape"])) for v in layers.values())
                    / sum(v["s"] for v in layers.values()) / 1e12)
    large = raw["gemm_large"]["tflops"]
    mem = raw.get("memory_bound") or {}
    mem_gbps = sum(v["bytes"] for v in mem.values()) / sum(v["s"] for v in mem.values()) / 1e9 if mem else None
    gpu = {
        "name": nv.get("name") or info["name"],
        "hbm_gib": sig(hbm_gib, 3),
        "hbm_reserved_gib": sig(reserved, 3),
        "hbm_gbps": sig(raw["d2d_gbps"]),
        "bf16_tflops": sig(large),
        "fp8_tflops": base.gpu.fp8_tflops,
        "matmul_efficiency": sig(min(1.0, layer_tflops / large), 3),
        "memory_efficiency": (sig(min(1.0, mem_gbps / raw["d2d_gbps"]), 3) if mem_gbps
                              else base.gpu.memory_efficiency),
        "kernel_launch_us": sig(raw["launch_us"], 3),
        "kernels_per_layer": base.gpu.kernels_per_layer,
        "hbm_gather": [{"x": rb, "y": sig(v)} for rb, v in sorted(raw["hbm_gather"].items())],
    }
    h2d_sizes = sorted(raw["h2d"])
    h2d = fit_copy(h2d_sizes, [raw["h2d"][s] for s in h2d_sizes])
    d2h_sizes = sorted(raw["d2h"])
    d2h = fit_copy(d2h_sizes, [raw["d2h"][s] for s in d2h_sizes])
    gen, width = nv.get("pcie_gen"), nv.get("pcie_width")
    kind = f"PCIe Gen{gen} x{width}" if gen and width else (
        f"PCIe (generation and width not read: {nv.get('reason', 'NVML gave none')})")
    link = {
        "kind": kind,
        "h2d_gbps": sig(h2d.peak_gbps),
        "d2h_gbps": sig(d2h.peak_gbps),
        "copy_fixed_us": sig(h2d.fixed_us),
        "copy_engines": copy_engines_from(h2d.peak_gbps, d2h.peak_gbps, raw["bidir_gbps"]),
        "pageable_h2d_gbps": sig(max(raw["h2d_pageable"].values())),
        "h2d_points": [{"x": s, "y": sig(raw["h2d"][s])} for s in h2d_sizes],
    }
    comments = {
        "gpu": [
            f"bf16 GEMM {raw['gemm_large']['n']}^3: {large:.4g} TFLOP/s; real layer shapes (Engram-27B prefill "
            f"chunk) {layer_tflops:.4g} TFLOP/s together:",
            *[f"  {name} {v['shape'][0]}x{v['shape'][1]} @ {v['shape'][1]}x{v['shape'][2]}: {v['tflops']:.4g} TFLOP/s"
              for name, v in layers.items()],
            *([f"memory_efficiency: memory-bound decode work {mem_gbps:.4g} GB/s together / hbm_gbps:",
               *[f"  {name} {'x'.join(map(str, v['shape']))}: {_human_bytes(v['bytes'])} read in "
                 f"{v['s'] * 1e6:.4g} us, {v['gbps']:.4g} GB/s" for name, v in mem.items()]] if mem else []),
            f"hbm_gbps: device-to-device copy of {_human_bytes(raw['d2d_bytes'])}, read + write",
            f"hbm_gather: index_select (bf16 rows, random ids with repeats) from a "
            f"{_human_bytes(raw['hbm_table_bytes'])} table, payload GB/s",
            f"kernel_launch_us: {raw['launch_us']:.3g} us per back-to-back tiny kernel",
        ],
        "link": [
            f"D2H pinned GB/s by bytes: {_fmt_points(raw['d2h'])} (fit: peak {d2h.peak_gbps:.4g}, "
            f"fixed {d2h.fixed_us:.3g} us)",
            f"H2D pageable GB/s by bytes: {_fmt_points(raw['h2d_pageable'])}",
            f"D2H pageable GB/s by bytes: {_fmt_points(raw['d2h_pageable'])}",
            f"H2D + D2H at once ({_human_bytes(raw['bidir_bytes'])} each way): {raw['bidir_gbps']:.4g} GB/s "
            f"together -> copy_engines {link['copy_engines']}",
        ],
    }
    notes = []
    if raw.get("uva"):
        pts = raw["uva"]
        fit, max_gbps, fit_pts, max_err = fit_uva_points(pts)
        uva = {"fixed_us": sig(fit.fixed_us), "row_ns": sig(fit.row_ns), "byte_ps": sig(fit.byte_ps),
               "walk_ns": sig(fit.walk_ns), "translation_unit_kib": fit.translation_unit_kib,
               "tlb_reach_gib": fit.tlb_reach_gib, "miss_exponent": fit.miss_exponent, "max_gbps": sig(max_gbps),
               "points": [{"table_gib": p["table_gib"], "row_bytes": p["row_bytes"], "rows": p["rows"],
                           "us": sig(p["us"])} for p in pts]}
        comments["uva"] = [
            "uva_gather (Triton) from one pinned host table (mmap + MADV_HUGEPAGE + cudaHostRegister), sorted "
            "fresh ids every step; smaller footprints use the table's first part",
            f"translation part fitted on the {len(fit_pts)} of {len(pts)} points not limited by max_gbps; "
            f"the whole model's max relative error over all points {max_err:.1%}",
        ]
        rand = raw.get("uva_random") or []
        if rand:
            slow = [p["us_random"] / p["us_sorted"] for p in rand]
            comments["uva"] += [
                f"the same ids in random order (the simulator assumes sorted, as the stores do): "
                f"x{min(slow):.3g} to x{max(slow):.3g} the sorted time:",
                *[f"  {p['table_gib']} GiB, {p['row_bytes']} B x {p['rows']}: sorted {p['us_sorted']:.4g} us, "
                  f"random {p['us_random']:.4g} us" for p in rand]]
            notes.append(f"zero-copy gathers in random id order took x{min(slow):.3g}-x{max(slow):.3g} the sorted "
                         f"time ({len(rand)} points; the model is fitted on sorted ids)")
    else:
        uva = dataclasses.asdict(base.uva)
        notes.append(f"uva copied from the base profile: the zero-copy gather could not run here "
                     f"({raw['gpu_info'].get('uva_reason') or 'no points'})")
    return gpu, link, uva, comments, notes


def assemble(raw: dict, base, base_name: str, out_name: str, today: str, quick: bool, cpu_only: bool) -> tuple:
    """(profile dict, comments by table, header lines) from the raw measurements."""
    host, host_comments = host_section(raw)
    sysinfo = raw["system"]
    version = tool_version()
    bp = base.provenance
    base_desc = (f"base profile '{base_name}' ({bp.source}, {bp.machine}, {bp.date}"
                 f"{'; ' + bp.method if bp.method else ''})")
    numba_note = (f"Numba threads capped at {sysinfo['numba_threads']} of {sysinfo['cores']} cores (NUMBA_NUM_THREADS)"
                  if sysinfo["numba_threads"] < sysinfo["cores"] else "")
    common_notes = [
        "host.dram_gbps is an estimate: numpy copy bandwidth counted as read + write (2 x payload), best over "
        "threads, not a DRAM peak",
        "host.dedup_rows_per_s_per_core: real_runs.stores.dedup (np.unique with inverse) on one thread",
        "raw points without a schema field (hashing and gather by threads, gather call times, memcpy) are "
        "comments in this file",
    ] + ([numba_note] if numba_note else [])
    machine = f"{sysinfo['cpu']}, {sysinfo['cores']} cores, {sysinfo['memory_gib']:.1f} GiB"
    comments = {"host": host_comments}
    if cpu_only:
        gpu, link, uva = (_plain(base.gpu), _plain(base.link), _plain(base.uva))
        notes = [f"measured here: host (all fields: cpu, cpu_cores, memory_gib, dram_gbps, "
                 f"hash_tokens_per_s_per_core, dedup_rows_per_s_per_core, cpu_gather_fixed_us, "
                 f"cpu_gather_max_threads, cpu_gather_per_thread); NOT measured (--cpu-only): gpu, link and uva "
                 f"are copied unchanged from the {base_desc}"] + common_notes
        description = f"CPU side measured on {machine}; GPU, link and UVA from {base_name}"
        method_gpu = ""
    else:
        gpu, link, uva, gpu_comments, gpu_notes = gpu_sections(raw, base)
        comments.update(gpu_comments)
        info = raw["gpu_info"]
        nv = info.get("nvml", {})
        uva_measured = bool(raw.get("uva"))
        measured = "host, gpu, link" + (", uva" if uva_measured else "")
        from_base = "gpu.fp8_tflops, " + ("" if raw.get("memory_bound") else "gpu.memory_efficiency, ")
        notes = [f"measured here: {measured}; {from_base}gpu.kernels_per_layer "
                 f"come from the {base_desc}; gpu.hbm_reserved_gib is the CUDA context measured "
                 f"({info['context_bytes'] / GiB:.2f} GiB) + 1 GiB, at least the base's"] + gpu_notes + common_notes
        pin_notes = [f"pinning with torch pin_memory: {raw['pin_torch_s_per_gib']:.3g} s/GiB"]
        if "pin_register_small_s_per_gib" in raw:
            pin_notes.append(f"mmap + MADV_HUGEPAGE + cudaHostRegister: {raw['pin_register_small_s_per_gib']:.3g} "
                             f"s/GiB ({_human_bytes(raw['pin_bytes'])})")
        if "pin_register_s_per_gib" in raw:
            pin_notes.append(f"{raw['pin_register_s_per_gib']:.3g} s/GiB for the {raw['uva_table_pinned_gib']} GiB "
                             "UVA table")
        notes.append("; ".join(pin_notes))
        gpu_desc = gpu["name"]
        if nv.get("driver"):
            gpu_desc += f", driver {nv['driver']}"
        gpu_desc += f", {link['kind']}"
        machine = f"{gpu_desc}, {machine}"
        description = f"Measured on {gpu['name']} ({link['kind']}), {sysinfo['cpu']} {sysinfo['cores']} cores"
        method_gpu = f", CUDA events on GPU (torch {info['torch']}, CUDA {info['cuda']})"
    profile = {
        "name": out_name,
        "description": description,
        "provenance": {
            "source": "measured",
            "machine": machine,
            "date": today,
            "method": (f"engram-sim calibrate {version}{' --quick' if quick else ''}{' --cpu-only' if cpu_only else ''}"
                       f": medians of repeats after warm-up; time.perf_counter on host{method_gpu}; the project's "
                       f"kernels (NgramHasher, Numba gather_rows, dedup{'' if cpu_only else ', uva_gather'}); "
                       f"fits by profiles/fit.py"),
            "notes": ". ".join(notes),
        },
        "gpu": gpu, "link": link, "uva": uva, "host": host,
    }
    header = [f"{out_name}: measured by `engram-sim calibrate` {version} on {today}.",
              f"Machine: {machine}.",
              ("Sections measured: host only (--cpu-only); gpu, link and uva are copies of " + base_name + "."
               if cpu_only else "Sections measured: host, gpu, link" + (", uva." if raw.get("uva") else
                                                                         "; uva from " + base_name + "."))]
    _check_finite(profile)
    return profile, comments, header


def _check_finite(data, path="") -> None:
    data = _plain(data)
    if isinstance(data, dict):
        for k, v in data.items():
            _check_finite(v, f"{path}.{k}" if path else k)
    elif isinstance(data, list):
        for i, v in enumerate(data):
            _check_finite(v, f"{path}[{i}]")
    elif isinstance(data, float) and not math.isfinite(data):
        raise CalibrateError("calibrate", f"measured {path} is {data}", "nothing was written; measure again")


# -- comparison with the reference -----------------------------------------------------------------------

def comparison(raw: dict, gpu_measured: bool) -> list[str]:
    """Lines comparing measured figures with the H100 reference (profiles/reference/)."""
    rows = []   # (key, measured, what was measured)
    hash_best_t = max(raw["hash"], key=raw["hash"].get)
    rows.append(("hash_best", raw["hash"][hash_best_t], f"{hash_best_t} threads"))
    if 1 in raw["hash"]:
        rows.append(("hash_1", raw["hash"][1], "1 thread"))
    for rb in (256, 1024, 4096):
        pts = {t: v for (r, t), v in raw["gather"].items() if r == rb}
        if pts:
            t = max(pts, key=pts.get)
            rows.append((f"cpu_gather_{rb}", pts[t], f"{t} threads"))
    if gpu_measured:
        for key, name in (("h2d_gbps", "h2d"), ("d2h_gbps", "d2h")):
            n = max(raw[name])
            rows.append((key, raw[name][n], _human_bytes(n)))
        rows.append(("d2d_gbps", raw["d2d_gbps"], _human_bytes(raw["d2d_bytes"])))
        rows.append(("bf16_tflops", raw["gemm_large"]["tflops"], f"{raw['gemm_large']['n']}^3"))
        if 1024 in raw["hbm_gather"]:
            rows.append(("hbm_gather_1k", raw["hbm_gather"][1024], f"{_human_bytes(raw['hbm_table_bytes'])} table"))
    reference = reference_figures()
    lines = ["Compared with the H100 reference (profiles/reference/, summarised in H100.md):"]
    if not gpu_measured:
        lines.append(f"  (CPU figures only; the machines differ: this one has {raw['system']['cores']} cores of "
                     f"{raw['system']['cpu']}, the reference 16 vCPU Intel Xeon)")
    for key, measured, where in rows:
        what, ref, unit = reference[key]
        scale = 1e6 if unit == "tokens/s" else 1.0
        u = "M tokens/s" if unit == "tokens/s" else unit
        lines.append(f"  {what:40s} reference {ref / scale:9.4g} {u:10s} measured {measured / scale:9.4g} "
                     f"({where}): x{measured / ref:.2f}")
    return lines


# -- the command ---------------------------------------------------------------------------------------

def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("calibrate", help="measure this machine into a hardware profile (TOML)",
                              description="Measure this machine into a hardware profile (TOML).")
    p.add_argument("--out", help="profile to write (default: profiles/<gpu-or-cpu>-measured-<date>.toml)")
    p.add_argument("--quick", action="store_true", help="fewer sizes and repeats (under 2 minutes on an H100)")
    p.add_argument("--cpu-only", action="store_true",
                   help="measure the CPU side only; gpu, link and uva come from --base")
    p.add_argument("--base", default="h100-sxm",
                   help="profile the unmeasured sections come from (default h100-sxm)")
    p.set_defaults(func=cmd_calibrate)
    return p


def cmd_calibrate(args) -> int:
    from tqdm import tqdm

    quick, cpu_only = bool(getattr(args, "quick", False)), bool(getattr(args, "cpu_only", False))
    base_name = getattr(args, "base", None) or "h100-sxm"
    base = load_profile(base_name)                      # ProfileError: one line, exit 2
    cuda = False
    if not cpu_only:
        try:
            import torch
            cuda = torch.cuda.is_available()
        except ImportError:
            cuda = False
        if not cuda:
            raise CalibrateError("calibrate", NO_GPU, NO_GPU_FIX)
    today = _dt.date.today().isoformat()
    if getattr(args, "out", None):
        out = Path(args.out)
    else:
        if cuda:
            import torch
            machine_slug = slug(torch.cuda.get_device_name())
        else:
            machine_slug = slug(cpu_model())
        out = default_out(machine_slug, today)
    check_out(out)

    sizes = QUICK if quick else FULL
    raw: dict = {}
    cplan = cpu_plan(sizes)
    gplan = gpu_plan(sizes) if cuda else None
    total = cplan["count"] + (gplan["count"] if gplan else 0)
    what = "CPU and GPU" if cuda else "CPU side only"
    print(f"calibrate: measuring {what} ({'quick' if quick else 'full'}), {cpu_model()}, "
          f"{os.cpu_count()} cores; threads {cplan['threads']}", file=sys.stderr)
    t0 = time.perf_counter()
    with tqdm(total=total, desc="calibrate", unit="measurement", file=sys.stderr, dynamic_ncols=True) as bar:
        steps = [cpu_measurements(sizes, cplan, raw, pin_staging=cuda)]
        if cuda:
            steps.append(gpu_measurements(sizes, gplan, raw))
        label = "start"
        try:
            for gen in steps:
                for label in gen:
                    bar.set_postfix_str(label, refresh=False)
                    bar.update(1)
        except (RuntimeError, OSError, MemoryError, ValueError) as e:   # CUDA errors are RuntimeErrors
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise CalibrateError("calibrate", f"a measurement failed after '{label}' ({type(e).__name__}: {first})",
                                 "nothing was written; try --quick, or free memory and run again") from None
    wall = time.perf_counter() - t0
    profile, comments, header = assemble(raw, base, base_name, out.stem, today, quick, cpu_only=not cuda)
    write_profile_atomic(dump_toml(profile, comments, header), out)
    print(f"wrote {out} (measured in {wall:.0f} s)")
    h = profile["host"]
    print(f"  host: hashing {h['hash_tokens_per_s_per_core'] / 1e6:.3g} M tokens/s/core, dedup "
          f"{h['dedup_rows_per_s_per_core'] / 1e6:.3g} M rows/s/core, gather per thread "
          + ", ".join(f"{p['x']} B {p['y']:.3g}" for p in h["cpu_gather_per_thread"])
          + f" GB/s (max {h['cpu_gather_max_threads']} threads, fixed {h['cpu_gather_fixed_us']:.3g} us), "
          f"dram ~{h['dram_gbps']:.3g} GB/s")
    if cuda:
        g, lk = profile["gpu"], profile["link"]
        print(f"  gpu: {g['name']}, bf16 {g['bf16_tflops']:.4g} TFLOP/s (layers x{g['matmul_efficiency']}), "
              f"HBM {g['hbm_gbps']:.4g} GB/s; link {lk['kind']}: H2D {lk['h2d_gbps']:.4g} GB/s, D2H "
              f"{lk['d2h_gbps']:.4g} GB/s, fixed {lk['copy_fixed_us']:.3g} us")
    for line in comparison(raw, gpu_measured=cuda):
        print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m tools.calibrate ...`: the same as `engram-sim calibrate ...`."""
    from cli.main import main as cli_main

    return cli_main(["calibrate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
