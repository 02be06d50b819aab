"""The per-step workload the simulator consumes: tokens, attention work, and Engram row traffic.

A trace covers S = min(workload.steps, workload.tokens.trace_steps) distinct
steps, hashed exactly with the official rule; the simulator cycles them for
longer runs (`Trace.at(step)`).

Tokens are packed into steps by workloads/steps.py, the packing the real runs
use too. Decode: every step each sequence adds one token; contexts just grow
(no sequence finishes or is replaced within the trace: S is short next to the
lengths). Prefill: prompts packed into steps of exactly tokens_per_step tokens.

Per-layer arrays are [S, n_layers], columns in `layer_ids` order
(= cfg.engram.layer_ids). Rows are global row ids in the layer's one big table
(head offset + hashed row). Traces are memoised per configuration; their
arrays are read-only.

Caches (hbm_cache; ssd's HBM and DRAM caches) are replayed from cold over a
longer stream of the same token source (replay_caches): until the largest
cache has filled and seen three times its capacity, within
workload.cache_replay_rows accesses per layer. The trace's steps then take the
steady state's hit rates; the warm-up is reported apart (Trace.tiers).

Distinct rows are counted per head table (workloads.rowsets): in a trace's steps
with two bitmaps (head tables of up to BITMAP_HEAD_ROWS rows: 2 MB) or two
hash sets holding one step each (use_bitmaps picks the cheaper; the counts are
the same); in a cache replay's stream with one map per head
table over the whole stream, whose counts of rows seen in earlier steps are the
hits of a cache that evicts nothing: only a cache that evicts replays the rows
(workloads.cache). The token streams are drawn once per workload (a sweep's
table sizes share them) and hashed once for all the traces built from them
(_hashed).
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numba
import numpy as np

from vocab.config import RunConfig
from vocab.geometry import table_offsets
from workloads.cache import TierRates, replay_tiers, unevicted_tiers
from workloads.hashing import layer_multipliers
from workloads.rowsets import count_rows, list_rows, ngram_mixes, scan_rows
from workloads.steps import decode_steps, prefill_steps
from workloads.tokens import make_token_source


@dataclass(frozen=True)
class Trace:
    phase: str                    # "decode" or "prefill"
    layer_ids: list[int]          # column order of the per-layer arrays
    tokens: np.ndarray            # [S] new tokens processed in the step
    sequences: np.ndarray         # [S] sequences (decode) or prompt chunks (prefill) in the step
    attn_context_sum: np.ndarray  # [S] sum over new tokens of the keys each attends to (itself included)
    kv_tokens: np.ndarray         # [S] tokens in the KV cache at the end of the step
    lookups: np.ndarray           # [S, n_layers] tokens * tables_per_layer
    unique_rows: np.ndarray       # [S, n_layers] rows fetched: distinct_rows if placement.dedup, else lookups
    distinct_rows: np.ndarray     # [S, n_layers] distinct global row ids in the step
    reused_rows: np.ndarray       # [S, n_layers] distinct rows also in the previous step (step 0: 0)
    cache_hits: np.ndarray        # [S, n_layers] distinct rows served by the HBM cache, steady state (zeros if none)
    cache_rows: int | None        # cache capacity per Engram layer, in rows (None: no cache replayed)
    # ssd: rows the DRAM cache serves of what the HBM cache misses, steady state (zeros if none), its rows
    # per layer, and per layer what the replay of both caches measured (warm-up apart from steady state).
    dram_hits: np.ndarray | None = None
    dram_rows: int | None = None
    tiers: list[TierRates] | None = None

    @property
    def steps(self) -> int:
        return self.tokens.size

    def at(self, step: int) -> int:
        """Index into the trace for a simulated step (the trace repeats)."""
        return step % self.steps

    def column(self, layer_id: int) -> int:
        return self.layer_ids.index(layer_id)


_MEMO: OrderedDict[str, Trace] = OrderedDict()
_MEMO_SIZE = 8
# The cache replay runs until its largest cache has seen this many times its capacity in accesses.
REPLAY_FILL_FACTOR = 3


def build_trace(cfg: RunConfig, cache_rows: int | None = None, dram_rows: int | None = None) -> Trace:
    """Trace for cfg; with cache_rows, also replay an HBM cache of that many rows PER LAYER with
    cfg.placement.cache_policy (each Engram layer's table has its own cache), and with dram_rows a DRAM cache
    of what the HBM cache misses, with cfg.placement.dram_cache_policy."""
    p = cfg.placement
    key = json.dumps([asdict(cfg.engram), asdict(cfg.workload), p.dedup, p.cache_policy, cache_rows,
                      p.dram_cache_policy, dram_rows], sort_keys=True)
    return _remember(_MEMO, _MEMO_SIZE, key, lambda: _read_only(_build(cfg, cache_rows, dram_rows)))


def _read_only(trace: Trace) -> Trace:
    for value in trace.__dict__.values():
        if isinstance(value, np.ndarray):
            value.setflags(write=False)
    return trace


@dataclass
class _Layer:
    """One layer of a scanned stream (workloads.rowsets.scan_rows): what the scan needs, and its distinct
    rows; the stream's rows and their dense ids listed (scanned again, labelling) once asked for."""
    mix: np.ndarray
    bounds: np.ndarray
    primes: np.ndarray
    offsets: np.ndarray
    n_rows: int
    n_distinct: int
    listed: tuple | None = None

    def rows(self) -> tuple[np.ndarray, tuple[np.ndarray, int]]:
        """(the distinct rows of each step in stream order, (their dense ids, how many)); the rows array is
        one per lookup long (past the listed rows: unwritten)."""
        if self.listed is None:
            tokens = self.mix.shape[1]
            labels = np.empty((self.primes.size, tokens), dtype=np.int32)
            table = _hash_table(2 * tokens, self.n_rows, lanes=3)
            local = np.empty(self.primes.size * tokens, dtype=table.dtype)
            n_sub = np.zeros(self.primes.size, dtype=np.int64)
            counts = [np.zeros(self.bounds.size - 1, dtype=np.int64) for _ in range(3)]  # (counted already)
            scan_rows(self.mix, self.bounds, self.primes, table, labels, local, n_sub, *counts)
            ids, dense = np.empty(labels.size, dtype=np.int64), np.empty(labels.size, dtype=np.int64)
            n, n_dense = list_rows(tokens, labels, local, n_sub, self.offsets, ids, dense)
            self.listed = ids, (dense[:n], int(n_dense))
        return self.listed


@dataclass
class _Hashed:
    """Steps of tokens hashed into rows: the per-step counts, and for a listed stream (a cache replay's) the
    rows also in any earlier step and each layer's scan."""
    bounds: np.ndarray
    step: dict
    distinct: np.ndarray
    reused: np.ndarray
    earlier: np.ndarray | None = None
    layers: list[_Layer] | None = None

    @property
    def ids(self) -> np.ndarray:
        """[layers, lookups]: each layer's distinct rows per step, in stream order (past them: unwritten)."""
        return np.stack([layer.rows()[0] for layer in self.layers])


def _tokens(cfg: RunConfig, n_steps: int, rng: np.random.Generator) -> tuple:
    """(context matrix, step bounds, per-step attention and KV sums) of n_steps steps of cfg's workload."""
    source = make_token_source(cfg)
    if cfg.workload.phase == "decode":
        return _decode_tokens(cfg, n_steps, source, rng)
    return _prefill_tokens(cfg, n_steps, source, rng)


def _hash_steps(cfg: RunConfig, n_steps: int, rng: np.random.Generator, list_ids: bool) -> _Hashed:
    return _hash_tokens(cfg, *_tokens(cfg, n_steps, rng), list_ids)


def _hash_tokens(cfg: RunConfig, ctx: np.ndarray, bounds: np.ndarray, step: dict, list_ids: bool) -> _Hashed:
    """Count each layer's distinct rows per step (list_ids: scan the stream, for a cache replay)."""
    eng = cfg.engram
    n_steps = bounds.size - 1
    sizes = [eng.table_sizes[layer] for layer in eng.layer_ids]
    multipliers = [layer_multipliers(eng.seed, layer, eng.max_ngram_size, eng.compressed_vocab_size)
                   for layer in eng.layer_ids]
    n_rows = np.array([eng.layer_rows(layer) for layer in eng.layer_ids], dtype=np.int64)
    widest = max(1, int(np.diff(bounds).max(initial=0)))
    bitmap = use_bitmaps(n_rows, np.array([max(max(heads) for heads in size) for size in sizes]))
    counts = [np.zeros((n_steps, 3), dtype=np.int64) for _ in sizes]  # distinct, reused, earlier
    layers: list[_Layer | None] = [None] * len(sizes)
    n_orders = eng.max_ngram_size - 1

    def hash_layer(col: int) -> None:
        primes = np.array(sizes[col], dtype=np.int64)  # [orders, heads]
        mix = ngram_mixes(ctx, multipliers[col], n_orders)
        d, r, e = (np.zeros(n_steps, dtype=np.int64) for _ in range(3))
        if not list_ids:
            table = _hash_table(1 if bitmap[col] else COUNT_TABLE_FACTOR * widest, int(n_rows[col]))
            count_rows(mix, bounds, primes, bitmap[col], table, d, r)
        else:
            tokens = ctx.shape[0]
            n_sub = np.zeros(primes.size, dtype=np.int64)
            no_labels = np.empty((0, 0), dtype=np.int32)
            table = _hash_table(2 * tokens, int(n_rows[col]))
            scan_rows(mix, bounds, primes, table, no_labels, np.empty(0, dtype=table.dtype), n_sub, d, r, e)
            layers[col] = _Layer(mix, bounds, primes, table_offsets(sizes[col]), int(n_rows[col]), int(n_sub.sum()))
        counts[col][:, 0], counts[col][:, 1], counts[col][:, 2] = d, r, e

    # The kernels release the GIL: layers hash side by side on threads (a Numba parallel region costs more
    # to start than a small trace takes).
    threads = min(numba.get_num_threads(), len(sizes))
    if threads > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(hash_layer, range(len(sizes))))
    else:
        for col in range(len(sizes)):
            hash_layer(col)
    c = np.stack(counts, axis=1)  # [steps, layers, 3]
    return _Hashed(bounds, step, c[:, :, 0].copy(), c[:, :, 1].copy(),
                   c[:, :, 2].copy() if list_ids else None, layers if list_ids else None)


_STREAMS: OrderedDict[str, tuple] = OrderedDict()
_HASHED: OrderedDict[str, _Hashed] = OrderedDict()
# A sweep point builds traces for several placements from the same token streams (an HBM cache, ssd's
# caches): each stream is hashed once. Two entries: the trace's stream and the replay's. The tokens
# themselves do not depend on the table: a sweep's table sizes share them (four entries: two phases).
_HASHED_SIZE = 2
_STREAMS_SIZE = 4


def clear_memos() -> None:
    """Forget every trace, hashed stream and token stream (a benchmark that times them from cold)."""
    for memo in (_MEMO, _HASHED, _STREAMS):
        memo.clear()


def _remember(memo: OrderedDict, size: int, key: str, make):
    if key in memo:
        memo.move_to_end(key)
        return memo[key]
    memo[key] = value = make()
    if len(memo) > size:
        memo.popitem(last=False)
    return value


def _stream(cfg: RunConfig, n_steps: int, replay: bool) -> tuple:
    """_tokens of the trace's draw (replay False) or the cache replay's (its own, repeatable), memoised on
    what they depend on: the workload and the engram fields the token streams read."""
    eng = cfg.engram
    key = json.dumps([asdict(cfg.workload), eng.max_ngram_size, eng.compressed_vocab_size, eng.compressed_pad_id,
                      n_steps, replay], sort_keys=True)
    seed = cfg.workload.seed
    return _remember(_STREAMS, _STREAMS_SIZE, key,
                     lambda: _tokens(cfg, n_steps, np.random.default_rng([seed, 0x5EED] if replay else seed)))


def _hashed(cfg: RunConfig, n_steps: int, replay: bool) -> _Hashed:
    """The trace's token stream (replay False: counts only) or the cache replay's (scanned), hashed;
    memoised, as only cfg.engram and cfg.workload matter."""
    key = json.dumps([asdict(cfg.engram), asdict(cfg.workload), n_steps, replay,  # and how rows are counted
                      BITMAP_MAX_ROWS, BITMAP_HEAD_ROWS], sort_keys=True)
    return _remember(_HASHED, _HASHED_SIZE, key,
                     lambda: _hash_tokens(cfg, *_stream(cfg, n_steps, replay), list_ids=replay))


def _build(cfg: RunConfig, cache_rows: int | None, dram_rows: int | None) -> Trace:
    eng, work = cfg.engram, cfg.workload
    n_steps = min(work.steps, work.tokens.trace_steps)
    hashed = _hashed(cfg, n_steps, replay=False)
    distinct = hashed.distinct
    hits, dram = np.zeros_like(distinct), np.zeros_like(distinct)
    tiers = None
    if cache_rows is not None or dram_rows is not None:
        tiers = replay_caches(cfg, cache_rows or 0, dram_rows or 0, float(distinct.mean()))
        for col, t in enumerate(tiers):
            # Every trace step takes the steady state's rates (the warm-up is reported apart, in `tiers`).
            hits[:, col] = np.rint(distinct[:, col] * t.hbm_hit_rate)
            dram[:, col] = np.minimum(np.rint(distinct[:, col] * t.dram_hit_rate), distinct[:, col] - hits[:, col])
    lookups = np.repeat(np.diff(hashed.bounds)[:, None] * eng.tables_per_layer, len(eng.layer_ids), axis=1)
    return Trace(
        phase=work.phase, layer_ids=list(eng.layer_ids), tokens=np.diff(hashed.bounds), **hashed.step,
        lookups=lookups, unique_rows=distinct.copy() if cfg.placement.dedup else lookups.copy(),
        distinct_rows=distinct, reused_rows=hashed.reused, cache_hits=hits, cache_rows=cache_rows,
        dram_hits=dram, dram_rows=dram_rows, tiers=tiers,
    )


def replay_steps(cfg: RunConfig, capacity_rows: int, distinct_per_step: float) -> int:
    """Steps of the cache replay: enough for the largest cache to see REPLAY_FILL_FACTOR times its capacity
    (at least the trace's own steps), within workload.cache_replay_rows accesses per layer."""
    trace_steps = min(cfg.workload.steps, cfg.workload.tokens.trace_steps)
    per_step = max(distinct_per_step, 1.0)
    wanted = math.ceil(REPLAY_FILL_FACTOR * capacity_rows / per_step)
    budget = max(1, int(cfg.workload.cache_replay_rows // per_step))
    return int(max(min(trace_steps, budget), min(wanted, budget), 2))


def replay_caches(cfg: RunConfig, cache_rows: int, dram_rows: int, distinct_per_step: float) -> list[TierRates]:
    """Each Engram layer's HBM cache (and the DRAM cache behind it), replayed from cold over a token stream of
    its own (the same source, another draw), in the trace's layer order."""
    eng, p = cfg.engram, cfg.placement
    table_rows = [eng.layer_rows(layer) for layer in eng.layer_ids]
    # A cache that holds the whole table needs no long replay: only its warm-up is seen.
    fillable = [c for c in (cache_rows, dram_rows) if 0 < c < min(table_rows)]
    steps = replay_steps(cfg, max(fillable, default=0), distinct_per_step)
    hashed = _hashed(cfg, steps, replay=True)

    def replay_layer(col: int) -> TierRates:
        counts, layer = hashed.distinct[:, col], hashed.layers[col]
        args = (table_rows[col], cache_rows, p.cache_policy, dram_rows, p.dram_cache_policy)
        # Caches that evict nothing follow from the scan's counts alone; else the rows are replayed.
        quick = unevicted_tiers(counts, hashed.earlier[:, col], layer.n_distinct, *args)
        if quick is not None:
            return quick
        rows, dense = layer.rows()  # listed once: kept for the stream's other traces
        return replay_tiers(rows, counts, *args, dense=dense)

    # The replay loops release the GIL, so layers replay side by side.
    with ThreadPoolExecutor(max_workers=numba.get_num_threads()) as pool:
        return list(pool.map(replay_layer, range(len(table_rows))))


def _decode_tokens(cfg: RunConfig, n_steps: int, source, rng):
    """Context matrix for S steps x B sequences, step-major; ctx[i, k] = token k places before token i."""
    steps = decode_steps(cfg, n_steps, rng, source)
    B = steps.sequences
    bounds = np.arange(n_steps + 1, dtype=np.int64) * B
    # Keys each new token attends to (its context and itself); a cache that does not grow stays at its length.
    growth = np.arange(1, n_steps + 1) if cfg.workload.lengths.grow else np.ones(n_steps, dtype=np.int64)
    seen = (steps.context[None, :] + growth[:, None]).sum(axis=1)
    step = dict(sequences=np.full(n_steps, B, dtype=np.int64), attn_context_sum=seen, kv_tokens=seen)
    return steps.contexts(), bounds, step


def _prefill_tokens(cfg: RunConfig, n_steps: int, source, rng):
    """Context matrix for S full steps of packed prompts, and the per-step attention and KV sums."""
    steps = prefill_steps(cfg, n_steps, rng, source)
    pos, chunk_end = steps.position, steps.chunk_end
    per_step = (n_steps, steps.tokens_per_step)
    step = dict(
        sequences=chunk_end.reshape(per_step).sum(axis=1),
        attn_context_sum=(pos + 1).reshape(per_step).sum(axis=1),
        kv_tokens=np.where(chunk_end, pos + 1, 0).reshape(per_step).sum(axis=1),
    )
    return steps.contexts(), steps.bounds, step


# Which sets count a head table's distinct rows per step: both give the same counts; they differ in
# cost. Its two bitmaps cost about their size (2 bits a row: page faults and cache misses), a hash set
# about each lookup. Measured here, one head table at a time: bitmaps win up to about BITMAP_HEAD_ROWS
# rows a head table (2 MB of bitmaps), in decode and prefill alike. Never above BITMAP_MAX_ROWS rows a layer.
BITMAP_MAX_ROWS = 1 << 28
BITMAP_HEAD_ROWS = 1 << 23
# count_rows' hash sets hold one step of a sub-table in this many times its tokens' slots: a probe then
# rarely walks (most of what it costs is the mispredicted end of a walk), and the set still sits in L2.
COUNT_TABLE_FACTOR = 8


def _hash_table(entries: int, n_rows: int, lanes: int = 2) -> np.ndarray:
    """A hash table of the row-set kernels (workloads.rowsets): [slots, lanes] all ones (never a row: an
    empty slot), slots the power of two >= entries, rows in uint32 if a layer's rows fit, else int64 (all
    ones: -1; int64, as Numba compares uint64 with int64 through floats)."""
    slots = 1 << max(1, (entries - 1).bit_length())
    if n_rows < (1 << 32) - 1:
        return np.full((slots, lanes), (1 << 32) - 1, dtype=np.uint32)
    return np.full((slots, lanes), -1, dtype=np.int64)


def use_bitmaps(n_rows: np.ndarray, head_rows: np.ndarray) -> np.ndarray:
    """Per layer (its rows, its largest head table's rows): count with bitmaps (True) or a hash table
    (False), whichever is cheaper."""
    return (n_rows <= BITMAP_MAX_ROWS) & (head_rows <= BITMAP_HEAD_ROWS)
