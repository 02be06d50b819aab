"""GPU compute-rate ladders and CUDA-graph timing: the measurements behind gpu.matmul_curve,
gpu.memory_curve, gpu.graph_launch_us and gpu.graph_kernel_gap_us. Each is a generator that fills
`raw` and yields a label after each measurement.

The ladders take a device and a timer, so tests run them on the CPU with small shapes and the host
timer; torch (and real_runs.backbone, which imports it) are optional heavy dependencies, imported inside.
"""

from __future__ import annotations

from real_runs.timing import cuda_median_time, median_time
from tools.calibrate.plan import Sizes
from tools.calibrate.shapes import Shapes, preset_shapes


def measure_matmul_ladder(sizes: Sizes, raw: dict, shapes: Shapes | None = None, device: str = "cuda",
                          timer=cuda_median_time):
    """bf16 GEMMs of M rows (a decode or prefill step's tokens) at each of the layer's (K, N): seconds
    and FLOPs per shape, by M. Their rate together over bf16_tflops is the matmul_curve."""
    import torch  # optional heavy dependency

    shapes = shapes or preset_shapes()
    bf16 = dict(device=device, dtype=torch.bfloat16)
    weights = {name: torch.randn(k, n, **bf16) for name, (k, n) in shapes.ladder_gemms.items()}
    raw["matmul_ladder"] = {}
    for m in sizes.matmul_rows:
        point = {}
        for name, w in weights.items():
            x = torch.randn(m, w.shape[0], **bf16)
            y = torch.empty(m, w.shape[1], **bf16)
            s = timer(lambda: torch.matmul(x, w, out=y), sizes.warmup + 2, sizes.repeats)
            point[name] = {"shape": [m, w.shape[0], w.shape[1]], "s": s, "flops": 2 * m * w.shape[0] * w.shape[1]}
        raw["matmul_ladder"][m] = point
        x = y = None
        yield f"matmul ladder M={m}"


def measure_memory_ladder(sizes: Sizes, raw: dict, shapes: Shapes | None = None, device: str = "cuda",
                          timer=cuda_median_time):
    """decode_attention (real_runs/backbone.py) over KV caches of (batch, context) from the ladder: the K and
    V bytes it reads and its seconds. Their rate over hbm_gbps, by bytes, is the memory_curve."""
    import torch  # optional heavy dependency

    from real_runs.backbone import decode_attention  # imports torch

    d = (shapes or preset_shapes()).decode_attention
    bf16 = dict(device=device, dtype=torch.bfloat16)
    raw["memory_ladder"] = []
    for batch, context in sizes.kv_ladder:
        q = torch.randn(batch, d["heads"], 1, d["head_dim"], **bf16)
        # zeros: the values do not change the time, and filling is quicker than drawing
        keys, values = (torch.zeros(batch, d["kv_heads"], context, d["head_dim"], **bf16) for _ in range(2))
        pos = torch.full((batch,), context - 1, dtype=torch.int64, device=device)
        s = timer(lambda: decode_attention(q, keys, values, pos), sizes.warmup + 2, sizes.repeats)
        raw["memory_ladder"].append({"batch": batch, "context": context, "s": s,
                                     "bytes": 2 * keys.numel() * keys.element_size()})
        q = keys = values = None
        yield f"decode attention B={batch} L={context}"


def measure_graphs(sizes: Sizes, raw: dict):
    """A captured CUDA graph of K tiny kernels against K eager launches of the same kernel: the graph's
    GPU time (CUDA events, the host ahead) and the host's time to launch it; the eager launches' host
    time per K kernels (back to back, then a synchronize)."""
    import torch  # optional heavy dependency

    x = torch.zeros(1, device="cuda")

    def kernels(k: int):
        for _ in range(k):
            x.add_(1)

    raw["graphs"] = []
    for k in sizes.graph_kernels:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):        # warm up off the capture stream, as torch.cuda.graphs asks
            kernels(k)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            kernels(k)
        gpu_s = cuda_median_time(graph.replay, sizes.warmup + 1, sizes.repeats)
        # the host's launch call alone; each call starts on an idle GPU (setup synchronises, untimed)
        host_s = median_time(lambda _: graph.replay(), sizes.warmup + 1, sizes.repeats,
                             setup=lambda i: torch.cuda.synchronize())
        eager_s = median_time(lambda: (kernels(k), torch.cuda.synchronize()), sizes.warmup + 1, sizes.repeats)
        raw["graphs"].append({"kernels": k, "graph_gpu_us": gpu_s * 1e6, "graph_launch_us": host_s * 1e6,
                              "eager_us": eager_s * 1e6})
        torch.cuda.synchronize()
        yield f"cuda graph of {k} kernels"
