"""A measured run: the real Engram model, the real hashing and the real table store, timed.

    from real_runs.runner import run
    record = run(load_config("tiny"), placement="host_dma", steps=8, out=Path("out/tiny.json"))

The CLI's `engram-sim run CONFIG [--placement P] [--steps N] [--out FILE] [--device D]`
calls `main_run(args)`.

Steps hold the very tokens the simulator's trace hashes (real_runs/inputs.py,
workloads/steps.py), so a measurement lines up with a prediction step for step.
Decode: one new token for each of `sequences` sequences against a KV cache of
their sampled context lengths (zeros: the values do not change the timing).
Prefill: exactly `tokens_per_step` tokens per step; a chunk attends causally
within itself only (no KV of its prompt's earlier chunk: an approximation of the
attention cost of the at most one continued chunk per step), while its N-gram
hashes do see the prompt's preceding tokens. Per step:

1. as soon as a step's tokens exist, the fetch worker (real_runs/fetch_worker.py)
   hashes them for every Engram layer and calls each layer's store.prefetch:
   decode step s's tokens exist when step s-1 ends (earlier with
   decode_lookahead), so its fetch overlaps step s's layers before the Engram
   layer; in prefill the fetch of step s+prefill_prefetch_ahead starts when step s starts;
2. the compute stream runs the layers; at an Engram layer it waits for that
   layer's rows (store.wait_ready: a stream wait on the fetch's CUDA event);
3. the LM head's argmax is read back (the next token's dependency).

Recorded with the simulator's columns (real_runs/record.py). On CPU every time
is a host time and the "streams" are the main thread and the worker thread.
Placement `none` runs the backbone without Engram (the baseline): no tables,
no stores, no fetches. The model's own samples are not fed back (random weights
would collapse the token distribution); the read-back keeps the dependency.
"""

from __future__ import annotations

from vocab.errors import CapacityError, DeviceError, UserError

# real_runs modules are imported only to run real things, so torch (their own dependency, the 'real' extra) is
# imported at the top. This module is the one the CLI imports for `engram-sim run`: without torch it says so in
# one line (a UserError) before the modules below, which import torch themselves, fail on it.
try:
    import torch
except ImportError as exc:
    raise UserError("torch", "real runs need PyTorch", "pip install 'engram-sim[real]'") from exc

import dataclasses
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np

from profiles import load_profile
from real_runs.backbone import Backbone
from real_runs.cuda_gather import interpreting
from real_runs.fetch_worker import FetchWorker, StepLog
from real_runs.hashing import NgramHasher
from real_runs.inputs import hot_rows, step_rows, workload_inputs
from real_runs.instrument import NvmlSampler, Timeline, describe_machine
from real_runs.record import collect
from real_runs.ssd_store import SsdTable
from real_runs.stores import TORCH_DTYPES, HostTable, make_store
from vocab.config import RunConfig, load_config
from vocab.geometry import table_offsets
from vocab.memory import cache_rows_per_layer, dram_cache_rows_per_layer, kv_cache_bytes, memory_footprint
from vocab.placements import HBM, HBM_CACHE, HBM_CACHED, NONE, SSD, needs_gpu
from vocab.records import RunRecord, summarise, write_record
from vocab.units import GiB
from workloads.trace import replay_steps

# A KV cache may take at most this share of the GPU's free memory (the rest: activations, staging, the allocator).
KV_FREE_FRACTION = 0.9
# The DRAM caches' warm-up stream has its own seed, apart from the measured steps' and the hot-row sample's.
DRAM_WARMUP_SEED_OFFSET = 104729


def resolve_device(device: str | None) -> str:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):  # torch's own text lists every backend it was built with
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise DeviceError("--device", f"unknown device {device!r}", "use cuda, cuda:N or cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("--device", f"{device!r} needs a CUDA GPU, and torch.cuda.is_available() is False "
                            "here", "use --device cpu")
        if dev.index is None:   # an explicit index: worker threads set it (torch.cuda.set_device needs one)
            return f"cuda:{torch.cuda.current_device()}"
    return str(dev)


def _needs_gpu(cfg: RunConfig) -> str | None:
    """What in cfg needs a CUDA GPU (the zero-copy path), or None."""
    p = cfg.placement
    if p.kind == SSD or not needs_gpu(p.kind, p.miss_path):   # the real ssd store copies its DRAM hits (DMA)
        return None
    return f"placement {p.kind} with miss_path {p.misses_via}" if p.kind == HBM_CACHE else f"placement {p.kind}"


def check_placement(cfg: RunConfig, device: str) -> None:
    """RuntimeError where the placement cannot run on `device`."""
    what = _needs_gpu(cfg)
    cuda = torch.device(device).type == "cuda"
    if what and not cuda and not interpreting():
        raise RuntimeError(f"host_uva needs a CUDA GPU: {what} cannot run on {device!r}; on CPU use "
                           "placement hbm or host_dma (or hbm_cache with miss_path = 'host_dma'), or set "
                           "TRITON_INTERPRET=1 to run its kernel in Triton's interpreter (slow)")
    if what and cuda and interpreting():
        raise RuntimeError(f"{what} on {device!r}: unset TRITON_INTERPRET (the interpreter runs on the CPU only)")


def run_notes(cfg: RunConfig) -> list[str]:
    """Where the real run departs from the configuration (kept in the record for the reader)."""
    p = cfg.placement
    if p.kind == NONE:
        return ["placement none: the backbone without Engram (the baseline)"]
    notes = []
    if not p.dedup:
        notes.append("placement.dedup = false: the real stores always deduplicate a step's rows")
    if p.kind in HBM_CACHED and p.cache_policy == "lfu" and cache_rows_per_layer(cfg):
        notes.append("cache_policy lfu is run as lru")
    if p.kind == SSD:
        notes.append("ssd: DRAM-cache hits and drive reads reach the device by one staging copy (the host_dma "
                     "path), whatever miss_path says")
    if p.fetch_streams != 1:
        notes.append(f"fetch_streams = {p.fetch_streams}: the real run uses one fetch stream and one worker")
    if _needs_gpu(cfg) and interpreting():
        notes.append("host_uva kernel run in Triton's interpreter on the CPU (TRITON_INTERPRET=1): correct rows, "
                     "timings meaningless")
    return notes


# -- what a run builds ------------------------------------------------------------------------------

@dataclass
class Model:
    """The backbone, and in decode its KV cache and Engram conv states."""
    backbone: Backbone
    cache: object = None
    states: dict | None = None
    max_len: int = 0          # decode: the longest cached length so far


def build_model(cfg: RunConfig, device: str, context: np.ndarray | None, total_steps: int) -> Model:
    """The backbone (with Engram unless the placement is none); in decode a KV cache for every step."""
    engram = None if cfg.placement.kind == NONE else cfg.engram
    backbone = Backbone(cfg.backbone, engram, device=device, seed=cfg.workload.seed, grow=cfg.workload.lengths.grow)
    if context is None:
        return Model(backbone)
    capacity = int(context.max()) + total_steps
    if torch.device(device).type == "cuda":
        _check_kv_fits(cfg, backbone, capacity)
    n = cfg.workload.sequences
    return Model(backbone, backbone.new_cache(n, capacity, context), backbone.new_states(n), int(context.max()))


def _check_kv_fits(cfg: RunConfig, backbone: Backbone, capacity: int) -> None:
    w = cfg.workload
    # The model's own dtype, not the config's: on a GPU the backbone runs in bf16.
    dtype = next(name for name, t in TORCH_DTYPES.items() if t == backbone.dtype)
    need = kv_cache_bytes(dataclasses.replace(cfg.backbone, dtype=dtype), w.sequences * capacity, as_run=True)
    free, _ = torch.cuda.mem_get_info()
    if need > KV_FREE_FRACTION * free:
        raise CapacityError("workload.sequences",
                            f"the KV cache (K and V, {need / GiB:.1f} GiB for {w.sequences} sequences x "
                            f"{capacity} positions) does not fit the {free / GiB:.1f} GiB free on the GPU",
                            "use fewer sequences or shorter lengths")


@dataclass
class EngramTables:
    """The Engram side of a run: the hasher, and one host table and one store per Engram layer (none: empty)."""
    layers: list[int]
    hasher: NgramHasher | None = None
    offsets: dict = field(default_factory=dict)
    tables: dict = field(default_factory=dict)
    stores: dict = field(default_factory=dict)
    setup_s: float = 0.0
    dram_warmup_steps: int = 0   # ssd: steps of the token source replayed through the DRAM caches first

    def setup(self) -> dict:
        t = self.tables.values()
        return {"tables_s": self.setup_s, "table_bytes": int(sum(x.nbytes for x in t)),
                "fill_s": float(sum(x.fill_s for x in t)), "pin_s": float(sum(x.pin_s for x in t)),
                "dram_warmup_steps": self.dram_warmup_steps}

    def close(self) -> None:
        for store in self.stores.values():
            store.close()
        for t in self.tables.values():
            t.close()


def build_tables(cfg: RunConfig, device: str, timeline: Timeline, engram: EngramTables) -> None:
    """Fill `engram` (closed by the caller even when this fails part way): hasher, tables, stores."""
    e, p = cfg.engram, cfg.placement
    cuda = torch.device(device).type == "cuda"
    engram.hasher = NgramHasher.from_config(e, threads=numba_threads(cfg)[0])
    engram.offsets = {layer: table_offsets(engram.hasher.table_sizes(layer)) for layer in engram.layers}
    cache_rows = cache_rows_per_layer(cfg) if p.kind in HBM_CACHED else 0
    dram_rows = dram_cache_rows_per_layer(cfg)
    static = (cache_rows and p.cache_policy == "static_topk") or (dram_rows and p.dram_cache_policy == "static_topk")
    hot = hot_rows(cfg, engram.hasher, engram.offsets, engram.layers) if p.kind == HBM_CACHE or static else {}
    stream = torch.cuda.Stream(device) if cuda else None
    t0 = time.perf_counter()
    for layer in engram.layers:
        engram.tables[layer] = table = _table(cfg, layer, cuda)
        engram.stores[layer] = make_store(p.kind, table, device, stream=stream, timeline=timeline, name=f"L{layer}",
                                          placement=p, cache_rows=cache_rows, hot_rows=hot.get(layer),
                                          protect=prefetch_ahead(cfg) + 1, dram_cache_rows=dram_rows)
    warm_dram_caches(cfg, engram, dram_rows)
    engram.setup_s = time.perf_counter() - t0


def warm_dram_caches(cfg: RunConfig, engram: EngramTables, dram_rows: int) -> None:
    """ssd with an online DRAM cache (and no HBM cache before it): replay the same token source (its own seed)
    through each layer's cache until it has seen REPLAY_FILL_FACTOR times its capacity, within
    workload.cache_replay_rows accesses, as the simulator's replay does; the measured steps start warm."""
    p = cfg.placement
    if p.kind != SSD or not dram_rows or p.dram_cache_policy == "static_topk" or cache_rows_per_layer(cfg):
        return
    rng = np.random.default_rng(cfg.workload.seed + DRAM_WARMUP_SEED_OFFSET)
    _, first = workload_inputs(cfg, 1, rng)
    per_step = min(np.unique(step_rows(engram.hasher, first[0], layer, engram.offsets[layer])).size
                   for layer in engram.layers)
    _, inputs = workload_inputs(cfg, replay_steps(cfg, dram_rows, per_step), rng)
    for layer in engram.layers:
        rows = (step_rows(engram.hasher, st, layer, engram.offsets[layer]) for st in inputs)
        engram.dram_warmup_steps = engram.stores[layer].warm_dram(rows)


def _table(cfg: RunConfig, layer: int, cuda: bool) -> HostTable | SsdTable:
    """Layer `layer`'s table: in host memory, or (ssd) in a file on the drive, in blocks of the profile's size."""
    e, p = cfg.engram, cfg.placement
    seed = e.seed * 1_000_003 + layer
    if p.kind == SSD:
        drive = load_profile(cfg.profile).ssd
        return SsdTable(e.layer_rows(layer), e.values_per_row, e.table_dtype, seed=seed, folder=p.ssd_dir,
                        block_bytes=drive.read_block_bytes if drive else 4096)
    return HostTable(e.layer_rows(layer), e.values_per_row, e.table_dtype, seed=seed, pin=cuda and p.kind != HBM)


def numba_threads(cfg: RunConfig) -> tuple[int, int]:
    """(hashing, gathering) Numba threads: the placement's, at most what Numba has."""
    most = numba.config.NUMBA_NUM_THREADS
    return min(cfg.placement.hash_threads, most), min(cfg.placement.gather_threads, most)


def prefetch_ahead(cfg: RunConfig) -> int:
    """How many steps ahead of the compute a step's fetch is submitted."""
    w = cfg.workload
    return w.decode_lookahead if w.phase == "decode" else w.prefill_prefetch_ahead


# -- the steps ---------------------------------------------------------------------------------------

class StepLoop:
    """Runs the steps on the compute side; the worker fetches ahead."""

    def __init__(self, cfg: RunConfig, device: str, model: Model, inputs: list, engram: EngramTables,
                 timeline: Timeline):
        self.cfg, self.device, self.model, self.inputs, self.engram = cfg, device, model, inputs, engram
        self.timeline = timeline
        self.logs = [StepLog() for _ in inputs]
        hash_threads, gather_threads = numba_threads(cfg)
        self.worker = FetchWorker(inputs, self.logs, engram.layers, engram.hasher, engram.offsets, engram.stores,
                                  timeline, device, hash_threads=hash_threads, gather_threads=gather_threads)

    def run(self, progress=None) -> list[StepLog]:
        ahead = prefetch_ahead(self.cfg)
        try:
            for s in range(len(self.inputs)):
                self.worker.submit_through(s + ahead)
                self.step(s)
                self.worker.forget(s)
                if progress:
                    progress(s, len(self.inputs))
        finally:
            self.worker.close()
        return self.logs

    def step(self, s: int) -> None:
        log, step, m = self.logs[s], self.inputs[s], self.model
        log.start_ns = time.perf_counter_ns()
        ids_t = torch.from_numpy(step.ids % self.cfg.backbone.vocab_size).to(self.device, non_blocking=False)
        valid_idx = last_index = None
        if self.cfg.workload.phase == "prefill":
            last_index = torch.from_numpy(step.lengths).to(self.device) - 1
            if int(step.lengths.min()) != step.ids.shape[1]:   # padded chunks: their valid tokens' rows only
                valid = np.flatnonzero((np.arange(step.ids.shape[1])[None, :] < step.lengths[:, None]).reshape(-1))
                valid_idx = torch.from_numpy(valid).to(self.device)
        logits = m.backbone(ids_t, lambda layer: self.rows(s, layer, valid_idx), cache=m.cache, states=m.states,
                            last_index=last_index, hook=self.layer_hook(log),
                            max_len=m.max_len + 1 if m.cache is not None else None)
        self.read_back(logits)
        if m.cache is not None and self.cfg.workload.lengths.grow:
            m.max_len += 1
        log.end_ns = time.perf_counter_ns()

    def layer_hook(self, log: StepLog):
        """The backbone's hook: each layer's start and end marks into the step's log."""
        tl, marks = self.timeline, {}

        def hook(i: int, when: str) -> None:
            if when == "start":
                marks[i] = tl.mark()
            else:
                log.compute.append((i, marks.pop(i), tl.mark()))
        return hook

    def read_back(self, logits: torch.Tensor) -> None:
        logits.argmax(-1).cpu()      # the next token's dependency: a read-back every step
        self.timeline.anchor()       # the compute stream is idle: re-tie the GPU clock to the host's

    def rows(self, s: int, layer: int, valid_idx) -> torch.Tensor:
        """Layer `layer`'s rows for step s: wait for its fetch (the stall), then expand to the lookups."""
        log, tl, store, d_mem = self.logs[s], self.timeline, self.engram.stores[layer], self.cfg.engram.d_mem
        w0 = tl.mark()
        f = self.worker.fetch(s, layer)
        store.wait_ready(f)
        w1 = tl.mark()
        log.waits[layer] = (f, w0, w1)
        rows = store.finish(f)            # expand to lookups (and the HBM gather): compute
        f.tensors.clear()   # the record keeps counts and events; free the device buffers now
        if valid_idx is not None:
            full = torch.zeros((self.inputs[s].ids.size, d_mem), dtype=rows.dtype, device=rows.device)
            rows = full.index_copy_(0, valid_idx, rows.reshape(-1, d_mem))
        log.compute.append((-1 - layer, w1, tl.mark()))
        return rows


def measure(loop: StepLoop, nvml_interval_s: float, progress=None) -> tuple[list[StepLog], dict]:
    """The step logs, and the NVML samples taken meanwhile (on a GPU)."""
    if torch.device(loop.device).type != "cuda":
        return loop.run(progress), {"available": False, "reason": "the run is on CPU: no GPU to sample"}
    sampler = NvmlSampler(nvml_interval_s, device_index=torch.device(loop.device).index or 0,
                          t0_ns=loop.timeline.t0_ns)
    sampler.start()
    try:
        logs = loop.run(progress)
    finally:
        nvml = sampler.stop()
    return logs, nvml


# -- the run -----------------------------------------------------------------------------------------

def run(cfg: RunConfig, placement: str | None = None, steps: int | None = None, out: Path | None = None,
        device: str | None = None, *, warmup: int = 1, nvml_interval_s: float = 0.02,
        progress=None) -> RunRecord:
    """Run `cfg` for real and return (and write to `out`) a measured RunRecord.

    `placement` replaces cfg's placement kind; "none" runs the backbone without Engram. A serving workload
    (workload.phase = "serve") runs in real_runs/serve.py: `engram-sim run` goes there from main_run."""
    if placement is not None:
        cfg = cfg.with_placement(placement)
    device = resolve_device(device)
    check_placement(cfg, device)
    steps = int(steps or cfg.workload.steps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    warmup = max(0, int(warmup))
    # Workload first: its sizes decide the KV cache.
    context, inputs = workload_inputs(cfg, warmup + steps, np.random.default_rng(cfg.workload.seed))
    timeline = Timeline(cuda=torch.device(device).type == "cuda", device=device)
    model = build_model(cfg, device, context, warmup + steps)
    with engram_tables(cfg, device, timeline) as engram:
        logs, nvml = measure(StepLoop(cfg, device, model, inputs, engram, timeline), nvml_interval_s, progress)
        record = collect(cfg, timeline, logs, inputs, timeline.resolve(), warmup, engram.layers)
        describe(record, cfg, device, warmup=warmup, nvml=nvml, engram=engram, backbone=model.backbone)
    if out is not None:
        write_record(record, out)
    return record


@contextmanager
def engram_tables(cfg: RunConfig, device: str, timeline: Timeline) -> Iterator[EngramTables]:
    """cfg's Engram tables and stores for one run (none: no layers), released when it ends, failed or not."""
    engram = EngramTables([] if cfg.placement.kind == NONE else sorted(cfg.engram.layer_ids))
    try:
        if engram.layers:
            build_tables(cfg, device, timeline, engram)
        yield engram
    except BaseException:
        release(device, engram, failed=True)
        raise
    release(device, engram)


def describe(record: RunRecord, cfg: RunConfig, device: str, *, warmup: int, nvml: dict, engram: EngramTables,
             backbone: Backbone) -> None:
    """The record's machine, extras (notes, NVML samples, set-up, memory, model) and, on a GPU, link use."""
    record.machine = describe_machine(device)
    profile = load_profile(cfg.profile)
    # The GPU the run had, or on CPU the profiled GPU the config names.
    memory = memory_footprint(cfg, record.machine.get("gpu_memory_bytes") or profile.gpu.hbm_gib * GiB)
    record.extra = {
        "device": device,
        "warmup_steps": warmup,
        "notes": run_notes(cfg),
        "nvml": nvml,
        "setup": engram.setup(),
        "memory": {k: v for k, v in memory.items() if k != "parameters"},
        "parameters": memory["parameters"],
        "model_dtype": str(backbone.dtype).replace("torch.", ""),
        "moe_impl": next((layer.ffn.impl for layer in backbone.layers if hasattr(layer.ffn, "impl")), None),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default (unset)"),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"),
    }
    if torch.device(device).type == "cuda":
        record.summary = summarise(record.steps, profile.link.h2d_gbps * 1e9)


def release(device: str, engram: EngramTables, failed: bool = False) -> None:
    """Unpin and unmap the tables; nothing may still read a table when it is unregistered and unmapped."""
    if torch.device(device).type == "cuda":
        try:
            torch.cuda.synchronize(device)
        except RuntimeError:
            if not failed:
                raise
            # The run failed and left the device in an error state: the run's own exception says why.
    engram.close()


def main_run(args) -> int:
    """Entry point for `engram-sim run CONFIG [--placement P] [--steps N] [--out FILE] [--device D]`.

    `args` needs .config (a preset name or TOML path); optional .placement, .steps, .out, .device,
    .warmup. Prints a one-line summary; returns the exit code (2 for a setup error such as a
    GPU-only placement on a CPU machine)."""
    cfg = with_run_flags(load_config(args.config), args)
    placement = getattr(args, "placement", None)
    kind = placement or cfg.placement.kind
    out = getattr(args, "out", None)
    out = Path(out) if out else Path("out") / f"{cfg.name}-{kind}-measured.json"
    try:
        if cfg.workload.phase == "serve":
            # real_runs.serve builds on this module's parts: imported here, where a serving run is asked for.
            from real_runs.serve import main_serve

            return main_serve(cfg.with_placement(placement) if placement else cfg, out, getattr(args, "device", None))
        record = run(cfg, placement=placement, steps=getattr(args, "steps", None), out=out,
                     device=getattr(args, "device", None), warmup=getattr(args, "warmup", None) or 1)
    except RuntimeError as e:
        print(f"engram-sim run: {e}", file=sys.stderr)
        return 2
    s = record.summary
    print(f"{cfg.name} [{record.extra['device']}, {kind}]: {s['steps']} steps, {s['tokens_per_s']:.1f} tok/s, "
          f"step {s['step_time_s'] * 1e3:.2f} ms, stall {s['exposed_stall_s'] * 1e3:.3f} ms/step, "
          f"fetch {s['fetch_time_s'] * 1e3:.3f} ms/step, overlap {s['overlap_fraction']:.2f} -> {out}")
    return 0


def with_run_flags(cfg: RunConfig, args) -> RunConfig:
    """cfg with the table size, DRAM cache and drive folder the command line gives (placement kind: run's)."""
    if getattr(args, "table_gib", None) is not None:
        cfg = cfg.with_table_gib(args.table_gib)
    changes = {k: getattr(args, a) for k, a in (("dram_cache_gib", "dram_cache_gib"), ("ssd_dir", "ssd_dir"))
               if getattr(args, a, None) is not None}
    return cfg.with_placement(**changes) if changes else cfg
