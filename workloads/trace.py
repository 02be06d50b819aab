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

Distinct rows are counted with two bitmaps over the layer's rows (small tables,
or steps dense in them) or with a hash table holding one step (use_bitmaps picks
the cheaper; the counts are the same): bitmaps briefly need n_rows / 4 bytes per
Engram layer (at most BITMAP_MAX_ROWS rows: 64 MB). The token streams are hashed
once for all the traces built from them (_hashed).
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numba
import numpy as np
from numba import njit

from vocab.config import RunConfig
from vocab.geometry import table_offsets
from workloads.cache import TierRates, dense_ids, replay_tiers
from workloads.fastmod import mod_prime
from workloads.hashing import layer_multipliers
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
    if key in _MEMO:
        _MEMO.move_to_end(key)
        return _MEMO[key]
    trace = _build(cfg, cache_rows, dram_rows)
    for value in trace.__dict__.values():
        if isinstance(value, np.ndarray):
            value.setflags(write=False)
    _MEMO[key] = trace
    if len(_MEMO) > _MEMO_SIZE:
        _MEMO.popitem(last=False)
    return trace


@dataclass
class _Hashed:
    """Steps of tokens hashed into rows: the per-step counts, and each layer's distinct rows if listed."""
    bounds: np.ndarray
    step: dict
    distinct: np.ndarray
    reused: np.ndarray
    ids: np.ndarray | None
    dense: dict = field(default_factory=dict)  # per layer column: dense_ids of its listed rows, once needed


def _hash_steps(cfg: RunConfig, n_steps: int, rng: np.random.Generator, list_ids: bool) -> _Hashed:
    eng, work = cfg.engram, cfg.workload
    source = make_token_source(cfg)
    if work.phase == "decode":
        ctx, bounds, step = _decode_tokens(cfg, n_steps, source, rng)
    else:
        ctx, bounds, step = _prefill_tokens(cfg, n_steps, source, rng)
    sizes = [eng.table_sizes[layer] for layer in eng.layer_ids]
    multipliers = np.stack([layer_multipliers(eng.seed, layer, eng.max_ngram_size, eng.compressed_vocab_size)
                            for layer in eng.layer_ids])
    primes = np.array(sizes, dtype=np.int64)  # [layers, orders, heads]
    offsets = np.stack([table_offsets(s) for s in sizes])
    distinct = np.zeros((n_steps, len(sizes)), dtype=np.int64)
    reused = np.zeros_like(distinct)
    n_rows = np.array([eng.layer_rows(layer) for layer in eng.layer_ids], dtype=np.int64)
    lookups = max(1, int(np.diff(bounds).max(initial=0)) * eng.tables_per_layer)  # in the widest step
    bitmap = use_bitmaps(n_rows, lookups)
    # One pass counts (and, for the replay, lists) the distinct rows; lookups bound how many there can be.
    ids = np.empty((len(sizes), int(bounds[-1]) * eng.tables_per_layer if list_ids else 0), dtype=np.int64)

    def hash_layer(col: int) -> None:
        d, r = np.zeros(n_steps, dtype=np.int64), np.zeros(n_steps, dtype=np.int64)
        _layer_rows(ctx, bounds, multipliers[col], primes[col], offsets[col], n_rows[col], bitmap[col], d, r, ids[col],
                    _hash_table(1 if bitmap[col] else 2 * lookups, int(n_rows[col])))
        distinct[:, col], reused[:, col] = d, r

    # The kernel releases the GIL: layers hash side by side on threads (a Numba parallel region costs more
    # to start than a small trace takes).
    threads = min(numba.get_num_threads(), len(sizes))
    if threads > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(hash_layer, range(len(sizes))))
    else:
        for col in range(len(sizes)):
            hash_layer(col)
    ids = ids if list_ids else None
    return _Hashed(bounds, step, distinct, reused, ids)


_HASHED: OrderedDict[str, _Hashed] = OrderedDict()
# A sweep point builds traces for several placements from the same token streams (an HBM cache, ssd's
# caches): each stream is hashed once. Two entries: the trace's stream and the replay's.
_HASHED_SIZE = 2


def _hashed(cfg: RunConfig, n_steps: int, replay: bool) -> _Hashed:
    """The trace's token stream (replay False: counts only) or the cache replay's (its own draw, rows listed),
    hashed; memoised, as only cfg.engram and cfg.workload matter."""
    key = json.dumps([asdict(cfg.engram), asdict(cfg.workload), n_steps, replay,  # and how rows are counted
                      BITMAP_MAX_ROWS, BITMAP_CACHED_ROWS, BITMAP_ROWS_PER_LOOKUP], sort_keys=True)
    if key in _HASHED:
        _HASHED.move_to_end(key)
        return _HASHED[key]
    seed = cfg.workload.seed
    rng = np.random.default_rng([seed, 0x5EED] if replay else seed)  # the replay's draw: its own, repeatable
    _HASHED[key] = hashed = _hash_steps(cfg, n_steps, rng, list_ids=replay)
    if len(_HASHED) > _HASHED_SIZE:
        _HASHED.popitem(last=False)
    return hashed


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
        counts = hashed.distinct[:, col]
        rows = hashed.ids[col, : counts.sum()]
        if col not in hashed.dense:  # the relabelling is most of a replay: kept for the stream's other traces
            hashed.dense[col] = dense_ids(rows)
        return replay_tiers(rows, counts, table_rows[col], cache_rows, p.cache_policy, dram_rows,
                            p.dram_cache_policy, dense=hashed.dense[col])

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


# Which sets count a layer's distinct rows: both give the same counts; they differ in cost. A bitmap
# costs about its size (n_rows / 4 bytes, page faults and cache misses included), the hash table about
# each lookup (it holds one step). Measured here: bitmaps win while they fit in the CPU's caches
# (BITMAP_CACHED_ROWS), or while a step's lookups are dense enough in the table
# (BITMAP_ROWS_PER_LOOKUP table rows per lookup or fewer: prefill-size steps), and never above
# BITMAP_MAX_ROWS (memory).
BITMAP_MAX_ROWS = 1 << 28
BITMAP_CACHED_ROWS = 1 << 25
BITMAP_ROWS_PER_LOOKUP = 256


def _hash_table(entries: int, n_rows: int) -> np.ndarray:
    """_layer_rows' hash table: [slots, 2] all ones (never a row: an empty slot), slots the power of two
    >= entries, rows in uint32 if they fit, else int64 (all ones: -1; int64, as Numba compares uint64 with
    int64 through floats)."""
    slots = 1 << max(1, (entries - 1).bit_length())
    if n_rows < (1 << 32) - 1:
        return np.full((slots, 2), (1 << 32) - 1, dtype=np.uint32)
    return np.full((slots, 2), -1, dtype=np.int64)


def use_bitmaps(n_rows: np.ndarray, lookups_per_step: int) -> np.ndarray:
    """Per layer: count with bitmaps (True) or a hash table (False), whichever is cheaper."""
    dense_enough = max(BITMAP_CACHED_ROWS, BITMAP_ROWS_PER_LOOKUP * lookups_per_step)
    return n_rows <= min(BITMAP_MAX_ROWS, dense_enough)


@njit(cache=True, nogil=True)
def _layer_rows(ctx, bounds, multipliers, primes, offsets, n_rows, use_bitmap, distinct, reused, ids_out, table):
    """Hash every token's N-grams into global rows; count distinct rows per step and those also in the
    previous step. If ids_out is not empty, write each step's distinct rows into it, in step order.

    Two sets (this step, previous step) alternate. With use_bitmap they are bitmaps: 2 bits per table
    row; a bitmap is cleared by unsetting only the rows its step set. Otherwise they are `table`, one
    open-addressing hash table ([slots, 2], slots a power of two >= 2 lookups of the widest step) whose
    slot holds an entry of each set side by side (one cache line serves both probes), its rows stored
    in uint32 for tables below 4 G rows (half the cache traffic of int64); a set is emptied (all ones)
    as its step begins.
    """
    n_steps = bounds.size - 1
    n_orders, n_heads = primes.shape
    widest = 0
    for s in range(n_steps):
        widest = max(widest, bounds[s + 1] - bounds[s])
    per_step = max(1, widest * n_orders * n_heads)
    bits = np.zeros((2, (n_rows + 63) // 64 if use_bitmap else 1), dtype=np.uint64)
    seen = np.empty((2, per_step if use_bitmap else 1), dtype=np.int64)  # rows set in each bitmap
    n_seen = np.zeros(2, dtype=np.int64)
    slots, bits_log2 = table.shape[0], 0
    while (1 << bits_log2) < slots:
        bits_log2 += 1
    empty = table[0, 0]  # handed over all ones: an empty slot
    mask = slots - 1
    shift = np.uint64(64 - bits_log2)
    n_out = 0
    inv = 1.0 / primes.astype(np.float64)
    for s in range(n_steps):
        cur = s & 1
        prev = cur ^ 1
        if not use_bitmap:  # forget step s - 2
            for h in range(slots):
                table[h, cur] = empty
        if use_bitmap:
            for k in range(n_seen[cur]):  # forget step s - 2
                bits[cur, seen[cur, k] >> 6] = 0
            n_seen[cur] = 0
        for i in range(bounds[s], bounds[s + 1]):
            mix = ctx[i, 0] * multipliers[0]
            for o in range(n_orders):
                mix ^= ctx[i, o + 1] * multipliers[o + 1]
                for j in range(n_heads):
                    row = offsets[o * n_heads + j] + mod_prime(mix, primes[o, j], inv[o, j])
                    if use_bitmap:
                        word = row >> 6
                        bit = np.uint64(1) << np.uint64(row & 63)
                        if bits[cur, word] & bit:
                            continue  # already seen this step
                        bits[cur, word] |= bit
                        seen[cur, n_seen[cur]] = row
                        n_seen[cur] += 1
                        in_prev = (bits[prev, word] & bit) != 0
                    else:
                        start = np.int64((np.uint64(row) * np.uint64(11400714819323198485)) >> shift)
                        h = start
                        while table[h, cur] != row and table[h, cur] != empty:
                            h = (h + 1) & mask
                        if table[h, cur] == row:
                            continue  # already seen this step
                        table[h, cur] = row
                        h = start
                        in_prev = False
                        while table[h, prev] != empty:
                            if table[h, prev] == row:
                                in_prev = True
                                break
                            h = (h + 1) & mask
                    distinct[s] += 1
                    if in_prev:
                        reused[s] += 1
                    if ids_out.size:
                        ids_out[n_out] = row
                        n_out += 1
