"""Table stores: identical rows from every placement, bounds errors before any read."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from real_runs.cuda_gather import uva_unavailable_reason  # noqa: E402
from real_runs.stores import (  # noqa: E402
    STORES,
    HBMCacheStore,
    HBMStore,
    HostDMAStore,
    HostTable,
    HostUVAStore,
    dedup,
    make_store,
)
from vocab.config import load_config  # noqa: E402
from vocab.placements import ENGRAM_PLACEMENTS, NONE  # noqa: E402

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
needs_uva = pytest.mark.skipif(uva_unavailable_reason() is not None,
                               reason=str(uva_unavailable_reason()))

ROWS, VPR = 997, 20          # 40 B rows (bf16)


@pytest.fixture
def interpret(monkeypatch):
    """Run the host_uva Triton kernel in Triton's interpreter, on the CPU."""
    pytest.importorskip("triton", reason="the Triton interpreter needs Triton (pip install triton)")
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.fixture
def no_interpret(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


@pytest.fixture(scope="module")
def table():
    return HostTable(ROWS, VPR, "bf16", seed=11)


def _ids(n=600, seed=0):
    rng = np.random.default_rng(seed)
    return rng.zipf(1.3, size=n).astype(np.int64) % ROWS     # repeats, unsorted


def _cpu_stores(table):
    return [
        HBMStore(table),
        HostDMAStore(table),
        HostDMAStore(table, chunk_mib=64 * 40 / (1 << 20), buffers=2),       # many 64-row chunks
        HBMCacheStore(table, capacity=50, policy="static_topk", hot_rows=_ids(2000, seed=9)),
        HBMCacheStore(table, capacity=50, policy="lru"),
        HBMCacheStore(table, capacity=0, policy="lru"),
    ]


def test_table_is_deterministic_and_seeded():
    a, b, c = HostTable(64, 8, "bf16", seed=1), HostTable(64, 8, "bf16", seed=1), HostTable(64, 8, "bf16", seed=2)
    assert torch.equal(a.tensor.view(torch.int16), b.tensor.view(torch.int16))
    assert not torch.equal(a.tensor.view(torch.int16), c.tensor.view(torch.int16))
    for dtype in ("bf16", "fp16", "fp32", "fp8", "int8"):
        t = HostTable(16, 8, dtype, seed=3)
        v = t.tensor.float()
        assert torch.isfinite(v).all() and v.abs().max() <= 128 and t.tensor.shape == (16, 8)


def test_all_cpu_stores_return_identical_rows(table):
    want = table.row_values(_ids())
    for store in _cpu_stores(table):
        for rep in range(3):       # caches warm up; results must not change
            ids = _ids(seed=rep)
            got = store.wait(store.prefetch(ids))
            assert got.shape == (ids.size, VPR)
            assert torch.equal(got.view(torch.int16), table.row_values(ids).view(torch.int16)), (store.kind, rep)
    assert torch.equal(store.wait(store.prefetch(_ids())).view(torch.int16), want.view(torch.int16))


def test_fetch_counts(table):
    ids = np.array([5, 3, 5, 900, 3, 3], dtype=np.int64)
    f = HostDMAStore(table).prefetch(ids)
    assert (f.lookups, f.unique_rows, f.host_rows, f.cache_hits) == (6, 3, 3, 0)
    f = HBMStore(table).prefetch(ids)
    assert (f.lookups, f.unique_rows, f.host_rows) == (6, 3, 0)
    cache = HBMCacheStore(table, capacity=2, policy="static_topk", hot_rows=[3, 7])
    f = cache.prefetch(ids)
    assert (f.unique_rows, f.host_rows, f.cache_hits) == (3, 2, 1)
    cache.wait(f)


def test_lru_keeps_rows_that_prefetches_ahead_still_need(table):
    """Two prefetches before their waits (prefetch ahead): the second must not evict the first's rows."""
    store = HBMCacheStore(table, capacity=4, policy="lru", protect=2)
    a, b = np.array([1, 2, 3, 4]), np.array([5, 6, 7, 8])
    store.wait(store.prefetch(a))                 # cache: 1..4
    fa = store.prefetch(a)                         # all hits
    fb = store.prefetch(b)                         # misses; may not evict 1..4 (touched one prefetch ago)
    assert fa.cache_hits == 4 and fb.cache_hits == 0
    ra, rb = store.wait(fa), store.wait(fb)
    assert torch.equal(ra.view(torch.int16), table.row_values(a).view(torch.int16))
    assert torch.equal(rb.view(torch.int16), table.row_values(b).view(torch.int16))


@pytest.mark.parametrize("bad", [ROWS, ROWS + 12345, -1, np.iinfo(np.int64).max])
def test_out_of_range_ids_raise_before_any_read(table, bad):
    for store in _cpu_stores(table):
        ids = np.array([0, 5, bad, 7], dtype=np.int64)
        with pytest.raises(ValueError, match=rf"row id {bad} is outside .* of {ROWS} rows"):
            store.prefetch(ids)


def test_dedup_rejects_non_integer_ids():
    with pytest.raises(ValueError, match="integers"):
        dedup(np.array([1.5]), 10)
    u, inv = dedup(np.array([[4, 2], [2, 9]]), 10)
    assert u.tolist() == [2, 4, 9] and u[inv].tolist() == [4, 2, 2, 9]


def test_empty_prefetch(table):
    for store in _cpu_stores(table):
        assert store.wait(store.prefetch(np.zeros(0, np.int64))).shape == (0, VPR)


def _uva_stores(table):
    return [HostUVAStore(table, "cpu"),
            HBMCacheStore(table, capacity=50, policy="lru", miss_path="host_uva"),
            HBMCacheStore(table, capacity=50, policy="static_topk", miss_path="host_uva", hot_rows=_ids(2000, seed=9))]


def test_host_uva_stores_in_the_interpreter_return_identical_rows(table, interpret):
    for store in _uva_stores(table):
        for rep in range(3):
            ids = _ids(seed=rep)
            f = store.prefetch(ids)
            assert f.host_rows == f.unique_rows - f.cache_hits > 0
            assert any(e[0] == "uva gather" for e in f.events)
            got = store.wait(f)
            assert torch.equal(got.view(torch.int16), table.row_values(ids).view(torch.int16)), (store.kind, rep)


@pytest.mark.parametrize("bad", [ROWS, -1])
def test_host_uva_bounds_errors_before_the_kernel_runs(table, interpret, bad, monkeypatch):
    import real_runs.stores as stores_mod

    def boom(*a, **k):
        raise AssertionError("the kernel ran on an out-of-range id")
    monkeypatch.setattr(stores_mod, "uva_gather", boom)
    for store in _uva_stores(table):
        with pytest.raises(ValueError, match=rf"row id {bad} is outside"):
            store.prefetch(np.array([1, bad], dtype=np.int64))


@pytest.mark.parametrize("vpr", [2, 6, 80, 128, 512, 2048])     # 4 B, 12 B, 160 B, 256 B, 1 KB, 4 KB rows
def test_uva_kernel_in_the_interpreter_at_every_row_shape(interpret, vpr):
    from real_runs.cuda_gather import uva_gather

    t = HostTable(4099, vpr, "bf16", seed=vpr)
    ids = torch.from_numpy(np.unique(np.random.default_rng(vpr).integers(0, 4099, 1100)))   # crosses blocks
    ids = torch.cat([ids, torch.tensor([0, 4098])])                                          # both ends
    out = torch.full((ids.numel(), vpr), 7.0, dtype=torch.bfloat16)
    uva_gather(t, t.row_bytes, ids, out)
    assert torch.equal(out.view(torch.int16), t.tensor[ids].view(torch.int16))


@pytest.mark.parametrize("vpr", [80, 2048])                     # 160 B rows (64 a block), 4 KB rows (4 a block)
@pytest.mark.parametrize("ctas", [None, 1, 3, 7, 100_000])      # 100_000: more programs than rows
def test_uva_kernel_bounded_grid_gives_the_same_rows(interpret, vpr, ctas):
    from real_runs.cuda_gather import gather_grid, uva_gather

    t = HostTable(1500, vpr, "bf16", seed=3)
    ids = torch.from_numpy(np.unique(np.random.default_rng(1).integers(0, 1500, 700)))
    out = torch.full((ids.numel(), vpr), 7.0, dtype=torch.bfloat16)
    uva_gather(t, t.row_bytes, ids, out, ctas=ctas)
    assert torch.equal(out.view(torch.int16), t.tensor[ids].view(torch.int16))
    blocks = gather_grid(ids.numel(), t.row_bytes)
    assert gather_grid(ids.numel(), t.row_bytes, ctas) == (blocks if ctas is None else min(ctas, blocks))


def test_uva_kernel_compiles_for_a_hopper_gpu_without_one():
    """The same kernel through Triton's CUDA compiler (PTX and ptxas) for sm_90: 16-byte loads and stores."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    from real_runs import triton_gather
    from real_runs.cuda_gather import block_shape

    words, vec, cols, rows = block_shape(160)
    sig = {"table_ptr": "*i32", "idx_ptr": "*i64", "out_ptr": "*i32", "n_rows": "i32", "ROW_WORDS": "constexpr",
           "VEC": "constexpr", "BLOCK_ROWS": "constexpr", "BLOCK_COLS": "constexpr"}
    aligned = {(i,): [["tt.divisibility", 16]] for i in range(3)}
    # The module's kernel is an interpreted one when the interpreter tests imported it first.
    kernel = JITFunction(triton_gather.uva_gather_kernel.fn, **triton_gather.JIT_OPTIONS)
    src = ASTSource(kernel, sig, attrs=aligned,
                    constexprs={"ROW_WORDS": words, "VEC": vec, "BLOCK_ROWS": rows, "BLOCK_COLS": cols})
    try:
        k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    except (RuntimeError, FileNotFoundError) as e:       # no CUDA toolchain in this Triton install
        pytest.skip(f"Triton cannot compile for CUDA here: {e}")
    assert "ld.global.v4.b32" in k.asm["ptx"] and "st.global.v4.b32" in k.asm["ptx"]


def test_uva_grid_comes_from_the_placement(table, interpret):
    cfg = load_config("tiny").with_placement("host_uva", uva_ctas=3)
    uva = make_store("host_uva", table, placement=cfg.placement)
    cached = make_store("hbm_cache", table, placement=cfg.with_placement("hbm_cache", miss_path="host_uva",
                                                                         cache_fraction=0.1).placement, cache_rows=50)
    assert uva.ctas == 3 and cached.miss.ctas == 3
    assert make_store("host_uva", table, placement=load_config("tiny").placement).ctas is None
    ids = _ids(seed=4)
    for store in (uva, cached):
        got = store.wait(store.prefetch(ids))
        assert torch.equal(got.view(torch.int16), table.row_values(ids).view(torch.int16)), store.kind
    with pytest.raises(ValueError, match="ctas must be None or >= 1"):
        from real_runs.cuda_gather import uva_gather
        uva_gather(table, table.row_bytes, torch.arange(4), torch.empty((4, VPR), dtype=torch.bfloat16), ctas=0)


def test_uva_kernel_reads_a_table_at_another_row_size(interpret):
    """Benchmarks view one 256 B-row table as 64 B or 1 KB rows: row r of the view starts at byte r * row_bytes."""
    from real_runs.cuda_gather import uva_gather

    t = HostTable(1024, 128, "bf16", seed=5)
    flat = t.tensor.reshape(-1)
    for row_bytes in (64, 1024):
        vals = row_bytes // 2
        ids = torch.tensor([0, 3, 17, 1024 * 256 // row_bytes - 1])
        out = torch.empty((ids.numel(), vals), dtype=torch.bfloat16)
        uva_gather(t, row_bytes, ids, out)
        assert torch.equal(out.view(torch.int16), flat.view(-1, vals)[ids].view(torch.int16))


def test_uva_gather_argument_errors(interpret):
    from real_runs.cuda_gather import uva_gather

    t = HostTable(64, 8, "bf16")
    ids = torch.arange(4)
    with pytest.raises(ValueError, match="multiple of 4"):
        uva_gather(t, 6, ids, torch.empty(24, dtype=torch.uint8))
    with pytest.raises(ValueError, match="4 x 16 bytes"):
        uva_gather(t, 16, ids, torch.empty(63, dtype=torch.uint8))
    with pytest.raises(ValueError, match="int64"):
        uva_gather(t, 16, ids.int(), torch.empty(64, dtype=torch.uint8))
    with pytest.raises(RuntimeError, match="use device 'cpu'"):
        HostUVAStore(t, "cuda")


@pytest.mark.skipif(CUDA, reason="checks the CPU-only error")
def test_host_uva_needs_a_gpu(table, no_interpret):
    with pytest.raises(RuntimeError, match="host_uva needs a CUDA GPU"):
        HostUVAStore(table, "cpu")
    with pytest.raises(RuntimeError, match="host_uva needs a CUDA GPU"):
        HBMCacheStore(table, capacity=10, miss_path="host_uva")


def test_make_store_uses_the_placement_config(table):
    p = load_config("tiny").placement
    s = make_store("host_dma", table, placement=p)
    assert isinstance(s, HostDMAStore) and s.threads == p.gather_threads and len(s.staging) == p.staging_buffers
    with pytest.raises(ValueError, match="placement"):
        make_store("ssd", table)
    with pytest.raises(ValueError, match="no table store"):
        make_store(NONE, table)
    assert set(STORES) == set(ENGRAM_PLACEMENTS) and all(STORES[k].kind == k for k in STORES)


@needs_cuda
def test_cuda_stores_match_host_rows(table):
    t = HostTable(ROWS, VPR, "bf16", seed=11, pin=True)
    stream = torch.cuda.Stream()
    stores = [HBMStore(t, "cuda", stream), HostDMAStore(t, "cuda", stream),
              HBMCacheStore(t, "cuda", stream, capacity=50, policy="lru", miss_path="host_dma")]
    if uva_unavailable_reason() is None:
        stores += [HostUVAStore(t, "cuda", stream),
                   HBMCacheStore(t, "cuda", stream, capacity=50, policy="static_topk", miss_path="host_uva",
                                 hot_rows=_ids(2000, seed=9))]
    for store in stores:
        for rep in range(3):
            ids = _ids(seed=rep)
            got = store.wait(store.prefetch(ids)).cpu()
            assert torch.equal(got.view(torch.int16), table.row_values(ids).view(torch.int16)), store.kind
    t.close()


@needs_uva
def test_uva_gather_kernel_row_sizes():
    from real_runs.cuda_gather import uva_gather

    for vpr in (80, 128, 512, 6):        # 160 B, 256 B, 1 KB, 12 B rows
        t = HostTable(4099, vpr, "bf16", seed=vpr, pin=True)
        ids = torch.from_numpy(np.unique(np.random.default_rng(vpr).integers(0, 4099, 1000))).cuda()
        out = torch.empty((ids.numel(), vpr), dtype=torch.bfloat16, device="cuda")
        uva_gather(t, t.row_bytes, ids, out)
        assert torch.equal(out.cpu().view(torch.int16), t.tensor[ids.cpu()].view(torch.int16))
        t.close()
