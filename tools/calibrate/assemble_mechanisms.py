"""Profile figures for the simulator's end-to-end mechanisms, from their raw points: the host's critical
path (NumPy hash, sort), the engine's step, the GEMM and memory-bound rate curves, CUDA graphs and the
zero-copy gather's SM sharing. Each function returns (fields, comment lines[, notes]); a figure that was not
measured here comes from the base profile, and the comments or notes say so.
"""

from __future__ import annotations

import dataclasses

from profiles.fit import fit_interference, fit_linear_time, fraction_curve
from profiles.uva import gather_block_share
from profiles.writer import plain, sig
from tools.calibrate.formatting import format_points, human_bytes


def _line_fit(points: dict):
    xs = sorted(points)
    return fit_linear_time(xs, [points[x] for x in xs])


# -- host ---------------------------------------------------------------------------------------------

def critical_path_fields(raw: dict) -> tuple[dict, list[str]]:
    """critical_hash_fixed_us, critical_hash_ns_per_token and sort_rows_per_s from measure_critical_path."""
    hashed = _line_fit(raw["critical_hash"])
    sort = _line_fit(raw["sort"])
    # A fit that leaves the sort no per-row cost (noise at tiny sizes): the largest point's own rate.
    n_max = max(raw["sort"])
    sort_rate = 1e9 / sort.per_item_ns if sort.per_item_ns > 0 else n_max / (raw["sort"][n_max] * 1e-6)
    # Likewise a hash fit left without a per-token cost (noise): the largest batch's cost per token.
    b_max = max(raw["critical_hash"])
    per_token = hashed.per_item_ns if hashed.per_item_ns > 0 else raw["critical_hash"][b_max] * 1e3 / b_max
    fields = {"critical_hash_fixed_us": sig(hashed.fixed_us, 3),
              "critical_hash_ns_per_token": sig(per_token, 3),
              "sort_rows_per_s": sig(sort_rate, 3)}
    comments = [
        "critical_hash_*: workloads/hashing.py hash_layer (NumPy, one thread) of one Engram layer over a decode "
        "step's B new tokens (one n-gram position each), us by B: "
        f"{format_points(raw['critical_hash'], val_fmt='{:.3g}')}",
        f"  fit: {hashed.fixed_us:.3g} us + {hashed.per_item_ns:.3g} ns per token (sequence)",
        f"sort_rows_per_s: np.sort of B x {raw['critical_rows_per_token']} random int64 row ids, us by ids: "
        f"{format_points(raw['sort'], val_fmt='{:.3g}')}",
        f"  fit: {sort.fixed_us:.3g} us + {sort.per_item_ns:.3g} ns per id",
    ]
    return fields, comments


def engine_fields(raw: dict, base) -> tuple[dict, list[str], list[str]]:
    """engine_step_fixed_us and engine_step_per_seq_us from measure_engine_step, else the base's."""
    points = raw.get("engine_step")
    if not points:
        fields = {k: getattr(base.host, k) for k in ("engine_step_fixed_us", "engine_step_per_seq_us")}
        return (fields, ["engine_step_*: the base profile's (the engine's step is measured with a GPU)"],
                ["host.engine_step_* from the base profile (they are measured with a GPU)"])
    fit = _line_fit(points)
    fields = {"engine_step_fixed_us": sig(fit.fixed_us, 3), "engine_step_per_seq_us": sig(fit.per_item_ns / 1e3, 3)}
    comments = [
        f"engine_step_*: the real runner, preset {raw.get('engine_preset', 'tiny')} without Engram, median gap "
        "from a step's last kernel to the next step's first layer (read-back, loop, inputs, launches), us by "
        f"batch: {format_points(points, val_fmt='{:.3g}')}",
        f"  fit: {fit.fixed_us:.3g} us + {fit.per_item_ns / 1e3:.3g} us per sequence",
    ]
    return fields, comments, []


# -- gpu ----------------------------------------------------------------------------------------------

def matmul_curve(raw: dict, bf16_tflops: float) -> tuple[list[dict], list[str]]:
    """[{x: GEMM rows, y: the layer's GEMMs' rate together / bf16_tflops}] from measure_matmul_ladder."""
    ladder = raw["matmul_ladder"]
    rates = {m: sum(v["flops"] for v in p.values()) / sum(v["s"] for v in p.values()) / 1e12
             for m, p in ladder.items()}
    curve = fraction_curve(list(rates), list(rates.values()), bf16_tflops)
    names = ", ".join(f"{n} {v['shape'][1]}x{v['shape'][2]}" for n, v in next(iter(ladder.values())).items())
    comments = [f"matmul_curve: bf16 GEMMs M x K @ K x N at the layer's (K, N) ({names}), their TFLOP/s "
                f"together / bf16_tflops; TFLOP/s by M: {format_points(rates, val_fmt='{:.4g}')}"]
    return [{"x": p["x"], "y": sig(p["y"], 3)} for p in curve], comments


def memory_curve(raw: dict, hbm_gbps: float) -> tuple[list[dict], list[str]]:
    """[{x: KV bytes read, y: their rate / hbm_gbps}] from measure_memory_ladder."""
    pts = raw["memory_ladder"]
    curve = fraction_curve([p["bytes"] for p in pts], [p["bytes"] / p["s"] / 1e9 for p in pts], hbm_gbps)
    comments = ["memory_curve: decode_attention (real_runs/backbone.py) reading a KV cache, bytes/s / hbm_gbps:",
                *[f"  B={p['batch']} L={p['context']}: {human_bytes(p['bytes'])} in {p['s'] * 1e6:.4g} us, "
                  f"{p['bytes'] / p['s'] / 1e9:.4g} GB/s" for p in pts]]
    return [{"x": p["x"], "y": sig(p["y"], 3)} for p in curve], comments


def graph_fields(raw: dict) -> tuple[dict, list[str]]:
    """graph_launch_us (host cost of a replay, the fit's fixed part) and graph_kernel_gap_us (GPU time per
    kernel inside a graph, the fit's slope) from measure_graphs."""
    pts = raw["graphs"]
    gpu = fit_linear_time([p["kernels"] for p in pts], [p["graph_gpu_us"] for p in pts])
    host = fit_linear_time([p["kernels"] for p in pts], [p["graph_launch_us"] for p in pts])
    fields = {"graph_launch_us": sig(host.fixed_us, 3), "graph_kernel_gap_us": sig(gpu.per_item_ns / 1e3, 3)}
    comments = [
        "graph_*: a captured CUDA graph of K tiny kernels (x.add_(1)) replayed: host time of the replay call "
        "(GPU idle), GPU time by CUDA events (host ahead); against K eager launches + a synchronize:",
        *[f"  K={p['kernels']}: graph launch {p['graph_launch_us']:.3g} us on the host, {p['graph_gpu_us']:.4g} us "
          f"on the GPU; eager {p['eager_us']:.4g} us ({p['eager_us'] / p['kernels']:.3g} us a kernel)" for p in pts],
        f"  fits: host {host.fixed_us:.3g} us + {host.per_item_ns / 1e3:.3g} us a kernel; GPU "
        f"{gpu.fixed_us:.3g} us + {gpu.per_item_ns / 1e3:.3g} us a kernel",
    ]
    return fields, comments


def contention_points(c: dict, sm_count: int, blocks_per_sm: int) -> list[dict]:
    """Each gather grid's share of the block slots and the share of the layers' rate it cost them."""
    alone = c["window_alone_us"]
    return [{**p, "share": gather_block_share(p["grid"], sm_count, blocks_per_sm), "loss": 1 - alone / p["window_us"]}
            for p in c["points"]]


def sharing_fields(raw: dict, base) -> tuple[dict, list[str], list[str]]:
    """sm_count, uva_rows_per_cta (the kernel's), uva_blocks_per_sm (the base's) and uva_interference (fitted
    to the contention probe's points, else the base's)."""
    bps = base.gpu.uva_blocks_per_sm
    fields = {"sm_count": int(raw["sm_count"]), "uva_blocks_per_sm": bps,
              "uva_rows_per_cta": int(raw["uva_rows_per_cta"])}
    notes = [f"gpu.uva_blocks_per_sm ({bps}) from the base profile: the share of block slots the contention fit "
             "divides by uses it"]
    c = raw.get("contention") or {}
    comments = [f"sm_count: torch.cuda.get_device_properties; uva_rows_per_cta: the kernel's rows per program "
                f"at {c.get('row_bytes', 'the preset')} B rows (real_runs/cuda_gather.py block_shape)"]
    if not c.get("points"):
        fields["uva_interference"] = base.gpu.uva_interference
        return fields, comments, notes + [f"gpu.uva_interference from the base profile: the contention probe did not "
                                          f"run ({c.get('skipped', 'no points')})"]
    pts = contention_points(c, fields["sm_count"], bps)
    fields["uva_interference"] = sig(fit_interference([p["share"] for p in pts], [p["loss"] for p in pts]), 3)
    comments += [
        f"uva_interference: {c['layers']} decode layers (preset layer {c['layer']}, batch {c['batch']}, KV "
        f"{c['context']} tokens) alone {c['window_alone_us']:.4g} us; beside a zero-copy gather of "
        f"{c['row_bytes']} B rows ({c['table_gib']} GiB table) on a side stream; loss = 1 - alone / beside, share = "
        f"min(1, grid / (sm_count x uva_blocks_per_sm)); fit loss = interference x share (least squares, [0, 1]):",
        *[f"  uva_ctas {p['ctas'] or 'unbounded'}: grid {p['grid']}, share {p['share']:.3g}, {p['rows']} rows "
          f"({p['gather_rows_alone']} alone: {p['gather_alone_us']:.4g} us), layers {p['window_us']:.4g} us, "
          f"loss {p['loss']:.3g}, gather ran {p['side_us'] / p['window_us']:.2f} x the window" for p in pts],
    ]
    cp = c.get("copy")
    if cp:
        comments.append(f"  beside an H2D copy of {human_bytes(cp['bytes'])} instead (copy engine, no SMs): layers "
                        f"{cp['window_us']:.4g} us, loss {1 - c['window_alone_us'] / cp['window_us']:.3g}, copy ran "
                        f"{cp['side_us'] / cp['window_us']:.2f} x the window")
    return fields, comments, notes


def gpu_mechanism_fields(raw: dict, base, bf16_tflops: float, hbm_gbps: float) -> tuple[dict, list[str], list]:
    """The gpu table's mechanism fields, measured where raw has their points, else the base's."""
    fields, comments, notes = {}, [], []
    for key, name, fn, peak in (("matmul_ladder", "matmul_curve", matmul_curve, bf16_tflops),
                                ("memory_ladder", "memory_curve", memory_curve, hbm_gbps)):
        if raw.get(key):
            fields[name], lines = fn(raw, peak)
            comments += lines
        else:
            fields[name] = [dataclasses.asdict(p) for p in getattr(base.gpu, name)]
            notes.append(f"gpu.{name} from the base profile")
    if raw.get("graphs"):
        graph, lines = graph_fields(raw)
        fields.update(graph)
        comments += lines
    else:
        fields.update(graph_launch_us=base.gpu.graph_launch_us, graph_kernel_gap_us=base.gpu.graph_kernel_gap_us)
        notes.append("gpu.graph_* from the base profile")
    if "sm_count" in raw:
        sharing, lines, more = sharing_fields(raw, base)
        fields.update(sharing)
        comments += lines
        notes += more
    else:
        fields.update({k: v for k, v in plain(base.gpu).items() if k.startswith(("sm_", "uva_"))})
        notes.append("gpu.sm_count and gpu.uva_* from the base profile")
    return fields, comments, notes
