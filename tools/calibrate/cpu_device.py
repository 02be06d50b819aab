"""This CPU as the device of `engram-sim run --device cpu`: the [gpu] figures a CPU run is predicted with.

    engram-sim calibrate --device cpu [--config tiny] [--out FILE]

A real run on CPU computes in float32 with torch's CPU kernels, one op after
another from Python, so the profile's "GPU" is that: matrix rate (bf16_tflops
holds the float32 rate the run gets), read bandwidth (hbm_gbps), the cost of
issuing one op as the real backbone issues them (kernel_launch_us) and how
many it issues per layer (kernels_per_layer). Host timer, medians of repeats.

- kernels_per_layer: aten ops a decoder layer dispatches (a packed serving
  decode step of 16 sequences on the config's backbone, as real_runs/serve.py
  runs it, counted with a TorchDispatchMode), averaged over the
  layers with the Engram modules' ops beyond the simulator's ENGRAM_KERNELS
  spread over them: a predicted step issues as many ops as the real one;
- kernel_launch_us: a layer's time in that step (where, for a small backbone,
  the arithmetic is negligible) over its ops: the per-op cost, Python included;
- matmul_curve: float32 GEMMs of M rows at the layer's (K, N), rate net of one
  op's cost, over the peak (a large square GEMM); memory_curve: reductions over
  n bytes, rate net of one op's cost, over the largest's (hbm_gbps);
- hbm_gather: index_select of 16384 rows of each row size, GB/s;
- [link]: a CPU run's "host-to-device copy" is torch's copy_ of staged rows
  into the device tensor, both in host memory, as the stores make it
  (real_runs/ssd_store.py, stores.py: uint8 views, then copy_), once a step
  after the fetch worker idled with cold caches (measure_cpu.idle_then):
  copy_fixed_us and h2d_gbps a line fitted to its times over sizes; the
  other directions are the same copy.

torch and real_runs.backbone (which imports it) are optional heavy dependencies, imported inside.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import tomlkit

from profiles import load_profile, shipped_names, shipped_path
from profiles.writer import toml_array
from real_runs.instrument import cpu_model, memory_gib
from real_runs.timing import median_time
from tools.calibrate.measure_cpu import idle_then
from vocab.config import LengthDistribution, RunConfig, load_config
from vocab.files import atomic_write_text
from vocab.placements import HOST_DMA
from vocab.records import CPU_HASH
from vocab.serving import serving_tables

MATMUL_ROWS = (1, 4, 16, 64, 256, 1024, 4096)
PEAK_GEMM = 2048
MEMORY_BYTES = (1 << 16, 1 << 20, 1 << 24, 1 << 28)
GATHER_ROW_BYTES = (64, 256, 1024, 4096)
GATHER_ROWS = 16384
# The serving decode step the ops are counted and timed on: sequences, and the context each attends to.
DECODE_SEQUENCES = 16
DECODE_CONTEXT = 48
# Ops the simulator counts for an Engram module (sim/compute.py ENGRAM_KERNELS; calibrate may not import the
# simulator, which needs SimPy: tests check the two agree).
ENGRAM_KERNELS = 8


def count_layer_ops(backbone, forward) -> dict[int, int]:
    """Aten ops each layer dispatches in one `forward(hook)` (index = layer; the LM head is `layers`)."""
    from torch.utils._python_dispatch import TorchDispatchMode  # optional heavy dependency

    counts, current = {}, [None]

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if current[0] is not None:
                counts[current[0]] = counts.get(current[0], 0) + 1
            return func(*args, **(kwargs or {}))

    def hook(i, when):
        current[0] = i if when == "start" else None

    with Count():
        forward(hook)
    return counts


def layer_times(forward, repeats: int) -> dict[int, float]:
    """Median seconds of each layer over repeats of `forward(hook)` (3 warm-up calls left out)."""
    spans: dict[int, list] = {}
    marks = {}

    def hook(i, when):
        if when == "start":
            marks[i] = time.perf_counter()
        else:
            spans.setdefault(i, []).append(time.perf_counter() - marks.pop(i))

    for _ in range(repeats + 3):
        forward(hook)
    return {i: float(np.median(s[3:])) for i, s in spans.items()}


def measure_ops(config: str, repeats: int) -> dict:
    """Ops per layer and their per-op cost on the config's backbone, in a serving decode step as
    real_runs/serve.py runs it (packed, one token for each of DECODE_SEQUENCES sequences in their KV slots,
    a short context): the steps that make most of a serving run."""
    import torch  # optional heavy dependency

    from real_runs.backbone import Backbone, Packed  # imports torch

    cfg = load_config(config)
    bb = Backbone(cfg.backbone, cfg.engram, device="cpu", seed=0)
    n = DECODE_SEQUENCES
    cache, states = bb.new_cache(n, 2 * DECODE_CONTEXT, np.zeros(n, dtype=np.int64)), bb.new_states(n)
    ids, rows = torch.zeros((1, n), dtype=torch.int64), torch.zeros((n, cfg.engram.d_mem))
    ones, at = np.ones(n, dtype=np.int64), np.full(n, DECODE_CONTEXT)

    def forward(hook):
        packed = Packed.build(cache, states, np.arange(n), at, ones, "cpu")
        bb(ids, lambda layer: rows, packed=packed, last_index=torch.arange(n), hook=hook)

    counts = count_layer_ops(bb, forward)
    times = layer_times(forward, repeats)
    layers = range(cfg.backbone.layers)
    plain = [i for i in layers if i not in bb.engram_layers]
    # The simulator adds ENGRAM_KERNELS per Engram layer: the rest of the module's ops are spread over the
    # layers, so that a predicted step issues as many ops as the real one.
    per_layer = (sum(counts[i] for i in layers) - ENGRAM_KERNELS * len(bb.engram_layers)) / len(layers)
    per_op = float(np.median([times[i] / counts[i] for i in plain]))
    engram = [counts[i] - float(np.mean([counts[j] for j in plain])) for i in bb.engram_layers]
    return {"config": config, "ops_by_layer": counts, "layer_s": times, "kernels_per_layer": per_layer,
            "per_op_us": per_op * 1e6, "engram_module_ops": float(np.mean(engram)) if engram else 0.0,
            "lm_head_ops": counts.get(cfg.backbone.layers, 0), "threads": torch.get_num_threads()}


def measure_rates(config: str, per_op_s: float, repeats: int) -> dict:
    """Peak GEMM rate, the GEMM ladder at the config's layer shapes, read bandwidths, row gathers."""
    import torch  # optional heavy dependency

    b = load_config(config).backbone
    a = b.attention
    gemms = {"attention qkv": (b.hidden_size, (a.heads + 2 * a.kv_heads) * a.head_dim),
             "attention out": (a.heads * a.head_dim, b.hidden_size),
             "ffn gate+up": (b.hidden_size, 2 * b.intermediate_size), "ffn down": (b.intermediate_size, b.hidden_size)}
    n = PEAK_GEMM
    x, w = torch.randn(n, n), torch.randn(n, n)
    peak = 2 * n ** 3 / median_time(lambda: torch.matmul(x, w), 2, repeats)
    ladder = {}
    for m in MATMUL_ROWS:
        flops = secs = 0.0
        for k, nn in gemms.values():
            x, w = torch.randn(m, k), torch.randn(k, nn)
            out = torch.empty(m, nn)
            s = median_time(lambda: torch.matmul(x, w, out=out), 3, repeats * 5)
            flops, secs = flops + 2 * m * k * nn, secs + max(s - per_op_s, 0.1 * s)
        ladder[m] = flops / secs
    reads = {}
    for nbytes in MEMORY_BYTES:
        t = torch.ones(nbytes // 4)
        s = median_time(lambda: t.sum(), 2, repeats)
        reads[nbytes] = nbytes / max(s - per_op_s, 0.1 * s)
    gathers = {}
    for rb in GATHER_ROW_BYTES:
        table = torch.zeros((64 << 20) // rb, rb // 4)
        ids = torch.randint(0, table.shape[0], (GATHER_ROWS,))
        gathers[rb] = GATHER_ROWS * rb / median_time(lambda: table.index_select(0, ids), 2, repeats)
    return {"peak_flops": peak, "matmul_flops_by_rows": ladder, "read_bytes_per_s": reads,
            "gather_bytes_per_s": gathers}


def gpu_section(ops: dict, rates: dict, memory_gib: float) -> dict:
    """The [gpu] fields of this CPU as a run's device."""
    peak, best_read = rates["peak_flops"], max(rates["read_bytes_per_s"].values())
    return {
        "bf16_tflops": round(peak / 1e12, 4),
        "hbm_gbps": round(best_read / 1e9, 2),
        "hbm_gib": round(memory_gib, 1),
        "hbm_reserved_gib": round(0.1 * memory_gib, 2),
        "kernel_launch_us": round(ops["per_op_us"], 2),
        "kernels_per_layer": int(round(ops["kernels_per_layer"])),
        "matmul_curve": [{"x": float(m), "y": round(min(1.0, r / peak), 4)}
                         for m, r in rates["matmul_flops_by_rows"].items()],
        "memory_curve": [{"x": float(n), "y": round(r / best_read, 4)} for n, r in rates["read_bytes_per_s"].items()],
        "hbm_gather": [{"x": float(rb), "y": round(r / 1e9, 2)} for rb, r in rates["gather_bytes_per_s"].items()],
    }


def _toml_lines(fields: dict) -> list[str]:
    """TOML lines of a section's fields (values already TOML text, or lists of curve points)."""
    lines = []
    for key, value in fields.items():
        if isinstance(value, list):
            lines.append(f"{key} = [")
            lines += [f"    {{x = {p['x']}, y = {p['y']}}}," for p in value]
            lines.append("]")
        else:
            lines.append(f"{key} = {json.dumps(value) if isinstance(value, str) else value}")
    return lines


def format_section(fields: dict, ops: dict, rates: dict) -> str:
    """The [gpu] fields as TOML lines, with the raw points as comments."""
    lines = [f"# ops per layer (packed serving decode, 16 sequences) by layer: {ops['ops_by_layer']}; Engram module adds "
             f"{ops['engram_module_ops']:.0f}; LM head {ops['lm_head_ops']}; torch threads {ops['threads']}",
             "# layer seconds (that step): " + ", ".join(f"{i}: {s * 1e6:.0f} us" for i, s in
                                                            ops["layer_s"].items()),
             f"# float32 GEMM peak ({PEAK_GEMM}^3): {rates['peak_flops'] / 1e9:.1f} GFLOP/s; ladder (net of one op's "
             "cost) GFLOP/s by rows: " + ", ".join(f"{m}: {r / 1e9:.2f}" for m, r in
                                                   rates["matmul_flops_by_rows"].items())]
    return "\n".join(lines + _toml_lines(fields))


COPY_BYTES = (1 << 11, 1 << 16, 1 << 20, 1 << 24)   # a decode step's rows to a long prefill's


def measure_copy(repeats: int) -> dict:
    """Seconds of the CPU device's row copy by bytes, each call after the worker idled with cold caches."""
    import torch  # an optional heavy dependency

    seconds = {}
    for n in COPY_BYTES:
        staging = torch.from_numpy(np.ones(n, np.uint8))
        dst = torch.empty(n // 2, dtype=torch.bfloat16)

        def copy(_):
            dst.view(torch.uint8).view(-1).copy_(staging[:n].view(-1))

        seconds[n] = median_time(copy, 2, max(repeats, 15), setup=idle_then)
    return seconds


def link_section(seconds: dict) -> dict:
    """[link] of the CPU device: fixed cost + bytes / rate, least squares on relative error over the sizes."""
    n = np.array(list(seconds), dtype=float)
    t = np.array(list(seconds.values()))
    per_byte, fixed = np.polyfit(n, t, 1, w=1 / t)
    gbps = round(1 / max(per_byte, 1e-15) / 1e9, 2)
    return {"kind": "CPU device: torch copy_ in host memory", "h2d_gbps": gbps, "d2h_gbps": gbps,
            "copy_fixed_us": round(max(fixed, 0.0) * 1e6, 1), "copy_engines": 1, "pageable_h2d_gbps": gbps,
            "h2d_points": [{"x": float(b), "y": round(b / s / 1e9, 3)} for b, s in seconds.items()]}


def format_link(fields: dict, seconds: dict) -> str:
    lines = ["# The CPU device's row copy (torch copy_ in host memory, after an idle with cold caches), us by bytes: "
             + ", ".join(f"{b}: {s * 1e6:.1f}" for b, s in seconds.items()) + "; a line fitted over them"]
    return "\n".join(lines + _toml_lines(fields))


# The serving run the engine's own step work is timed on: small requests on the config's backbone, a batch
# that grows to ENGINE_SEQUENCES, float32 as a CPU run computes.
ENGINE_REQUESTS = 32
ENGINE_SEQUENCES = 16


def serve_step_config(config: str) -> RunConfig:
    cfg = load_config(config)
    lengths = LengthDistribution(dist="uniform", low=16, high=64)
    requests = dataclasses.replace(cfg.workload.requests, count=ENGINE_REQUESTS, prompt=lengths, output=lengths,
                                   arrival="all_at_once")
    scheduler = dataclasses.replace(cfg.workload.scheduler, max_batched_tokens=512, max_sequences=ENGINE_SEQUENCES,
                                    kv_block_tokens=16)
    return cfg.with_backbone(dtype="fp32").with_workload(phase="serve", requests=requests, scheduler=scheduler,
                                                         seed=cfg.workload.seed + 1)


def measure_serve_step(config: str) -> dict:
    """The serving engine's own host work per step (host.serve_step_fixed_us + serve_step_per_seq_us x sequences):
    a real serving run on this CPU (real_runs/serve.py), per decode step its time less the layers' compute
    and the stalls (forming the step, packing its inputs, launching, reading back, finishing it); the median
    per batch size, then a least-squares line over batch sizes."""
    from real_runs.serve import run_serving  # torch: an optional heavy dependency

    record = run_serving(serve_step_config(config), device="cpu")
    _, batches, _ = serving_tables(record.extra)
    st = record.steps
    host = (st.step_time_s - st.compute_time_s - st.exposed_stall_s).to_numpy()
    decode = (batches.prefill_tokens == 0).to_numpy()
    seqs = batches.sequences.to_numpy()[decode]
    by_batch = {int(n): float(np.median(host[decode][seqs == n])) for n in np.unique(seqs)}
    n = np.array(list(by_batch), dtype=float)
    t = np.array(list(by_batch.values()))
    per_seq, fixed = np.polyfit(n, t, 1) if n.size > 1 else (0.0, float(t[0]))
    return {"serve_step_fixed_us": round(max(fixed, 0.0) * 1e6, 1),
            "serve_step_per_seq_us": round(max(per_seq, 0.0) * 1e6, 2),
            "by_batch_us": {k: round(v * 1e6, 1) for k, v in by_batch.items()}, "steps": int(decode.sum())}


PICKUP_STEPS = 40   # decode steps of the pick-up run (after its warm-up)


def measure_fetch_pickup(config: str) -> dict:
    """host.fetch_pickup_us: how long after a step's fetch is submitted the runner's fetch worker starts it (its
    thread woken, the Python the engine runs before it gives up the interpreter's lock): a real decode run on
    this CPU (real_runs/runner.py, the config's backbone, the table in memory: host_dma), the median over steps
    of the worker's hash start less the step's fetch submission."""
    from real_runs.runner import run  # torch: an optional heavy dependency

    cfg = load_config(config).with_workload(phase="decode")
    record = run(cfg, HOST_DMA, steps=PICKUP_STEPS, device="cpu", warmup=2)
    fetches = record.fetches.groupby("step")["fetch_start_s"].min()
    events = record.events
    hashes = events[events["actor"] == CPU_HASH].groupby("step")["start_s"].min()
    pickup = (hashes - fetches.reindex(hashes.index)).dropna().to_numpy() * 1e6
    return {"fetch_pickup_us": round(float(np.median(pickup)), 1), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
            "spread_us": [round(float(np.percentile(pickup, q)), 1) for q in (10, 50, 90)], "steps": int(pickup.size)}


def format_fetch_pickup(pickup: dict) -> str:
    return "\n".join([
        f"# The runner's fetch worker starts a step's fetch this long after it is submitted (a real decode run on this "
        f"CPU, OMP_WAIT_POLICY {pickup['omp_wait_policy']}, {pickup['steps']} steps, p10/p50/p90 us: "
        + " / ".join(map(str, pickup["spread_us"])) + ")",
        f"fetch_pickup_us = {pickup['fetch_pickup_us']}"])


def format_serve_step(engine: dict) -> str:
    """The two [host] fields as TOML lines, with the points they were fitted to."""
    return "\n".join([
        "# The serving engine's own step work on this CPU (real_runs/serve.py's loop, outside the layers and stalls), "
        f"medians over {engine['steps']} decode steps by batch size, us: "
        + ", ".join(f"{k}: {v}" for k, v in engine["by_batch_us"].items()) + "; a line fitted over them",
        f"serve_step_fixed_us = {engine['serve_step_fixed_us']}",
        f"serve_step_per_seq_us = {engine['serve_step_per_seq_us']}"])


def base_path(base: str) -> Path:
    """The file of profile `base` (a shipped name or a path), checked to load (its one-line error if not)."""
    path = shipped_path(base) if base in shipped_names() else Path(base)
    load_profile(path)
    return path


def merged_profile(base: str, gpu: dict, link: dict, host: dict, comments: dict[str, list[str]], note: str) -> str:
    """The TOML text of profile `base` (a shipped name or a path: its other sections and comments kept) with
    [gpu] and [link] replaced by `gpu` and `link`, the `host` fields set, `comments` (by section) above them, and
    `note` appended to provenance.notes."""
    doc = tomlkit.parse(base_path(base).read_text(encoding="utf-8"))
    for name, fields in (("gpu", gpu), ("link", link)):
        old = doc.get(name, {})
        kept = [k for k in old if k not in fields] if name == "gpu" else []  # e.g. fp8, SM and graph fields
        table = tomlkit.table()
        for line in comments.get(name, []):
            table.add(tomlkit.comment(line))
        for key, value in fields.items():
            table.add(key, toml_array(value) if isinstance(value, list) else value)
        if kept:
            table.add(tomlkit.comment(f"kept from {base} (not measured on a CPU device): {', '.join(kept)}"))
            for key in kept:
                table.add(key, old[key])
        doc[name] = table
    for line in comments.get("host", []):
        doc["host"].add(tomlkit.comment(line))
    for key, value in host.items():
        if key in doc["host"]:
            doc["host"][key] = value
        else:
            doc["host"].add(key, value)
    prov = doc.setdefault("provenance", tomlkit.table())
    prov["notes"] = (str(prov.get("notes", "")) + " " + note).strip()
    return tomlkit.dumps(doc)


def run_cpu_device(args) -> int:
    """`calibrate --device cpu`: measure, print the [gpu], [link] and [host] parts; with --out, write the --base
    profile with them in."""
    repeats = 5 if getattr(args, "quick", False) else 15
    config = getattr(args, "config", None) or "tiny"
    if getattr(args, "out", None):
        base_path(args.base)  # a bad --base is its one-line error before anything is measured
    ops = measure_ops(config, repeats)
    rates = measure_rates(config, ops["per_op_us"] * 1e-6, repeats)
    fields = {"name": cpu_model(), **gpu_section(ops, rates, memory_gib())}
    copies = measure_copy(repeats)
    link = link_section(copies)
    engine = measure_serve_step(config)
    pickup = measure_fetch_pickup(config)
    text = ("[gpu]\n" + format_section(fields, ops, rates) + "\n\n[link]\n" + format_link(link, copies)
            + "\n\n# merge into the profile's [host] section\n[host]\n"
            + format_serve_step(engine) + "\n" + format_fetch_pickup(pickup) + "\n")
    print(text)
    if getattr(args, "out", None):
        def comment_lines(block: str) -> list[str]:
            return [line[2:] for line in block.split("\n") if line.startswith("# ")]

        host = {"serve_step_fixed_us": engine["serve_step_fixed_us"],
                "serve_step_per_seq_us": engine["serve_step_per_seq_us"],
                "fetch_pickup_us": pickup["fetch_pickup_us"]}
        comments = {"gpu": ["This CPU as the device of `engram-sim run --device cpu` (not a GPU): engram-sim calibrate "
                            "--device cpu, the method in tools/calibrate/cpu_device.py"]
                    + comment_lines(format_section(fields, ops, rates)),
                    "link": comment_lines(format_link(link, copies)),
                    "host": comment_lines(format_serve_step(engine)) + comment_lines(format_fetch_pickup(pickup))}
        note = (f"[gpu], [link], host.serve_step_* and host.fetch_pickup_us: this CPU as the device of `run --device "
                f"cpu`, measured by engram-sim calibrate --device cpu on {time.strftime('%Y-%m-%d %H:%M')}.")
        atomic_write_text(args.out, merged_profile(args.base, fields, link, host, comments, note))
        print(f"wrote {args.out}: {args.base} with [gpu], [link] and those [host] fields measured here")
    return 0
