"""The contention probe: how much a decode layer slows while a zero-copy gather holds SMs beside it
(gpu.uva_interference), at several gather grids (placement.uva_ctas), and beside a copy-engine H2D copy
of the same bytes (no SMs held: the baseline). Also records gpu.sm_count and the kernel's rows per program.

    time the layer's window alone (R decode layers, the host ahead of the GPU);
    for each grid: time the gather alone, repeat its rows until it outlasts the window by half, then time
    the window with that gather started on a side stream at the window's first kernel.

torch, real_runs.backbone and real_runs.stores import torch: optional heavy dependencies, imported inside.
"""

from __future__ import annotations

import math

import numpy as np

from real_runs.cuda_gather import block_shape, gather_grid, uva_gather
from real_runs.timing import HOST_AHEAD_CYCLES, cuda_median_time, fresh_ids
from tools.calibrate.plan import CONTENTION_GRIDS, Sizes
from tools.calibrate.shapes import preset_shapes
from vocab.config import load_config
from vocab.units import GiB

# The side work is repeated until it outlasts the layers' window alone by this factor (it must stay
# resident for the whole window, whatever it slows the layers by), at most COVER_MAX_REPEATS times.
COVER_FACTOR = 1.5
COVER_MAX_REPEATS = 64
# The host enqueues the side work and every layer (a few hundred launches) while the GPU spins this long
# (about 5 ms), so that neither the window alone nor beside the gather waits on the host.
AHEAD_CYCLES = 10 * HOST_AHEAD_CYCLES


def windowed_time(main_fn, side_fn, side_stream, warmup: int, repeats: int) -> tuple[float, float]:
    """(median seconds of main_fn on the current stream, median seconds the side work ran from main's start)
    with side_fn (or nothing) started on `side_stream` at main's first kernel."""
    import torch  # optional heavy dependency

    times, side_times = [], []
    for i in range(warmup + repeats):
        start, end, side_end = (torch.cuda.Event(enable_timing=True) for _ in range(3))
        torch.cuda._sleep(AHEAD_CYCLES)
        start.record()
        if side_fn is not None:
            side_stream.wait_event(start)
            with torch.cuda.stream(side_stream):
                side_fn()
                side_end.record()
        main_fn()
        end.record()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end) * 1e-3)
            side_times.append(start.elapsed_time(side_end) * 1e-3 if side_fn is not None else 0.0)
    return float(np.median(times)), float(np.median(side_times))


def _decode_window(c: dict, layers: int):
    """R forward passes of the preset's dense layer over one new token per sequence (KV cache of c's
    context): a function running them on the current stream."""
    import torch  # optional heavy dependency

    from real_runs.backbone import DecoderLayer, KVCache  # imports torch

    cfg = load_config(preset_shapes().preset)
    b, a = cfg.backbone, cfg.backbone.attention
    gen = torch.Generator(device="cuda")
    gen.manual_seed(8)
    layer = DecoderLayer(c["layer"], b, None, gen, "cuda", torch.bfloat16)
    cache = KVCache.allocate(c["layer"] + 1, c["batch"], a.kv_heads, a.head_dim, c["context"],
                             np.full(c["batch"], c["context"] - 1), "cuda", torch.bfloat16)
    x = torch.randn(c["batch"], 1, b.hidden_size, device="cuda", dtype=torch.bfloat16, generator=gen)

    @torch.no_grad()
    def window():
        for _ in range(layers):
            layer(x, cache=cache, max_len=c["context"])
    return window


def _covering(make, amount: int, cap: int, window_s: float, sizes: Sizes):
    """(side function, amount, seconds alone of `amount`): make(n) -> function moving n rows or bytes,
    repeated up to `cap` until it lasts COVER_FACTOR x the window alone."""
    fn = make(amount)
    alone = cuda_median_time(fn, sizes.warmup + 1, sizes.repeats)
    repeats = min(COVER_MAX_REPEATS, max(1, math.ceil(COVER_FACTOR * window_s / alone)))
    total = min(cap, amount * repeats)
    return (make(total) if total != amount else fn), total, alone


def measure_contention(sizes: Sizes, plan: dict, raw: dict):
    """The layers' window alone, beside each gather grid, and beside a copy of the same bytes."""
    import torch  # optional heavy dependency

    from real_runs.stores import HostTable  # imports torch

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    sm = int(props.multi_processor_count)
    c = preset_shapes().contention
    rb = c["row_bytes"]
    raw["sm_count"], raw["uva_rows_per_cta"] = sm, block_shape(rb)[3]
    if plan.get("uva_reason"):
        raw["contention"] = {"skipped": plan["uva_reason"]}
        return
    window = _decode_window(c, sizes.contention_layers)
    side = torch.cuda.Stream()
    alone_s, _ = windowed_time(window, None, side, sizes.warmup + 1, sizes.repeats)
    out = raw["contention"] = {**c, "layers": sizes.contention_layers, "window_alone_us": alone_s * 1e6,
                               "rows": sizes.contention_rows, "points": []}
    yield "contention: layers alone"
    table = HostTable(int(c["table_gib"] * GiB) // rb, rb // 2, "bf16", pin=True, fill=False)
    try:
        yield from _gather_points(sizes, out, table, window, side, alone_s, sm)
        out["copy"] = _copy_point(sizes, window, side, alone_s, rb)
        yield "contention: beside an H2D copy"
    finally:
        torch.cuda.synchronize()
        table.close()


def _gather_points(sizes: Sizes, out: dict, table, window, side, alone_s: float, sm: int):
    import torch  # optional heavy dependency

    rb = table.row_bytes
    footprint = table.rows
    rng = np.random.default_rng(9)
    most = min(footprint // 2, sizes.contention_rows * COVER_MAX_REPEATS)
    ids_all = torch.from_numpy(fresh_ids(rng, footprint, most)).cuda()
    dst = torch.empty(ids_all.numel() * rb, dtype=torch.uint8, device="cuda")
    for multiple in CONTENTION_GRIDS:
        ctas = None if multiple is None else max(1, int(sm * multiple))

        def make(n, ctas=ctas):
            # n ids evenly spaced through the sorted set: spread over the whole footprint, as a step's are
            ids = ids_all[::max(1, ids_all.numel() // n)][:n].contiguous()
            return lambda: uva_gather(table, rb, ids, dst[:ids.numel() * rb], ctas=ctas)

        fn, rows, gather_alone = _covering(make, sizes.contention_rows, ids_all.numel(), alone_s, sizes)
        with_s, side_s = windowed_time(window, fn, side, sizes.warmup + 1, sizes.repeats)
        out["points"].append({"ctas": ctas, "grid": gather_grid(rows, rb, ctas), "rows": rows,
                              "gather_alone_us": gather_alone * 1e6, "gather_rows_alone": sizes.contention_rows,
                              "window_us": with_s * 1e6, "side_us": side_s * 1e6})
        yield f"contention: gather grid {ctas or 'unbounded'}"


def _copy_point(sizes: Sizes, window, side, alone_s: float, row_bytes: int) -> dict:
    """The window beside H2D copies of the bytes of contention_rows rows, repeated (as one copy) to cover it."""
    import torch  # optional heavy dependency

    base = sizes.contention_rows * row_bytes
    cap = base * COVER_MAX_REPEATS
    host = torch.empty(cap, dtype=torch.uint8, pin_memory=True)
    host.fill_(1)
    dev = torch.empty(cap, dtype=torch.uint8, device="cuda")

    def make(n):
        return lambda: dev[:n].copy_(host[:n], non_blocking=True)

    fn, n, copy_alone = _covering(make, base, cap, alone_s, sizes)
    with_s, side_s = windowed_time(window, fn, side, sizes.warmup + 1, sizes.repeats)
    return {"bytes": n, "copy_alone_us": copy_alone * 1e6, "copy_bytes_alone": base, "window_us": with_s * 1e6,
            "side_us": side_s * 1e6}
