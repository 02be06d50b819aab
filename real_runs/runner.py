"""A measured run: the real Engram model, the real hashing and the real table store, timed.

    from real_runs.runner import run
    record = run(load_config("tiny"), placement="host_dma", steps=8, out=Path("out/tiny.json"))

The CLI's `engram-sim run CONFIG [--placement P] [--steps N] [--out FILE] [--device D]`
calls `main_run(args)`.

Steps are shaped as workloads/trace.py shapes them for the simulator, so a
measurement lines up with a prediction step for step. Decode: one new token
for each of `sequences` sequences against a KV cache of their sampled context
lengths (zeros: the values do not change the timing). Prefill: exactly
`tokens_per_step` tokens per step, a stream of prompts cut into chunks (a
prompt may span steps); a chunk attends causally within itself only (no KV
of its prompt's earlier chunk: an approximation of the attention cost of the
at most one continued chunk per step), while its N-gram hashes do see the
prompt's preceding tokens. Per step:

1. as soon as a step's tokens exist, a worker thread hashes them (Numba, CPU)
   for every Engram layer and calls each layer's store.prefetch (dedup, CPU
   gather, H2D copy on the fetch stream, or the UVA kernel): decode step s's
   tokens exist when step s-1 ends (earlier with decode_lookahead), so its
   fetch overlaps step s's layers before the Engram layer; in prefill the
   fetch of step s+prefill_prefetch_ahead starts when step s starts;
2. the compute stream runs the layers; at an Engram layer it waits for that
   layer's rows (store.wait: a stream wait on the fetch's CUDA event);
3. the LM head's argmax is read back (the next token's dependency).

Recorded with the simulator's columns (vocab.records): exposed_stall_s = the
time the compute stream waited at Engram layers (CUDA events before and after
the wait, on the compute stream); fetch_time_s = fetch start (hashing start)
to rows ready (the fetch's CUDA event; on CPU, the host time the prefetch
returned); overlap_fraction = 1 - stall / fetch. On CPU every time is a host
time and the "streams" are the main thread and the worker thread.

Token ids come from workloads.tokens (the config's source), as compressed ids;
the backbone embeds them modulo its vocabulary. The model's own samples are
not fed back (random weights would collapse the token distribution); the
read-back keeps the dependency, not the value.
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from profiles import load_profile
from vocab.config import RunConfig
from vocab.errors import CapacityError
from vocab.memory import cache_rows_per_layer, memory_footprint
from vocab.records import (
    EVENT_COLUMNS,
    FETCH_COLUMNS,
    STEP_COLUMNS,
    RunRecord,
    summarise,
    write_record,
)
from vocab.units import GiB

# -- workload ---------------------------------------------------------------------------------------

@dataclass
class StepInput:
    """One step's tokens: compressed ids [B, T] (right-padded with the pad id) and valid lengths [B].

    Decode: B sequences, T = 1, and `window` [B, N] = the N-1 tokens before plus the new one (hashed).
    Prefill: B prompt chunks; `context` [B, N-1] = the chunk's prompt tokens just before it (pad id at a
    prompt's start), so a chunk's N-grams see the tokens of the previous step."""
    ids: np.ndarray
    lengths: np.ndarray
    window: np.ndarray | None = None
    context: np.ndarray | None = None

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum())


def _token_source(cfg: RunConfig):
    try:
        from workloads.tokens import make_token_source
        return make_token_source(cfg)
    except ImportError:  # pragma: no cover - the workloads package ships with the project
        return _ZipfFallback(cfg)


class _ZipfFallback:
    def __init__(self, cfg: RunConfig):
        v = cfg.engram.compressed_vocab_size
        w = (np.arange(1, v + 1) + cfg.workload.tokens.zipf_q) ** -cfg.workload.tokens.zipf_s
        self.p = w / w.sum()

    def sequences(self, lengths, rng):
        return [rng.choice(self.p.size, size=int(n), p=self.p) for n in lengths]


def _lengths(cfg: RunConfig, n: int, rng) -> np.ndarray:
    try:
        from workloads.requests import sample_lengths
        return sample_lengths(cfg.workload.lengths, n, rng)
    except ImportError:  # pragma: no cover
        d = cfg.workload.lengths
        return rng.integers(d.low, d.high + 1, size=n)


def decode_inputs(cfg: RunConfig, steps: int, rng) -> tuple[np.ndarray, list[StepInput]]:
    """Context lengths [B] and `steps` decode steps (one new token per sequence), as workloads.trace
    builds them: a sequence's N-grams reach back into its context, pad id before the context starts."""
    w, e = cfg.workload, cfg.engram
    B, back = w.sequences, e.max_ngram_size - 1
    context = _lengths(cfg, B, rng)
    kept = np.minimum(context, back)          # only the last N-1 context tokens matter for the hashes
    streams = _token_source(cfg).sequences(kept + steps, rng)
    padded = np.full((B, back + steps), e.compressed_pad_id, dtype=np.int64)
    for b, (k, seq) in enumerate(zip(kept, streams)):
        padded[b, back - k:] = seq
    out = []
    for s in range(steps):
        window = padded[:, s:s + back + 1].copy()
        out.append(StepInput(ids=window[:, -1:].copy(), lengths=np.ones(B, np.int64), window=window))
    return context, out


def prefill_inputs(cfg: RunConfig, steps: int, rng) -> list[StepInput]:
    """`steps` steps of exactly tokens_per_step tokens, packed as workloads.trace packs them: a stream
    of prompts (lengths from workload.lengths) cut into steps, so a prompt may span steps (chunked
    prefill) and a step holds several prompt chunks."""
    w, e = cfg.workload, cfg.engram
    back, per = e.max_ngram_size - 1, w.tokens_per_step
    need = steps * per
    batches, total = [], 0
    while total < need:
        batches.append(_lengths(cfg, w.sequences, rng))
        total += int(batches[-1].sum())
    lengths = np.concatenate(batches)
    lengths = lengths[: np.searchsorted(np.cumsum(lengths), need) + 1]
    lengths[-1] -= int(lengths.sum()) - need
    flat = np.concatenate(_token_source(cfg).sequences(lengths, rng)).astype(np.int64)
    pos = np.arange(need) - np.repeat(np.cumsum(lengths) - lengths, lengths)   # position within its prompt
    out = []
    for s in range(steps):
        a = s * per
        starts = sorted({a} | {a + int(i) for i in np.flatnonzero(pos[a:a + per] == 0)})
        ends = starts[1:] + [a + per]
        n = [b - c for c, b in zip(starts, ends)]
        ids = np.full((len(n), max(n)), e.compressed_pad_id, dtype=np.int64)
        ctx = np.full((len(n), back), e.compressed_pad_id, dtype=np.int64)
        for i, (c, b) in enumerate(zip(starts, ends)):
            ids[i, :b - c] = flat[c:b]
            k = min(back, int(pos[c]))                       # prompt tokens before the chunk
            if k:
                ctx[i, back - k:] = flat[c - k:c]
        out.append(StepInput(ids=ids, lengths=np.array(n, dtype=np.int64), context=ctx))
    return out


# -- the run ----------------------------------------------------------------------------------------

@dataclass
class _StepLog:
    start_ns: int = 0
    end_ns: int = 0
    fetch_start_ns: int = 0
    compute: list = field(default_factory=list)       # (start mark, end mark)
    waits: dict = field(default_factory=dict)         # layer -> (fetch, wait start mark, wait end mark)


def resolve_device(device: str | None) -> str:
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} needs a CUDA GPU, and torch.cuda.is_available() is False "
                               "here; use --device cpu")
        if dev.index is None:   # an explicit index: worker threads set it (torch.cuda.set_device needs one)
            return f"cuda:{torch.cuda.current_device()}"
    return str(dev)


def _needs_gpu(cfg: RunConfig) -> str | None:
    p = cfg.placement
    if p.kind == "host_uva":
        return "placement host_uva"
    if p.kind == "hbm_cache" and p.miss_path == "host_uva":
        return "placement hbm_cache with miss_path host_uva"
    return None


def run(cfg: RunConfig, placement: str | None = None, steps: int | None = None, out: Path | None = None,
        device: str | None = None, *, warmup: int = 1, nvml_interval_s: float = 0.02,
        progress=None) -> RunRecord:
    """Run `cfg` for real and return (and write to `out`) a measured RunRecord."""
    import numba
    import torch

    from real_runs.backbone import Backbone
    from real_runs.cuda_gather import interpreting
    from real_runs.hashing import NgramHasher
    from real_runs.instrument import NvmlSampler, Timeline, describe_machine
    from real_runs.stores import HostTable, make_store
    from vocab.geometry import table_offsets

    baseline = placement == "none"
    if placement is not None and not baseline:
        cfg = cfg.with_placement(placement)
    device = resolve_device(device)
    cuda = torch.device(device).type == "cuda"
    what = None if baseline else _needs_gpu(cfg)
    if what and not cuda and not interpreting():
        raise RuntimeError(f"host_uva needs a CUDA GPU: {what} cannot run on {device!r}; on CPU use "
                           "placement hbm or host_dma (or hbm_cache with miss_path = 'host_dma'), or set "
                           "TRITON_INTERPRET=1 to run its kernel in Triton's interpreter (slow)")
    if what and cuda and interpreting():
        raise RuntimeError(f"{what} on {device!r}: unset TRITON_INTERPRET (the interpreter runs on the CPU only)")
    steps = int(steps or cfg.workload.steps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    warmup = max(0, int(warmup))
    total_steps = warmup + steps
    e, p, w = cfg.engram, cfg.placement, cfg.workload
    layers = [] if baseline else sorted(e.layer_ids)
    notes = ["placement none: the backbone without Engram (the baseline)"] if baseline else []
    if not p.dedup:
        notes.append("placement.dedup = false: the real stores always deduplicate a step's rows")
    if p.kind == "hbm_cache" and p.cache_policy == "lfu":
        notes.append("cache_policy lfu is run as lru")
    if p.fetch_streams != 1:
        notes.append(f"fetch_streams = {p.fetch_streams}: the real run uses one fetch stream and one worker")
    if what and interpreting():
        notes.append("host_uva kernel run in Triton's interpreter on the CPU (TRITON_INTERPRET=1): correct rows, "
                     "timings meaningless")
    max_threads = numba.config.NUMBA_NUM_THREADS
    hash_threads = min(p.hash_threads, max_threads)
    gather_threads = min(p.gather_threads, max_threads)
    rng = np.random.default_rng(w.seed)

    # Workload first: its sizes decide the KV cache.
    if w.phase == "decode":
        context, inputs = decode_inputs(cfg, total_steps, rng)
    else:
        context, inputs = None, prefill_inputs(cfg, total_steps, rng)

    timeline = Timeline(cuda=cuda, device=device)
    model = Backbone(cfg.backbone, None if baseline else e, device=device, seed=w.seed)
    cache = states = None
    max_len = 0
    if w.phase == "decode":
        capacity = int(context.max()) + total_steps
        if cuda:
            a = cfg.backbone.attention
            need = 2 * cfg.backbone.layers * w.sequences * a.kv_heads * capacity * a.head_dim * model.dtype.itemsize
            free, _ = torch.cuda.mem_get_info()
            if need > 0.9 * free:
                raise CapacityError("workload.sequences",
                                    f"the KV cache (K and V, {need / 2**30:.1f} GiB for {w.sequences} sequences x "
                                    f"{capacity} positions) does not fit the {free / 2**30:.1f} GiB free on the GPU",
                                    "use fewer sequences or shorter lengths")
        cache = model.new_cache(w.sequences, capacity, context)
        states = model.new_states(w.sequences)
        max_len = int(context.max())

    # Hashing, tables and stores, one per Engram layer.
    hasher = NgramHasher.from_config(e, threads=hash_threads)
    offsets = {layer: table_offsets(hasher.table_sizes(layer)) for layer in layers}
    stream = torch.cuda.Stream(device) if cuda else None
    tables, stores = {}, {}
    cache_rows = 0
    hot = {}
    if p.kind == "hbm_cache" and layers:
        cache_rows = cache_rows_per_layer(cfg)
        hot = _hot_rows(cfg, hasher, offsets, layers)
    ahead = w.decode_lookahead if w.phase == "decode" else w.prefill_prefetch_ahead
    try:
        setup_t0 = time.perf_counter()
        for layer in layers:
            rows = e.layer_rows(layer)
            tables[layer] = HostTable(rows, e.values_per_row, e.table_dtype, seed=e.seed * 1_000_003 + layer,
                                      pin=cuda and p.kind != "hbm")
            stores[layer] = make_store(p.kind, tables[layer], device, stream=stream, timeline=timeline,
                                       name=f"L{layer}", placement=p, cache_rows=cache_rows, hot_rows=hot.get(layer),
                                       protect=ahead + 1)
        setup_s = time.perf_counter() - setup_t0

        def rows_for(step: StepInput, layer: int) -> np.ndarray:
            return step_rows(hasher, step, layer, offsets[layer])

        # The worker: hashing and fetch issue for a step, in submission order (one fetch stream).
        worker = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="engram-fetch")
        futures: dict[int, dict[int, cf.Future]] = {}
        logs = [_StepLog() for _ in range(total_steps)]

        def fetch_job(s: int) -> None:
            fut = futures[s]
            try:
                if cuda:
                    torch.cuda.set_device(torch.device(device))
                t0 = time.perf_counter_ns()
                ids = {layer: rows_for(inputs[s], layer) for layer in layers}
                timeline.add("cpu hash", "hash", t0, time.perf_counter_ns(), s)
                numba.set_num_threads(gather_threads)
                for layer in layers:
                    fut[layer].set_result(stores[layer].prefetch(ids[layer], tag=(s, layer)))
                numba.set_num_threads(hash_threads)
            except BaseException as exc:  # hand the error to the compute side
                for f in fut.values():
                    if not f.done():
                        f.set_exception(exc)

        def submit(s: int) -> None:
            futures[s] = {layer: cf.Future() for layer in layers}
            # The fetch starts when the tokens exist and it is asked for: the worker's pick-up delay counts.
            logs[s].fetch_start_ns = time.perf_counter_ns()
            if layers:
                worker.submit(fetch_job, s)

        sampler = (NvmlSampler(nvml_interval_s, device_index=torch.device(device).index or 0, t0_ns=timeline.t0_ns)
                   if cuda else None)
        if sampler is not None:
            sampler.start()
        nvml = {"available": False, "reason": "the run is on CPU: no GPU to sample"}
        submitted = 0
        try:
            for s in range(total_steps):
                log = logs[s]
                step = inputs[s]
                while submitted < total_steps and submitted <= s + ahead:
                    submit(submitted)
                    submitted += 1
                log.start_ns = time.perf_counter_ns()
                ids_t = torch.from_numpy(step.ids % cfg.backbone.vocab_size).to(device, non_blocking=False)
                valid_idx = last_index = None
                if w.phase == "prefill":
                    lengths_t = torch.from_numpy(step.lengths).to(device)
                    last_index = lengths_t - 1
                    if int(step.lengths.min()) != step.ids.shape[1]:
                        valid = np.flatnonzero((np.arange(step.ids.shape[1])[None, :] < step.lengths[:, None])
                                               .reshape(-1))
                        valid_idx = torch.from_numpy(valid).to(device)

                def get_rows(layer: int, s=s, log=log, valid_idx=valid_idx, step=step):
                    w0 = timeline.mark()
                    f = futures[s][layer].result()
                    stores[layer].wait_ready(f)
                    w1 = timeline.mark()
                    log.waits[layer] = (f, w0, w1)
                    rows = stores[layer].finish(f)            # expand to lookups (and the HBM gather): compute
                    f.tensors.clear()   # the record keeps counts and events; free the device buffers now
                    if valid_idx is not None:
                        full = torch.zeros((step.ids.size, e.d_mem), dtype=rows.dtype, device=rows.device)
                        rows = full.index_copy_(0, valid_idx, rows.reshape(-1, e.d_mem))
                    log.compute.append((-1 - layer, w1, timeline.mark()))
                    return rows

                marks = {}

                def hook(i: int, when: str, log=log, marks=marks):
                    if when == "start":
                        marks[i] = timeline.mark()
                    else:
                        log.compute.append((i, marks.pop(i), timeline.mark()))

                logits = model(ids_t, get_rows, cache=cache, states=states, last_index=last_index, hook=hook,
                               max_len=max_len + 1 if cache is not None else None)
                logits.argmax(-1).cpu()      # the next token's dependency: a read-back every step
                timeline.anchor()            # the compute stream is idle: re-tie the GPU clock to the host's
                if cache is not None:
                    max_len += 1
                log.end_ns = time.perf_counter_ns()
                del futures[s]
                if progress:
                    progress(s, total_steps)
        finally:
            worker.shutdown(wait=True)
            if sampler is not None:
                nvml = sampler.stop()
        events_raw = timeline.resolve()

        record = _collect(cfg, timeline, logs, inputs, events_raw, warmup, layers)
        record.machine = describe_machine(device)
        # The GPU the run had, or on CPU the profiled GPU the config names.
        gpu_bytes = record.machine.get("gpu_memory_bytes") or load_profile(cfg.profile).gpu.hbm_gib * GiB
        memory = memory_footprint(cfg, gpu_bytes)
        record.extra = {
            "device": device,
            "warmup_steps": warmup,
            "notes": notes,
            "nvml": nvml,
            "setup": {"tables_s": setup_s, "table_bytes": int(sum(t.nbytes for t in tables.values())),
                      "fill_s": float(sum(t.fill_s for t in tables.values())),
                      "pin_s": float(sum(t.pin_s for t in tables.values()))},
            "memory": {k: v for k, v in memory.items() if k != "parameters"},
            "parameters": memory["parameters"],
            "model_dtype": str(model.dtype).replace("torch.", ""),
            "moe_impl": next((layer.ffn.impl for layer in model.layers if hasattr(layer.ffn, "impl")), None),
        }
        if cuda:
            record.summary = summarise(record.steps, load_profile(cfg.profile).link.h2d_gbps * 1e9)
    finally:  # unpin and unmap the tables even when the run fails
        if cuda:
            try:   # nothing may still read a table when it is unregistered and unmapped
                torch.cuda.synchronize(device)
            except RuntimeError:
                pass   # the device is in an error state: the original exception says why
        for store in stores.values():
            store.close()
        for t in tables.values():
            t.close()
    if out is not None:
        write_record(record, out)
    return record


def _hot_rows(cfg: RunConfig, hasher, offsets, layers) -> dict[int, np.ndarray]:
    """Row ids by falling frequency over a profiling sample of the workload (its own seed)."""
    w = cfg.workload
    rng = np.random.default_rng(w.seed + 7919)
    n = max(1, min(w.tokens.trace_steps, w.steps))
    if w.phase == "decode":
        _, sample = decode_inputs(cfg, n, rng)
    else:
        sample = prefill_inputs(cfg, n, rng)
    out = {}
    for layer in layers:
        ids = np.concatenate([step_rows(hasher, st, layer, offsets[layer]) for st in sample])
        uniq, counts = np.unique(ids, return_counts=True)
        out[layer] = uniq[np.argsort(-counts, kind="stable")]
    return out


def step_rows(hasher, step: StepInput, layer: int, offsets: np.ndarray) -> np.ndarray:
    """Global row ids (head offset + hashed row) of a step's valid tokens, [tokens * tables] flat."""
    if step.window is not None:
        ids = hasher.hash(step.window, layer)[:, -1, :]
    else:
        back = step.context.shape[1]
        h = hasher.hash(np.concatenate([step.context, step.ids], axis=1), layer)[:, back:]
        ids = h[np.arange(step.ids.shape[1])[None, :] < step.lengths[:, None]]
    return (ids + offsets[None, :]).reshape(-1)


def _collect(cfg: RunConfig, timeline, logs, inputs, events_raw, warmup: int, layers) -> RunRecord:
    import pandas as pd

    rb = cfg.engram.row_bytes
    sec = timeline.seconds
    base = (logs[warmup].start_ns - timeline.t0_ns) * 1e-9
    step_rows, fetch_rows, events = [], [], []
    for s in range(warmup, len(logs)):
        log = logs[s]
        k = s - warmup
        start = (log.start_ns - timeline.t0_ns) * 1e-9 - base
        end = (log.end_ns - timeline.t0_ns) * 1e-9 - base
        compute = float(sum(sec(b) - sec(a) for _, a, b in log.compute))
        fetch_start = (log.fetch_start_ns - timeline.t0_ns) * 1e-9 - base if layers else math.nan
        stall_total = fetch_total = 0.0
        host_rows = lookups = 0
        for layer in layers:
            f, w0, w1 = log.waits[layer]
            ready = sec(f.ready) - base if f.ready is not None else (f.issued_ns - timeline.t0_ns) * 1e-9 - base
            wait_start = sec(w0) - base
            stall = max(0.0, sec(w1) - sec(w0))
            fetch = max(0.0, ready - fetch_start)
            stall_total += stall
            fetch_total += fetch
            host_rows += f.host_rows
            lookups += f.lookups
            fetch_rows.append((k, layer, fetch_start, ready, fetch, wait_start, stall, f.lookups, f.unique_rows,
                               f.host_rows, f.cache_hits))
            if stall > 0:
                events.append(("stall", f"wait rows L{layer}", wait_start, wait_start + stall, k, layer))
            for actor, name, m0, m1 in f.events:
                events.append((actor, name, sec(m0) - base, sec(m1) - base, k, layer))
        for i, a, b in log.compute:
            if i < 0:
                name, layer = f"engram rows L{-1 - i}", -1 - i
            elif i >= cfg.backbone.layers:
                name, layer = "lm head", -1
            else:
                name, layer = (f"engram+layer {i}" if i in layers else f"layer {i}"), i
            events.append(("gpu compute", name, sec(a) - base, sec(b) - base, k, layer))
        overlap = max(0.0, min(1.0, 1 - stall_total / fetch_total)) if fetch_total > 0 else math.nan
        step_rows.append((k, start, end - start, compute, inputs[s].tokens, stall_total, fetch_total, overlap,
                          host_rows * rb, lookups * rb, host_rows * rb))
    for actor, name, a, b, step, layer in events_raw:
        if actor == "cpu hash" and step >= warmup:
            events.append((actor, name, a - base, b - base, step - warmup, layer))
    steps = pd.DataFrame(step_rows, columns=STEP_COLUMNS)
    fetches = pd.DataFrame(fetch_rows, columns=FETCH_COLUMNS)
    ev = pd.DataFrame(sorted(events, key=lambda r: r[2]), columns=EVENT_COLUMNS)
    return RunRecord(kind="measured", config=cfg.to_dict(), machine={}, summary=summarise(steps),
                     steps=steps, fetches=fetches, events=ev)


def main_run(args) -> int:
    """Entry point for `engram-sim run CONFIG [--placement P] [--steps N] [--out FILE] [--device D]`.

    `args` needs .config (a preset name or TOML path); optional .placement, .steps, .out, .device,
    .warmup. Prints a one-line summary; returns the exit code (2 for a setup error such as a
    GPU-only placement on a CPU machine)."""
    from vocab.config import load_config

    try:
        import torch  # noqa: F401
    except ImportError:
        print("engram-sim run: real runs need PyTorch (pip install 'engram-sim[real]')", file=sys.stderr)
        return 2
    cfg = load_config(args.config)
    placement = getattr(args, "placement", None)
    kind = placement or cfg.placement.kind
    out = getattr(args, "out", None)
    out = Path(out) if out else Path("out") / f"{cfg.name}-{kind}-measured.json"
    try:
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
