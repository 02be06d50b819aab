"""The real SSD store: a table file on the drive, rows identical to the host stores', a DRAM cache, clean-up."""

import errno
import os
import shutil
from collections import namedtuple

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from real_runs import direct_io, ssd_store  # noqa: E402
from real_runs.direct_io import DriveError  # noqa: E402
from real_runs.ssd_store import SsdStore, SsdTable  # noqa: E402
from real_runs.stores import HBMCacheStore, HBMStore, HostDMAStore, HostTable, make_store  # noqa: E402
from vocab.config import load_config  # noqa: E402
from vocab.errors import DeviceError  # noqa: E402

ROWS, VPR, SEED = 2003, 20, 7      # 40 B rows: 102 to a 4 KiB block, the last block partial


def _ids(n=800, seed=0, rows=ROWS):
    rng = np.random.default_rng(seed)
    return rng.zipf(1.2, size=n).astype(np.int64) % rows


def _left(folder) -> list:
    return [p for p in os.listdir(folder) if p.startswith("engram-table-")]


@pytest.fixture
def ssd(tmp_path):
    t = SsdTable(ROWS, VPR, "bf16", seed=SEED, folder=tmp_path)
    yield t
    t.close()


@pytest.mark.parametrize("vpr,dtype", [(20, "bf16"), (3000, "fp32"), (2048, "bf16"), (7, "fp8")])
def test_rows_match_the_host_stores(tmp_path, vpr, dtype):
    """Small rows (last block partial), rows larger than a block (12 KiB) and exactly a block."""
    rows = 300 if vpr > 1000 else ROWS
    host = HostTable(rows, vpr, dtype, seed=SEED)
    t = SsdTable(rows, vpr, dtype, seed=SEED, folder=tmp_path)
    ids = np.concatenate([_ids(500, rows=rows), [0, rows - 1, rows - 2]])
    want = HBMStore(host).wait(HBMStore(host).prefetch(ids))
    for store in (SsdStore(t, threads=4), SsdStore(t, threads=2, dram_cache_rows=50)):
        for _ in range(2):   # cold, then (with the cache) partly warm
            got = store.wait(store.prefetch(ids))
            assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))
        store.close()
    dma = HostDMAStore(host)
    assert torch.equal(dma.wait(dma.prefetch(ids)).view(torch.uint8), want.view(torch.uint8))
    assert torch.equal(t.row_values(ids).view(torch.uint8), host.row_values(ids).view(torch.uint8))
    t.close()
    assert not _left(tmp_path)


def test_ssd_reads_count_distinct_blocks(ssd):
    store = SsdStore(ssd, threads=3)
    per = ssd.rows_per_block
    ids = np.array([0, 1, per - 1, per, 5 * per + 3, 5 * per + 3, ROWS - 1])
    f = store.prefetch(ids)
    store.wait(f)
    assert (f.ssd_reads, f.dram_hits, f.host_rows, f.unique_rows) == (4, 0, 6, 6)
    assert store.reader.reads == 4
    store.close()


def test_large_rows_read_whole_blocks(tmp_path):
    t = SsdTable(10, 3000, "fp32", seed=1, folder=tmp_path)     # 12000 B rows: 3 blocks each
    store = SsdStore(t, threads=2)
    f = store.prefetch(np.array([2, 5, 5]))
    store.wait(f)
    assert f.ssd_reads == 6 and t.file_bytes == 10 * 3 * 4096
    store.close()
    t.close()


def test_whole_table_cache_reads_each_row_once(ssd):
    store = SsdStore(ssd, threads=2, dram_cache_rows=ROWS)
    steps = [_ids(300, seed=s) for s in range(12)]
    reads, first_touch = [], set()
    for ids in steps:
        f = store.prefetch(ids)
        store.wait(f)
        new = set(np.unique(ids).tolist()) - first_touch
        first_touch |= new
        reads.append(f.ssd_reads)
        assert f.dram_hits + len(new) == f.unique_rows
    f = store.prefetch(np.unique(np.concatenate(steps)))
    store.wait(f)
    assert f.ssd_reads == 0 and f.dram_hits == f.unique_rows
    store.close()


@pytest.mark.parametrize("policy", ["lru", "lfu"])
def test_a_warmed_dram_cache_serves_its_rows_with_their_bytes_and_no_drive_read(ssd, policy):
    store = SsdStore(ssd, threads=2, dram_cache_rows=ROWS // 2, dram_cache_policy=policy)
    steps = [_ids(300, seed=s) for s in range(20)]
    assert store.warm_dram(iter(steps)) == len(steps) and store.reader.reads == 0   # no drive read while warming
    cached = store.dram.slot_row[store.dram.slot_row >= 0]
    assert 0 < cached.size <= ROWS // 2
    f = store.prefetch(cached)
    got = store.wait(f)
    assert f.ssd_reads == 0 and f.dram_hits == cached.size
    assert torch.equal(got, ssd.row_values(cached))
    cold = SsdStore(ssd, threads=2, dram_cache_rows=ROWS // 2, dram_cache_policy=policy)
    f = cold.prefetch(cached)
    cold.wait(f)
    assert f.dram_hits == 0 and f.ssd_reads > 0           # the same fetch, cold, reads the drive
    store.close()
    cold.close()


@pytest.mark.parametrize("policy", ["lru", "lfu"])
def test_a_larger_dram_cache_never_reads_more(ssd, policy):
    steps = [_ids(200, seed=s) for s in range(20)]
    totals = []
    for capacity in (0, 10, 50, 200, 800, ROWS):
        store = SsdStore(ssd, threads=2, dram_cache_rows=capacity, dram_cache_policy=policy)
        total = 0
        for ids in steps:
            f = store.prefetch(ids)
            store.wait(f)
            total += f.host_rows - f.dram_hits
        totals.append(total)
        store.close()
    if policy == "lru":   # LRU's inclusion property; LFU need not have it, but must still hit
        assert totals == sorted(totals, reverse=True)
    assert totals[-1] < totals[0]


def test_static_dram_cache_holds_the_hot_rows(ssd):
    hot = np.arange(100, 140)
    store = SsdStore(ssd, threads=2, dram_cache_rows=40, dram_cache_policy="static_topk", hot_rows=hot)
    f = store.prefetch(np.array([100, 120, 139, 5]))
    rows = store.wait(f)
    assert (f.dram_hits, f.host_rows) == (3, 4)
    assert torch.equal(rows.view(torch.uint8), ssd.row_values([100, 120, 139, 5]).view(torch.uint8))
    store.close()


def test_hbm_cache_in_front_of_the_drive(ssd):
    p = load_config("tiny").with_placement("ssd", cache_gib=0.001, dram_cache_gib=0.001, ssd_threads=2).placement
    store = make_store("ssd", ssd, placement=p, cache_rows=100, dram_cache_rows=200)
    assert isinstance(store, HBMCacheStore) and isinstance(store.miss, SsdStore)
    ids = _ids(400)
    want = ssd.row_values(ids)
    for _ in range(3):
        f = store.prefetch(ids)
        got = store.wait(f)
        assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))
        assert f.cache_hits + f.host_rows == f.unique_rows and f.dram_hits <= f.host_rows
    assert f.cache_hits > 0
    store.close()
    assert isinstance(make_store("ssd", ssd, placement=p), SsdStore)


@pytest.mark.parametrize("case", ["missing", "file", "readonly"])
def test_bad_ssd_dir_is_one_line_naming_the_field(tmp_path, monkeypatch, case):
    folder = tmp_path / "d"
    if case == "file":
        folder.write_text("x")
    elif case == "readonly":
        folder.mkdir()
        folder.chmod(0o500)
        real_access = os.access   # root may write anywhere: it is denied here as a user would be
        monkeypatch.setattr(direct_io.os, "access", lambda p, mode: mode != os.W_OK and real_access(p, mode))
    with pytest.raises(DriveError, match=r"^placement\.ssd_dir: .*; ") as e:
        SsdTable(ROWS, VPR, folder=folder)
    assert "\n" not in str(e.value)
    if case == "readonly":
        assert not _left(folder)
        folder.chmod(0o700)


def test_full_disk_before_writing(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(1 << 30, 1 << 30, 1000))
    with pytest.raises(DriveError, match=r"^placement\.ssd_dir: needs .* free"):
        SsdTable(ROWS, VPR, folder=tmp_path)
    assert not _left(tmp_path)


def test_disk_filling_up_while_writing(tmp_path, monkeypatch):
    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ssd_store.os, "pwrite", full)
    with pytest.raises(DriveError, match=r"^placement\.ssd_dir: the drive .* filled up"):
        SsdTable(ROWS, VPR, folder=tmp_path)
    assert not _left(tmp_path)


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_no_file_left_after_an_interrupted_write(tmp_path, monkeypatch, exc):
    def boom(*a):
        raise exc()

    monkeypatch.setattr(ssd_store, "_write_all", boom)
    with pytest.raises(exc):
        SsdTable(ROWS, VPR, folder=tmp_path)
    assert not _left(tmp_path)


def test_file_removed_on_close_and_when_dropped(tmp_path):
    t = SsdTable(ROWS, VPR, folder=tmp_path)
    assert t.path.exists() and t.path.stat().st_size == t.file_bytes
    t.close()
    t.close()
    assert not t.path.exists()
    t = SsdTable(ROWS, VPR, folder=tmp_path)
    del t
    assert not _left(tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where there is no GPU")
def test_gds_needs_a_gpu_and_kvikio(ssd):
    with pytest.raises(DeviceError, match=r"^placement\.ssd_reads: .*GPUDirect Storage"):
        SsdStore(ssd, reads="gds")


def test_cli_run_on_the_drive_writes_a_record_with_drive_reads(tmp_path):
    from cli.main import main
    from vocab.records import read_record

    out = tmp_path / "r.json"
    assert main(["run", "tiny", "--device", "cpu", "--placement", "ssd", "--steps", "3", "--dram-cache-gib", "0.0001",
                 "--ssd-dir", str(tmp_path), "--out", str(out)]) == 0
    r = read_record(out)
    assert r.fetches.ssd_reads.sum() > 0 and r.fetches.dram_hits.sum() > 0
    assert r.extra["setup"]["dram_warmup_steps"] > 0   # the DRAM cache was warmed before the measured steps
    assert (r.events.actor == "ssd read").any()
    assert r.config["placement"]["kind"] == "ssd" and r.config["placement"]["ssd_dir"] == str(tmp_path)
    assert not _left(tmp_path)


def test_python_m_real_runs_has_the_drive_flags(capsys):
    from real_runs.__main__ import main

    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--ssd-dir" in capsys.readouterr().out


def test_no_table_file_left_when_a_run_is_interrupted(tmp_path, monkeypatch):
    from real_runs import runner

    def interrupted(self, progress=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner.StepLoop, "run", interrupted)
    cfg = load_config("tiny").with_placement("ssd", ssd_dir=str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        runner.run(cfg, steps=2, device="cpu")
    assert not _left(tmp_path)
