"""GPU-side measurements (CUDA events), with the project's own kernels where it has them. Each is a
generator that fills `raw` and yields a label after each measurement.

torch, and the real_runs modules that import it at their top (stores, backbone), are optional heavy
dependencies: they are imported inside the functions, so the CLI loads without them.
"""

from __future__ import annotations

import time

import numpy as np

from real_runs.cuda_gather import uva_gather
from real_runs.instrument import nvml_info
from real_runs.timing import cuda_median_time, fresh_ids
from tools.calibrate.formatting import human_bytes
from tools.calibrate.measure_engine import measure_engine_step
from tools.calibrate.measure_rates import measure_graphs, measure_matmul_ladder, measure_memory_ladder
from tools.calibrate.measure_sharing import measure_contention
from tools.calibrate.plan import UVA_RANDOM_ROWS, Sizes
from tools.calibrate.shapes import Shapes, preset_shapes
from vocab.units import GiB, MiB


def gpu_info(plan: dict, raw: dict) -> None:
    import torch  # optional heavy dependency

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    raw["gpu_info"] = {"name": torch.cuda.get_device_name(), "total_bytes": int(props.total_memory),
                       "context_bytes": int(plan["total"] - plan["free"]), "torch": torch.__version__,
                       "cuda": torch.version.cuda, "nvml": nvml_info(), "uva_reason": plan["uva_reason"],
                       "l2_bytes": int(getattr(props, "L2_cache_size", 0))}


def _freeing(gen):
    """The measurement, then the CUDA cache emptied (the next one may need the memory)."""
    import torch  # optional heavy dependency

    yield from gen
    torch.cuda.empty_cache()


def gpu_steps(sizes: Sizes, plan: dict) -> list[tuple]:
    """(name, measure(raw) -> generator) of each GPU measurement step, in order (names: bounds.GPU_STEPS);
    a step can be run again into the same raw."""
    return [
        ("copies", lambda raw: measure_copies(sizes, plan, raw)),
        ("hbm", lambda raw: measure_hbm(sizes, plan, raw)),
        ("compute", lambda raw: measure_compute(sizes, plan, raw)),
        ("pinning", lambda raw: measure_pinning(sizes, plan, raw)),
        ("uva", lambda raw: measure_uva(sizes, plan, raw)),
        *mechanism_steps(sizes, plan),
    ]


def mechanism_steps(sizes: Sizes, plan: dict, engine: bool = True) -> list[tuple]:
    """The steps of the simulator's end-to-end mechanisms: compute-rate ladders, CUDA graphs, the contention
    probe (SM sharing) and, with `engine`, the engine's step."""
    steps = [("matmul_ladder", lambda raw: _freeing(measure_matmul_ladder(sizes, raw))),
             ("memory_ladder", lambda raw: _freeing(measure_memory_ladder(sizes, raw))),
             ("graphs", lambda raw: _freeing(measure_graphs(sizes, raw))),
             ("contention", lambda raw: _freeing(measure_contention(sizes, plan, raw)))]
    if engine:
        steps.append(("engine", lambda raw: measure_engine_step(sizes, raw)))
    return steps


def mechanism_measurements(sizes: Sizes, plan: dict, raw: dict, engine: bool = True):
    """The figures of the simulator's end-to-end mechanisms (mechanism_steps, one after another)."""
    for _, step in mechanism_steps(sizes, plan, engine):
        yield from step(raw)


# -- the host link ------------------------------------------------------------------------------------

def measure_copies(sizes: Sizes, plan: dict, raw: dict):
    """H2D and D2H GB/s by bytes (pinned and pageable), and both directions at once."""
    import torch  # optional heavy dependency

    biggest = max(plan["copy_sizes"] + plan["pageable_sizes"] + [2 * plan["bidir_bytes"]])
    host = torch.empty(biggest, dtype=torch.uint8, pin_memory=True)
    host.fill_(1)
    dev = torch.empty(biggest, dtype=torch.uint8, device="cuda")
    raw["h2d"], raw["d2h"], raw["h2d_pageable"], raw["d2h_pageable"] = {}, {}, {}, {}
    yield from _pinned_copies(sizes, plan, raw, host, dev)
    yield from _pageable_copies(sizes, plan, raw, dev)
    _both_directions(sizes, plan["bidir_bytes"], raw, host, dev)
    host = dev = None
    torch.cuda.empty_cache()
    yield "h2d+d2h at once"


def _pinned_copies(sizes: Sizes, plan: dict, raw: dict, host, dev):
    for name, direction in (("h2d", "up"), ("d2h", "down")):
        for n in plan["copy_sizes"]:
            src, dst = (host[:n], dev[:n]) if direction == "up" else (dev[:n], host[:n])
            reps = sizes.repeats if n >= 64 * MiB else max(sizes.repeats, 20)
            s = cuda_median_time(lambda: dst.copy_(src, non_blocking=True), sizes.warmup + 1, reps)
            raw[name][n] = n / s / 1e9
            yield f"{name} {human_bytes(n)}"


def _pageable_copies(sizes: Sizes, plan: dict, raw: dict, dev):
    import torch  # optional heavy dependency

    pageable = torch.empty(max(plan["pageable_sizes"]), dtype=torch.uint8)
    pageable.fill_(1)
    for name, direction in (("h2d_pageable", "up"), ("d2h_pageable", "down")):
        for n in plan["pageable_sizes"]:
            src, dst = (pageable[:n], dev[:n]) if direction == "up" else (dev[:n], pageable[:n])
            s = cuda_median_time(lambda: dst.copy_(src), sizes.warmup, sizes.repeats)
            raw[name][n] = n / s / 1e9
            yield f"{name} {human_bytes(n)}"


def _both_directions(sizes: Sizes, n: int, raw: dict, host, dev) -> None:
    """n bytes each way at once, on two streams: more than either alone when there are two copy engines."""
    import torch  # optional heavy dependency

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


# -- HBM ----------------------------------------------------------------------------------------------

def measure_hbm(sizes: Sizes, plan: dict, raw: dict):
    """Device-to-device copy bandwidth, then index_select gathers from an HBM table by row bytes."""
    import torch  # optional heavy dependency

    measure_device_copy(sizes, plan["d2d_bytes"], raw)
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


def measure_device_copy(sizes: Sizes, n: int, raw: dict) -> None:
    """hbm_gbps: a device-to-device copy of n bytes, read + write."""
    import torch  # optional heavy dependency

    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    a.fill_(1)
    s = cuda_median_time(lambda: b.copy_(a), sizes.warmup, sizes.repeats)
    raw["d2d_gbps"] = 2 * n / s / 1e9          # read + write
    raw["d2d_bytes"] = n


# -- zero-copy gathers --------------------------------------------------------------------------------

def measure_uva(sizes: Sizes, plan: dict, raw: dict):
    """uva_gather from one pinned host table at the plan's (footprint, row bytes, rows) points, fresh sorted
    ids each call; at UVA_RANDOM_ROWS rows also the same ids in random order."""
    import torch  # optional heavy dependency

    from real_runs.stores import HostTable  # imports torch

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
            sets = [torch.from_numpy(fresh_ids(rng, footprint_rows, n)).cuda()
                    for _ in range(sizes.warmup + sizes.repeats)]
            out = torch.empty(n * rb, dtype=torch.uint8, device="cuda")
            uva_gather(table, rb, sets[0][:64], out[:64 * rb])   # compile outside the timing
            torch.cuda.synchronize()
            s = cuda_median_time(lambda ids: uva_gather(table, rb, ids, out[:ids.numel() * rb]),
                                 sizes.warmup, sizes.repeats, setup=lambda i: sets[i])
            raw["uva"].append({"table_gib": g, "row_bytes": rb, "rows": n, "us": s * 1e6})
            yield f"uva {g} GiB {rb} B x {n}"
            if n == UVA_RANDOM_ROWS:
                r = _uva_random_order(sizes, table, rb, sets, out)
                raw["uva_random"].append({"table_gib": g, "row_bytes": rb, "rows": n, "us_sorted": s * 1e6,
                                          "us_random": r * 1e6})
                yield f"uva {g} GiB {rb} B x {n}, random order"
            sets = out = None
        yield from _uva_cold_points(sizes, plan, table, rng, raw)
    finally:
        torch.cuda.synchronize()
        table.close()


def _uva_cold_points(sizes: Sizes, plan: dict, table, rng, raw: dict):
    """uva.cold_line_ns: the plan's gathers timed back to back (the page table's upper levels stay in L2),
    then each after a device copy of plan["l2_flush_bytes"] (several times the L2, as the layers of a real step
    stream between two gathers) that evicts them. The copy is queued before the timing's start event
    (cuda_time_spread runs setup first), so only the gather is timed. It also evicts some TLB entries, as the
    layers do; points with no cold line (within the TLB's reach) add nothing to the fit's slope."""
    import torch  # optional heavy dependency

    raw["uva_cold"] = []
    if not plan.get("uva_cold_points"):
        return
    flush_src = torch.empty(plan["l2_flush_bytes"], dtype=torch.uint8, device="cuda")
    flush_src.fill_(1)
    flush_dst = torch.empty_like(flush_src)
    raw["uva_cold_flush_bytes"], raw["l2_bytes"] = plan["l2_flush_bytes"], plan["l2_bytes"]
    try:
        for g, rb, n in plan["uva_cold_points"]:
            sets = [torch.from_numpy(fresh_ids(rng, int(g * GiB) // rb, n)).cuda()
                    for _ in range(sizes.warmup + sizes.repeats)]
            out = torch.empty(n * rb, dtype=torch.uint8, device="cuda")

            def gather(ids, rb=rb, out=out):
                uva_gather(table, rb, ids, out)

            def flushed(i, sets=sets):
                flush_dst.copy_(flush_src)    # untimed: before the start event
                return sets[i]

            warm = cuda_median_time(gather, sizes.warmup, sizes.repeats, setup=lambda i, sets=sets: sets[i])
            cold = cuda_median_time(gather, sizes.warmup, sizes.repeats, setup=flushed)
            raw["uva_cold"].append({"table_gib": g, "row_bytes": rb, "rows": n, "us_warm": warm * 1e6,
                                    "us_cold": cold * 1e6})
            yield f"uva {g} GiB {rb} B x {n}, warm and after an L2 flush"
            sets = out = None
    finally:
        flush_src = flush_dst = None
        torch.cuda.empty_cache()


def _uva_random_order(sizes: Sizes, table, rb: int, sets: list, out) -> float:
    """Median seconds of the same gathers with each id set shuffled."""
    import torch  # optional heavy dependency

    gen = torch.Generator(device="cuda")
    gen.manual_seed(5)
    shuffled = [ids[torch.randperm(ids.numel(), device="cuda", generator=gen)] for ids in sets]
    return cuda_median_time(lambda ids: uva_gather(table, rb, ids, out[:ids.numel() * rb]),
                            sizes.warmup, sizes.repeats, setup=lambda i: shuffled[i])


# -- compute ------------------------------------------------------------------------------------------

def measure_peak_gemm(sizes: Sizes, raw: dict) -> None:
    """bf16_tflops: one large square GEMM."""
    import torch  # optional heavy dependency

    n = sizes.gemm_n
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    c = torch.empty(n, n, device="cuda", dtype=torch.bfloat16)
    s = cuda_median_time(lambda: torch.matmul(a, b, out=c), sizes.warmup + 2, sizes.repeats)
    raw["gemm_large"] = {"n": n, "tflops": 2 * n ** 3 / s / 1e12}


def measure_compute(sizes: Sizes, plan: dict, raw: dict):
    """bf16 matmul on a large GEMM and on the layer shapes, the backbone's kernels, kernel launch cost."""
    import torch  # optional heavy dependency

    measure_peak_gemm(sizes, raw)
    torch.cuda.empty_cache()
    yield f"bf16 gemm {sizes.gemm_n}^3"
    raw["gemm_layers"] = {}
    for name, (m, k, nn) in preset_shapes().layer_gemms.items():
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


def measure_backbone_kernels(sizes: Sizes, raw: dict, shapes: Shapes | None = None, device: str = "cuda",
                             timer=cuda_median_time):
    """The backbone's own expert and attention kernels (real_runs/backbone.py) at the preset's shapes, so the
    rates are those of the real run's own kernels. (Tests run it on the CPU with small shapes and the host
    timer.)"""
    shapes = shapes or preset_shapes()
    yield from _moe_experts(sizes, raw, shapes.moe_experts, device, timer)
    yield from _prefill_attention(sizes, raw, shapes.prefill_attention, device, timer)
    yield from _decode_work(sizes, raw, shapes.decode_attention, shapes.decode_gemm, device, timer)


def _moe_experts(sizes: Sizes, raw: dict, m: dict, device: str, timer):
    """The routed experts over the chunk's tokens x top_k rows (MoE._experts: torch._grouped_mm where it
    works, else a loop over experts), balanced routing."""
    import torch  # optional heavy dependency

    from real_runs.backbone import MoE  # imports torch

    gen = torch.Generator(device=device)
    gen.manual_seed(6)
    moe = MoE(m["hidden"], 0, m["routed"], m["top_k"], m["inter"], gen, device, torch.bfloat16)
    rows = m["tokens"] * m["top_k"]
    counts = torch.full((m["routed"],), rows // m["routed"], dtype=torch.int64, device=device)
    counts[:rows % m["routed"]] += 1                          # balanced routing, every row placed
    xs = torch.randn(rows, m["hidden"], device=device, dtype=torch.bfloat16)
    s = timer(lambda: moe._experts(xs, counts), sizes.warmup + 2, sizes.repeats)
    flops = 2 * rows * m["hidden"] * 3 * m["inter"]
    raw["gemm_layers"][f"moe experts ({moe.impl})"] = {
        "shape": [rows, m["hidden"], 3 * m["inter"]], "s": s, "flops": flops, "tflops": flops / s / 1e12}
    yield "moe experts"


def _prefill_attention(sizes: Sizes, raw: dict, a: dict, device: str, timer):
    """Causal SDPA over the chunk."""
    import torch  # optional heavy dependency
    import torch.nn.functional as F

    q, k, v = (torch.randn(1, a["heads"], a["tokens"], a["head_dim"], device=device, dtype=torch.bfloat16)
               for _ in range(3))
    s = timer(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), sizes.warmup + 2, sizes.repeats)
    flops = 4 * a["heads"] * a["head_dim"] * a["tokens"] * (a["tokens"] + 1) / 2   # causal: half the pairs
    raw["gemm_layers"]["attention prefill (causal SDPA)"] = {
        "shape": [a["tokens"], a["head_dim"], a["tokens"]], "s": s, "flops": flops, "tflops": flops / s / 1e12}
    yield "prefill attention"


def _decode_work(sizes: Sizes, raw: dict, d: dict, decode_gemm: tuple, device: str, timer):
    """Memory-bound work of a decode step: decode_attention reading a KV cache, and the qkv projection of
    the decode batch (reads its weights once). Their achieved read rate over hbm_gbps is memory_efficiency."""
    import torch  # optional heavy dependency

    from real_runs.backbone import decode_attention  # imports torch

    bf16 = dict(device=device, dtype=torch.bfloat16)
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
    yield "decode projection"


# -- pinning ------------------------------------------------------------------------------------------

def measure_pinning(sizes: Sizes, plan: dict, raw: dict):
    """Seconds per GiB to pin host memory: torch pin_memory, and the stores' mmap + cudaHostRegister."""
    import torch  # optional heavy dependency

    from real_runs.stores import HostTable  # imports torch

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
