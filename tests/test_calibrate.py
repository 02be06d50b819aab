"""`engram-sim calibrate`: the profile it writes, its errors, its TOML writer and its fits.

The measurements run for real (CPU side) at tiny sizes; the GPU side's assembly is
tested on synthetic measurements, so the whole file runs on a machine without a GPU.
"""

import dataclasses
import tomllib
from pathlib import Path

import numpy as np
import pytest

from profiles import load_profile, shipped_names
from profiles.fit import (
    best_per_core,
    copy_engines_from,
    fit_gather_curve,
    fit_interference,
    fit_uva_points,
    fraction_curve,
)
from profiles.uva import fit_cold_line_ns, gather_block_share, gather_cold_lines, uva_time
from profiles.writer import dump_toml
from real_runs import timing
from real_runs.instrument import cpu_model
from sim import costs
from tools.calibrate import (
    assemble,
    assemble_mechanisms,
    assemble_ssd,
    measure_cpu,
    measure_engine,
    measure_gpu,
    measure_rates,
    output,
    plan,
    probe,
)
from tools.calibrate.shapes import preset_shapes
from vocab.units import GiB, MiB

NO_GPU_LINE = "engram-sim: error: calibrate: no CUDA GPU found; use --cpu-only to measure the CPU side only\n"

TINY = dataclasses.replace(
    plan.QUICK, warmup=1, repeats=2, hash_tokens=1 << 12, gather_table_bytes=8 * MiB,
    gather_row_bytes=(64, 256, 4096), gather_payload_bytes=256 << 10, gather_fixed_rows=(16, 256, 2048),
    dedup_lookups=1 << 14, memcpy_bytes=4 * MiB, all_thread_counts=True, critical_batches=(1, 8, 64))


@pytest.fixture
def tiny(monkeypatch):
    """Measurement sizes small enough for a test; no minimum warm-up or timing window."""
    monkeypatch.setattr(plan, "QUICK", TINY)
    monkeypatch.setattr(plan, "FULL", TINY)
    monkeypatch.setattr(timing, "WARM_S", 0.0)
    monkeypatch.setattr(timing, "TIMED_S", 0.0)


def run_calibrate(argv: list[str]) -> int:
    """Through `engram-sim calibrate`, as a user runs it."""
    import cli.main as cli

    return cli.main(["calibrate", *argv])


# -- the command ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """One tiny --cpu-only --quick calibration shared by the tests that read its profile."""
    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(plan, "QUICK", TINY)
        mp.setattr(timing, "WARM_S", 0.0)
        mp.setattr(timing, "TIMED_S", 0.0)
        out = tmp_path_factory.mktemp("cal") / "cpu.toml"
        assert run_calibrate(["--cpu-only", "--quick", "--out", str(out)]) == 0
    finally:
        mp.undo()
    return out


def test_cpu_only_quick_writes_a_valid_profile_that_says_what_was_measured(measured):
    p = load_profile(measured)
    base = load_profile("h100-sxm")
    assert p.name == "cpu"
    assert p.provenance.source == "measured"
    notes = p.provenance.notes
    assert "measured here: host" in notes
    assert "NOT measured (--cpu-only): gpu, link and uva are copied unchanged from the base profile 'h100-sxm'" in notes
    assert base.provenance.machine in notes and base.provenance.date in notes
    assert "dram_gbps is an estimate" in notes
    assert "--cpu-only" in p.provenance.method and "engram-sim calibrate" in p.provenance.method
    h = p.host
    for name in ("memory_gib", "dram_gbps", "hash_tokens_per_s_per_core", "dedup_rows_per_s_per_core"):
        assert getattr(h, name) > 0, name
    assert h.cpu_cores >= 1 and h.cpu_gather_fixed_us >= 0 and h.cpu_gather_max_threads >= 1
    assert [q.x for q in h.cpu_gather_per_thread] == [64, 256, 4096]
    assert all(q.y > 0 for q in h.cpu_gather_per_thread)
    # The host's critical path is measured; the engine's step (a GPU run) is the base's, and the notes say so.
    for name in ("critical_hash_fixed_us", "critical_hash_ns_per_token", "sort_rows_per_s"):
        assert 0 < getattr(h, name) < float("inf"), name
    assert (h.engine_step_fixed_us, h.engine_step_per_seq_us) == (base.host.engine_step_fixed_us,
                                                                  base.host.engine_step_per_seq_us)
    assert "critical_hash_fixed_us" in notes.split("NOT measured")[0] and "engine_step_per_seq_us" in notes
    # The unmeasured sections are the base's, unchanged.
    assert (p.gpu, p.link, p.uva) == (base.gpu, base.link, base.uva)


def test_raw_points_are_kept_in_the_profile(measured):
    text = measured.read_text()
    data = tomllib.loads(text)
    assert len(data["host"]["cpu_gather_per_thread"]) == 3
    assert len(data["uva"]["points"]) == 11 and len(data["link"]["h2d_points"]) == 8
    # Points with no schema field are comments in the host table.
    assert "# hashing, tokens/s by threads" in text
    assert "#   64 B: 1T" in text and "#   4096 B: 1T" in text
    assert "# CPU gather call, us by rows" in text and "# memcpy payload GB/s by threads" in text
    assert "# critical_hash_*: workloads/hashing.py hash_layer" in text and "# sort_rows_per_s: np.sort" in text
    assert "# engine_step_*: the base profile's" in text


def test_the_simulator_accepts_the_measured_profile(measured, tmp_path, capsys):
    import cli.main as cli

    assert cli.main(["simulate", "tiny", "--profile", str(measured)]) == 0
    out = tmp_path / "sweep"
    assert cli.main(["sweep", "tiny", "--table-gib", "0.01", "--placements", "hbm,host_dma", "--phases", "decode",
                     "--steps", "3", "--jobs", "1", "--quiet", "--profile", str(measured), "--out", str(out)]) == 0
    assert (out / "sweep.csv").is_file()


def test_cpu_only_compares_only_cpu_figures_and_says_the_machines_differ(tiny, tmp_path, capsys):
    assert run_calibrate(["--cpu-only", "--quick", "--out", str(tmp_path / "p.toml")]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "the machines differ" in out
    assert "N-gram hashing, 16 threads" in out and "CPU gather 4 KB rows" in out
    assert "H2D" not in out and "bf16" not in out


def test_default_out_is_under_profiles_in_the_current_folder(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_calibrate(["--cpu-only", "--quick"]) == 0
    (written,) = (tmp_path / "profiles").iterdir()
    assert written.name.startswith(output.slug(cpu_model()) + "-measured-")
    assert written.suffix == ".toml"
    load_profile(written)


def test_without_a_gpu_and_without_cpu_only_exits_2_with_one_line(tiny, tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "p.toml"
    assert run_calibrate(["--quick", "--out", str(out)]) == 2
    assert capsys.readouterr().err == NO_GPU_LINE
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["folder", "under_a_file", "proc"])
def test_an_unwritable_out_is_one_line_exit_2_and_nothing_written(tiny, tmp_path, capsys, where):
    (tmp_path / "file.txt").write_text("x")
    out = {"folder": tmp_path, "under_a_file": tmp_path / "file.txt" / "p.toml",
           "proc": Path("/proc/engram-sim-no-such-folder/p.toml")}[where]
    before = sorted(tmp_path.rglob("*"))
    assert run_calibrate(["--cpu-only", "--quick", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("engram-sim: error: --out: ") and err.count("\n") == 1
    assert sorted(tmp_path.rglob("*")) == before
    assert not out.exists() or out.is_dir()


def test_a_failing_measurement_is_one_line_exit_2_and_nothing_written(tiny, tmp_path, monkeypatch, capsys):
    def broken(sizes, plan, raw):
        yield "dedup"
        raise RuntimeError("CUDA error: out of memory\nmore detail")

    monkeypatch.setattr(measure_cpu, "measure_dedup", broken)
    assert run_calibrate(["--cpu-only", "--quick", "--out", str(tmp_path / "p.toml")]) == 2
    last = capsys.readouterr().err.rstrip("\n").split("\n")[-1]    # after the progress bar
    assert last.startswith("engram-sim: error: calibrate: a measurement failed after 'dedup' "
                           "(RuntimeError: CUDA error: out of memory); nothing was written")
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_base_profile_is_one_line_exit_2(tiny, tmp_path, capsys):
    assert run_calibrate(["--cpu-only", "--quick", "--base", "no-such", "--out", str(tmp_path / "p.toml")]) == 2
    err = capsys.readouterr().err
    assert "no profile named or at 'no-such'" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_a_profile_that_does_not_validate_is_not_written(tmp_path):
    out = tmp_path / "bad.toml"
    bad = dump_toml({"name": "bad"})
    with pytest.raises(output.CalibrateError, match="does not validate"):
        output.write_profile_atomic(bad, out)
    assert list(tmp_path.iterdir()) == []


# -- the TOML writer -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", shipped_names())
def test_toml_writer_round_trips_every_shipped_profile(name, tmp_path):
    p = load_profile(name)
    out = tmp_path / f"{name}.toml"
    out.write_text(dump_toml(p.to_dict(), comments={"host": ["a comment"]}, header=["top"]))
    assert load_profile(out) == p


def test_toml_writer_escapes_strings_and_nests_tables():
    data = {
        "s": 'quote " backslash \\ newline \n tab \t bell \x07 del \x7f unicode é ✓',
        "f": [1e-05, 1e300, 0.1, -2.0, 3.0], "i": [0, -7, 1 << 40], "b": [True, False], "empty": [],
        "key with space": 1,
        "pts": [{"x": 1, "y": 2.5}, {"x": 2, "y": 3.5}],
        "t": {"a": 1, "u": {"v": "w", "deeper": {"z": [1, 2]}}, "after": 2},
    }
    text = dump_toml(data, comments={"t.u": ["nested # comment"]}, header=["header line"])
    assert tomllib.loads(text) == data
    assert text.startswith("# header line\n") and "[t.u]\n# nested # comment\n" in text


def test_toml_writer_keeps_every_comment_under_its_table_and_round_trips_values():
    import tomlkit

    data = {"name": "x", "ratio": 0.5, "big": 51350000.0, "tiny": 1.753e-07, "n": 3, "on": True,
            "host": {"cpu": "a, 2 cores", "curve": [{"x": 64, "y": 2.534}, {"x": 4096, "y": 14.02}],
                     "sub": {"k": [1.0, 2.5]}},
            "gpu": {"name": "g", "hbm_gather": [{"x": 64.0, "y": 106.0}]}}
    comments = {"": ["top of the body"], "host": ["raw points:", "", "  64 B: 1T 5.07, 2T 10.8"],
                "host.sub": ["deeper"], "gpu": ["from the base"]}
    text = dump_toml(data, comments, header=["h1", "h2"])
    assert tomllib.loads(text) == data
    assert tomlkit.parse(text).unwrap() == data
    for k in ("ratio", "big", "tiny", "n", "on"):                      # types too: 3 stays an int, 51350000.0 a float
        assert type(tomllib.loads(text)[k]) is type(data[k])
    lines = text.splitlines()
    assert lines[:3] == ["# h1", "# h2", "# top of the body"]
    for table, body in comments.items():
        if table:
            at = lines.index(f"[{table}]")
            assert lines[at + 1:at + 1 + len(body)] == [f"# {c}" if c else "#" for c in body], table
    # Scalars before sub-tables, so no key lands in the wrong table.
    assert lines.index('cpu = "a, 2 cores"') < lines.index("[host.sub]")


def test_shapes_come_from_the_engram_27b_preset():
    s = preset_shapes()
    assert s.preset == "engram-27b"
    assert s.layer_gemms == {"attention qkv": (16384, 2560, 3 * 32 * 192), "attention out": (16384, 32 * 192, 2560),
                             "moe expert gate+up": (1792, 2560, 2 * 1536), "moe expert down": (1792, 1536, 2560)}
    assert s.moe_experts == dict(tokens=16384, hidden=2560, routed=55, top_k=6, inter=1536)
    assert s.prefill_attention == dict(tokens=16384, heads=32, head_dim=192)
    assert s.decode_attention == dict(batch=64, heads=32, kv_heads=32, head_dim=192, context=2048)
    assert s.decode_gemm == (512, 2560, 3 * 32 * 192)
    assert s.ladder_gemms == {"attention qkv": (2560, 3 * 32 * 192), "attention out": (32 * 192, 2560),
                              "dense ffn gate+up": (2560, 2 * 10240), "dense ffn down": (10240, 2560)}
    assert s.contention == dict(layer=0, batch=512, context=256, row_bytes=160, table_gib=4)
    e = s.engram
    assert (e.max_ngram_size, e.heads_per_order, e.compressed_vocab_size, e.compressed_pad_id) == (3, 8, 99092, 2)


# -- fitting helpers, on synthetic points with known answers -------------------------------------

def test_best_per_core_is_the_rate_per_thread_at_the_best_thread_count():
    rates = {1: 10.0, 2: 20.0, 4: 38.0, 8: 40.0, 16: 39.0}
    assert best_per_core(rates) == (5.0, 8)
    assert best_per_core({1: 9.0, 2: 9.0}) == (9.0, 1)   # a tie: the fewer threads


def test_fit_gather_curve_finds_where_threads_stop_helping():
    # Per thread 2 GB/s at 256 B and 3 GB/s at 4 KB, linear up to 4 threads, flat beyond.
    per = {256: 2.0, 4096: 3.0}
    pts = {(rb, t): per[rb] * min(t, 4) for rb in per for t in (1, 2, 4, 8, 16)}
    curve, max_threads = fit_gather_curve(pts)
    assert max_threads == 4
    assert curve == [{"x": 256, "y": 2.0}, {"x": 4096, "y": 3.0}]


def test_copy_engines_from_both_directions_at_once():
    assert copy_engines_from(50.0, 52.0, 100.0) == 2
    assert copy_engines_from(50.0, 52.0, 53.0) == 1


def test_fresh_ids_are_distinct_sorted_and_in_range():
    rng = np.random.default_rng(0)
    for rows, n in ((1000, 10), (1000, 500), (1000, 1000), (10, 50)):
        ids = timing.fresh_ids(rng, rows, n)
        assert ids.size == min(n, rows) and ids.dtype == np.int64
        assert (np.diff(ids) > 0).all() and ids.min() >= 0 and ids.max() < rows


def test_thread_counts_and_slug():
    assert timing.thread_counts(16, True) == [1, 2, 4, 8, 16]
    assert timing.thread_counts(12, True) == [1, 2, 4, 8, 12]
    assert timing.thread_counts(16, False) == [1, 16]
    assert timing.thread_counts(1, True) == [1]
    assert output.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert output.slug("Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz") == "intel-xeon-platinum-8480"


def synthetic_ssd_raw(folder: str = "/data") -> dict:
    """Drive measurements as measure_ssd and the command record them (for tests of the assembly)."""
    random = {d: {"iops": 12000.0 * d, "latency_us": 1e6 / 12000.0, "reads": 64 * d} for d in (1, 2, 4, 8)}
    return {"drive": {"folder": folder, "device": "/dev/nvme0n1", "fs_type": "ext4", "mount_point": "/",
                      "st_dev": "259:0", "free_bytes": 100 * GiB, "block_bytes": 4096, "rotational": "0",
                      "file_bytes": 2 * GiB},
            "ssd": {"block_bytes": 4096, "depths_asked": [1, 2, 4, 8], "random": random,
                    "seq": {"gbps": 3.0, "block_bytes": MiB, "threads": 4, "call_bytes": 256 * MiB},
                    "read_cpu_us": 5.0, "read_cpu_spread_us": (4.0, 5.0, 6.0),
                    # calls of n reads: one read's latency, plus 30 us a call and 6 us a thread
                    "calls": {n: (1e6 / 12000.0 + 30.0 + 6.0 * n) * 1e-6 for n in (1, 2, 4, 8, 16)},
                    # the store's own work: 80 us + 0.7 us a row, 30 us a call and 0.25 us a row more with a
                    # DRAM cache
                    "store": [{"rows": n, "cache": c, "us": 80.0 + 0.7 * n + (30.0 + 0.25 * n if c else 0.0)}
                              for c in (False, True) for n in (32, 512)]}}


def synthetic_gpu_raw() -> dict:
    """Measurements a GPU machine would give, made from known models (for the GPU-side assembly)."""
    ref = load_profile("h100-sxm")
    sizes = [4096 << (2 * i) for i in range(10)]
    copy = {s: s / (20e-6 + s / 50e9) / 1e9 for s in sizes}            # fixed 20 us, peak 50 GB/s
    down = {s: s / (20e-6 + s / 40e9) / 1e9 for s in sizes}            # peak 40 GB/s
    uva = []
    for g in (1, 4, 16, 64):
        for rb in (256, 1024):
            for n in (4096, 16384, 65536, 262144):
                # The calibration times its gathers back to back, as the reference benchmark did.
                fixed, body = costs.uva_gather_time(ref, n, rb, g * GiB, work_between=False)
                uva.append({"table_gib": g, "row_bytes": rb, "rows": n, "us": (fixed + body) * 1e6})
    layers = {name: {"shape": list(shape), "s": 2 * np.prod(shape) / 500e12, "tflops": 500.0}
              for name, shape in preset_shapes().layer_gemms.items()}
    layers["attention prefill (causal SDPA)"] = {"shape": [16384, 192, 16384], "flops": 1e12, "s": 1e12 / 500e12,
                                                 "tflops": 500.0}
    memory_bound = {"decode attention": {"shape": [64, 32, 2048, 192], "bytes": 3.2e9, "s": 3.2e9 / 2030e9,
                                         "gbps": 2030.0},
                    "decode qkv projection": {"shape": [512, 2560, 18432], "bytes": 1e8, "s": 1e8 / 2030e9,
                                              "gbps": 2030.0}}
    # Gathers timed back to back and after an L2 flush: the model without and with its cold upper levels.
    uva_cold = []
    for g in (1, 4, 16, 64):
        for n in (8192, 65536):
            warm, cold = (sum(costs.uva_gather_time(ref, n, 160, g * GiB, work_between=w)) for w in (False, True))
            uva_cold.append({"table_gib": g, "row_bytes": 160, "rows": n, "us_warm": warm * 1e6, "us_cold": cold * 1e6})
    uva_random = [{"table_gib": 1, "row_bytes": 256, "rows": 16384, "us_sorted": 100.0, "us_random": 130.0},
                  {"table_gib": 64, "row_bytes": 256, "rows": 16384, "us_sorted": 400.0, "us_random": 800.0}]
    return {
        "system": {"cpu": "Test CPU", "cores": 16, "memory_gib": 128.0, "numba_threads": 16, "threads": [1, 16]},
        "hash": {1: 9e6, 16: 112e6}, "gather": {(256, 1): 3.0, (256, 16): 40.0, (4096, 1): 4.0, (4096, 16): 48.0},
        "gather_table_bytes": 2 * GiB, "gather_fixed": {64: 3.0 + 64 * 0.01, 4096: 3.0 + 4096 * 0.01},
        "memcpy": {1: 5.0, 16: 50.0}, "dedup": 5e7,
        # the critical path: 17 us + 76 ns a token; sorting 1 us + 4 ns an id
        "critical_hash": {b: 17.0 + 0.076 * b for b in (1, 16, 256, 4096)}, "critical_rows_per_token": 16,
        "sort": {n: 1.0 + 0.004 * n for n in (16, 256, 4096, 65536)},
        # the worker's hash call: 15 us at 64 tokens, 150 us at 3072; the OS's slice 4 ms
        "hash_call": {64: 15.0, 3072: 150.0}, "sched_slice_us": 3970.0, "sched_slice_runs_us": [990.0, 3970.0, 3980.0],
        "thread_wake": {"PASSIVE": 570.0, "ACTIVE": 440.0}, "thread_wake_us": 130.0,
        "gpu_info": {"name": "NVIDIA Test GPU", "total_bytes": 80 * GiB, "context_bytes": GiB // 2, "torch": "2.x",
                     "cuda": "13.0", "nvml": {"name": "NVIDIA Test GPU", "driver": "580.1", "pcie_gen": 5,
                                              "pcie_width": 16}, "uva_reason": None, "l2_bytes": 50 * MiB},
        "h2d": copy, "d2h": down, "h2d_pageable": {256 * MiB: 9.5}, "d2h_pageable": {256 * MiB: 8.0},
        "bidir_gbps": 90.0, "bidir_bytes": 512 * MiB, "d2d_gbps": 2900.0, "d2d_bytes": GiB,
        "hbm_gather": {64: 100.0, 1024: 1150.0, 4096: 1200.0}, "hbm_table_bytes": 8 * GiB,
        "gemm_large": {"n": 8192, "tflops": 750.0}, "gemm_layers": layers, "launch_us": 2.2,
        "pin_torch_s_per_gib": 0.7, "pin_register_small_s_per_gib": 0.3, "pin_bytes": GiB,
        "pin_register_s_per_gib": 0.5, "uva_table_pinned_gib": 64, "uva": uva, "uva_random": uva_random,
        "uva_cold": uva_cold, "uva_cold_flush_bytes": 256 * MiB, "l2_bytes": 50 * MiB,
        "memory_bound": memory_bound,
    }


def _assembled_gpu_profile(raw: dict, tmp_path):
    """The GPU-side profile calibrate assembles from `raw` over h100-sxm, written and read back, and its file."""
    profile, comments, header = assemble.assemble(raw, load_profile("h100-sxm"), "h100-sxm", "gpu", "2026-01-01",
                                                   quick=False, cpu_only=False)
    out = tmp_path / "gpu.toml"
    output.write_profile_atomic(dump_toml(profile, comments, header), out)
    return load_profile(out), out


def test_gpu_side_assembly_fits_known_models(tmp_path):
    raw = synthetic_gpu_raw()
    base, (p, out) = load_profile("h100-sxm"), _assembled_gpu_profile(raw, tmp_path)
    assert p.link.kind == "PCIe Gen5 x16" and p.link.copy_engines == 2
    assert p.link.h2d_gbps == pytest.approx(50.0, rel=0.02) and p.link.d2h_gbps == pytest.approx(40.0, rel=0.02)
    assert p.link.copy_fixed_us == pytest.approx(20.0, rel=0.05)
    assert len(p.link.h2d_points) == 10 and p.link.pageable_h2d_gbps == 9.5
    assert p.gpu.bf16_tflops == 750.0 and p.gpu.matmul_efficiency == pytest.approx(500 / 750, rel=0.01)
    assert p.gpu.hbm_gbps == 2900.0 and [q.x for q in p.gpu.hbm_gather] == [64, 1024, 4096]
    assert p.gpu.memory_efficiency == pytest.approx(2030 / 2900, rel=0.002)     # decode work / d2d
    assert p.gpu.kernels_per_layer == base.gpu.kernels_per_layer and p.gpu.fp8_tflops == base.gpu.fp8_tflops
    assert p.gpu.hbm_gib == 80.0 and p.gpu.hbm_reserved_gib == base.gpu.hbm_reserved_gib
    # The UVA model is refitted from its points: the H100 model's own parameters come back.
    assert len(p.uva.points) == 32
    assert p.uva.translation_unit_kib == base.uva.translation_unit_kib
    assert p.uva.walk_ns == pytest.approx(base.uva.walk_ns, rel=0.02)
    # cold_line_ns from the warm and flushed gathers; upper_line_mib carried over from the base.
    assert p.uva.cold_line_ns == pytest.approx(base.uva.cold_line_ns, rel=0.05)
    assert p.uva.upper_line_mib == base.uva.upper_line_mib
    assert p.gpu.l2_mib == 50.0                                   # read from the device
    for q in p.uva.points:
        predicted = sum(costs.uva_gather_time(p, q.rows, q.row_bytes, q.table_gib * GiB, work_between=False))
        assert predicted == pytest.approx(q.us * 1e-6, rel=0.05)
    notes = p.provenance.notes
    assert "measured here: host, gpu, link, uva" in notes and "pin_memory" in notes
    assert "gpu.memory_efficiency" not in notes.split("come from")[0]       # measured, not from the base
    assert "random id order took x1.3-x2" in notes
    assert "driver 580.1" in p.provenance.machine
    text = out.read_text()
    assert "# D2H pinned GB/s by bytes" in text and "# H2D + D2H at once" in text
    assert "# memory_efficiency: memory-bound decode work" in text and "random 800 us" in text
    assert "# cold_line_ns: least-squares slope" in text and "upper_line_mib 16 from the base profile" in text
    lines = assemble.comparison(raw, gpu_measured=True)
    assert any("H2D pinned copy, 1 GiB" in line for line in lines)
    assert not any("machines differ" in line for line in lines)


def test_backbone_kernels_are_measured_with_the_backbones_own_code(monkeypatch):
    """On the CPU with small shapes and the host timer: what the GPU run records, and that it assembles."""
    pytest.importorskip("torch")
    monkeypatch.setattr(timing, "WARM_S", 0.0)
    monkeypatch.setattr(timing, "TIMED_S", 0.0)
    raw = {"gemm_layers": {}}
    sizes = dataclasses.replace(plan.QUICK, warmup=0, repeats=1)
    small = dataclasses.replace(
        preset_shapes(), moe_experts=dict(tokens=64, hidden=32, routed=4, top_k=2, inter=16),
        prefill_attention=dict(tokens=32, heads=2, head_dim=16),
        decode_attention=dict(batch=2, heads=4, kv_heads=2, head_dim=16, context=24), decode_gemm=(4, 32, 48))
    done = list(measure_gpu.measure_backbone_kernels(sizes, raw, small, device="cpu", timer=timing.median_time))
    assert done == ["moe experts", "prefill attention", "decode attention", "decode projection"]
    moe = next(v for k, v in raw["gemm_layers"].items() if k.startswith("moe experts ("))
    assert moe["flops"] == 2 * 128 * 32 * 3 * 16 and moe["s"] > 0
    att = raw["gemm_layers"]["attention prefill (causal SDPA)"]
    assert att["flops"] == 4 * 2 * 16 * 32 * 33 / 2
    dec = raw["memory_bound"]["decode attention"]
    assert dec["bytes"] == 2 * 2 * 2 * 24 * 16 * 2 and dec["gbps"] == pytest.approx(dec["bytes"] / dec["s"] / 1e9)
    assert raw["memory_bound"]["decode qkv projection"]["bytes"] == 2 * (32 * 48 + 4 * 32 + 4 * 48)
    full = synthetic_gpu_raw()
    full["gemm_layers"], full["memory_bound"] = raw["gemm_layers"], raw["memory_bound"]
    gpu, *_ = assemble.gpu_sections(full, load_profile("h100-sxm"))
    assert 0 < gpu["matmul_efficiency"] <= 1 and 0 < gpu["memory_efficiency"] <= 1


def test_gpu_side_without_uva_keeps_the_base_uva_and_says_so():
    raw = synthetic_gpu_raw()
    raw["uva"] = []
    raw["gpu_info"]["uva_reason"] = "host_uva needs a CUDA GPU and Triton (pip install triton)"
    raw["gpu_info"]["nvml"] = {"reason": "pynvml is not installed"}
    base = load_profile("h100-sxm")
    profile, _, _ = assemble.assemble(raw, base, "h100-sxm", "gpu", "2026-01-01", quick=True, cpu_only=False)
    assert profile["uva"]["walk_ns"] == base.uva.walk_ns
    assert "uva copied from the base profile" in profile["provenance"]["notes"]
    assert "measured here: host, gpu, link;" in profile["provenance"]["notes"]
    assert profile["link"]["kind"].startswith("PCIe (generation and width not read")


def test_gpu_side_without_cold_gathers_takes_cold_line_ns_from_the_base_and_says_so(tmp_path):
    raw = synthetic_gpu_raw()
    del raw["uva_cold"]
    base, (p, out) = load_profile("h100-sxm"), _assembled_gpu_profile(raw, tmp_path)
    assert (p.uva.cold_line_ns, p.uva.upper_line_mib) == (base.uva.cold_line_ns, base.uva.upper_line_mib)
    assert "uva.cold_line_ns from the base profile (not timed here)" in p.provenance.notes
    assert "# cold_line_ns 35.37 from the base profile" in out.read_text()


def test_fit_cold_line_ns_is_the_slope_over_the_translation_bound_points():
    ref = load_profile("h100-sxm").uva
    pts, lines = [], {}
    for g in (1, 4, 16, 64):
        for n in (8192, 65536):
            warm = sum(uva_time(ref, n, 160, g * GiB)) * 1e6
            lines[g, n] = gather_cold_lines(ref, n, g * GiB)
            # 50 ns a line, and +-1 us of noise that cancels over each footprint's two points
            noise = 1.0 if n == 8192 else -lines[g, 8192] / max(lines[g, n], 1e-9)
            pts.append({"table_gib": g, "row_bytes": 160, "rows": n, "us_warm": warm,
                        "us_cold": warm + 50e-3 * lines[g, n] + (noise if lines[g, n] else 0.0)})
    assert lines[1, 8192] == 0 and lines[4, 8192] < lines[16, 8192] < lines[64, 8192]   # cold lines differ
    cold, used = fit_cold_line_ns(ref, pts, ref.upper_line_mib)
    assert cold == pytest.approx(50.0, rel=0.02) and len(used) == len(pts)
    # A payload-bound gather is left out (its difference is not linear in the lines), and so is its slope.
    slow = {"table_gib": 64, "row_bytes": 160, "rows": 8192, "us_warm": 1.0, "us_cold": 1e6}
    fast = dataclasses.replace(ref, max_gbps=1e-3)
    assert fit_cold_line_ns(fast, [slow], ref.upper_line_mib) == (0.0, [])
    # Noise around no effect gives 0, never a negative cost.
    flat = [{**p, "us_cold": p["us_warm"] - 1.0} for p in pts]
    assert fit_cold_line_ns(ref, flat, ref.upper_line_mib)[0] == 0.0


def test_the_gpu_plan_times_cold_gathers_at_footprints_whose_cold_lines_differ():
    ref = load_profile("h100-sxm").uva
    sizes = plan.FULL
    lines = [max(gather_cold_lines(ref, n, g * GiB) for n in sizes.uva_cold_rows) for g in sizes.uva_cold_table_gib]
    assert lines[0] == 0 and lines == sorted(lines) and len(set(np.round(lines))) == len(lines)   # 0, 256, 1024, 4096
    assert sizes.uva_cold_row_bytes % 4 == 0 and plan.L2_FLUSH_MIN >= 4 * 50 * MiB   # 4 x an H100's 50 MiB L2


def test_fit_uva_points_separates_payload_bound_points_and_recovers_the_model():
    raw = synthetic_gpu_raw()          # made from the H100 model, payload limit (49 GB/s) included
    ref = load_profile("h100-sxm").uva
    fit, max_gbps, used, err = fit_uva_points(raw["uva"])
    assert (fit.translation_unit_kib, fit.tlb_reach_gib, fit.miss_exponent) == (64.0, 1.0, 0.5)
    assert fit.walk_ns == pytest.approx(ref.walk_ns, rel=0.01) and fit.fixed_us == pytest.approx(ref.fixed_us, rel=0.01)
    assert max_gbps == pytest.approx(ref.max_gbps, rel=0.01)
    assert err < 0.01 and 4 <= len(used) < len(raw["uva"])
    # The reference step table itself: within 10 % like the shipped fit.
    pts = [dataclasses.asdict(q) for q in ref.points]
    fit, max_gbps, used, err = fit_uva_points(pts)
    assert err < 0.10 and fit.walk_ns == pytest.approx(ref.walk_ns, rel=0.02)


# -- the end-to-end mechanisms' figures ------------------------------------------------------------------

SM, BLOCKS_PER_SM = 132, 2            # the h100-sxm base's uva_blocks_per_sm is 2


def matmul_fraction(m: int) -> float:
    return m / (m + 256)


def memory_fraction(nbytes: float) -> float:
    return nbytes / (nbytes + 64 * MiB)


def synthetic_mechanism_raw(interference: float = 0.4) -> dict:
    """Mechanism points made from known answers: GEMM rate fraction M / (M + 256) of 750 TFLOP/s, attention
    bytes / (bytes + 64 MiB) of 2900 GB/s, graphs 8 us + 0.01 us a kernel to launch and 3 us + 0.9 us a kernel
    on the GPU, a layer window slowed by 1 / (1 - interference x share), the engine 50 us + 0.2 us a sequence."""
    ladder = {m: {name: {"shape": [m, k, n], "flops": 2 * m * k * n, "s": 2 * m * k * n / (matmul_fraction(m) * 750e12)}
                  for name, (k, n) in preset_shapes().ladder_gemms.items()} for m in (1, 8, 32, 128, 512, 2048, 8192)}
    memory = [{"batch": b, "context": c, "bytes": b * c * 24576, "s": b * c * 24576 / (memory_fraction(b * c * 24576)
                                                                                      * 2900e9)}
              for b, c in ((1, 64), (1, 512), (8, 512), (64, 512), (64, 2048))]
    graphs = [{"kernels": k, "graph_gpu_us": 3 + 0.9 * k, "graph_launch_us": 8 + 0.01 * k, "eager_us": 5.0 * k}
              for k in (16, 64, 256, 1024)]
    alone = 4000.0
    points = []
    for ctas, grid in ((33, 33), (66, 66), (132, 132), (264, 264), (None, 4096)):
        share = gather_block_share(grid, SM, BLOCKS_PER_SM)
        window = alone / (1 - interference * share)
        points.append({"ctas": ctas, "grid": grid, "rows": 64 * grid * 4, "gather_alone_us": 300.0,
                       "gather_rows_alone": 65536, "window_us": window, "side_us": 1.5 * window})
    contention = {"layer": 0, "batch": 512, "context": 256, "row_bytes": 160, "table_gib": 4, "layers": 8,
                  "window_alone_us": alone, "rows": 65536, "points": points,
                  "copy": {"bytes": 1 << 28, "copy_alone_us": 200.0, "copy_bytes_alone": 10 << 20,
                           "window_us": alone * 1.01, "side_us": alone * 1.2}}
    return {"matmul_ladder": ladder, "memory_ladder": memory, "graphs": graphs, "sm_count": SM,
            "uva_rows_per_cta": 64, "contention": contention, "engine_step": {8: 51.6, 64: 62.8, 256: 101.2},
            "engine_preset": "tiny"}


def test_fit_interference_and_fraction_curves_on_known_points():
    shares = [0.125, 0.25, 0.5, 1.0, 1.0]
    assert fit_interference(shares, [0.4 * x for x in shares]) == pytest.approx(0.4)
    assert fit_interference(shares, [-0.01] * 5) == 0.0 and fit_interference(shares, [3.0] * 5) == 1.0
    assert fit_interference([], []) == 0.0
    assert gather_block_share(66, 132, 2) == 0.25 and gather_block_share(1000, 132, 2) == 1.0
    assert fraction_curve([8, 1, 8], [2.0, 1.0, 3.0], 4.0) == [{"x": 1, "y": 0.25}, {"x": 8, "y": 0.75}]
    assert fraction_curve([1], [5.0], 4.0) == [{"x": 1, "y": 1.0}]          # above the peak: at most 1


def test_gpu_side_assembly_of_the_mechanisms_gives_the_known_answers(tmp_path):
    raw = {**synthetic_gpu_raw(), **synthetic_mechanism_raw(0.4)}
    base, (p, out) = load_profile("h100-sxm"), _assembled_gpu_profile(raw, tmp_path)
    g, h = p.gpu, p.host
    assert [(q.x, q.y) for q in g.matmul_curve] == [(m, pytest.approx(matmul_fraction(m), rel=2e-3))
                                                    for m in (1, 8, 32, 128, 512, 2048, 8192)]
    assert [q.y for q in g.memory_curve] == [pytest.approx(memory_fraction(q.x), rel=2e-3) for q in g.memory_curve]
    assert len(g.memory_curve) == 5 and g.memory_curve[0].x == 64 * 24576
    assert g.graph_launch_us == pytest.approx(8.0, rel=0.01) and g.graph_kernel_gap_us == pytest.approx(0.9, rel=0.01)
    assert g.uva_interference == pytest.approx(0.4) and g.sm_count == SM and g.uva_rows_per_cta == 64
    assert g.uva_blocks_per_sm == base.gpu.uva_blocks_per_sm
    assert h.engine_step_fixed_us == pytest.approx(50.0, rel=0.01)
    assert h.engine_step_per_seq_us == pytest.approx(0.2, rel=0.01)
    assert (h.critical_hash_fixed_us, h.critical_hash_ns_per_token, h.sort_rows_per_s) == (
        pytest.approx(17.0, rel=0.01), pytest.approx(76.0, rel=0.01), pytest.approx(2.5e8, rel=0.01))
    text = out.read_text()
    assert "# matmul_curve: bf16 GEMMs" in text and "# memory_curve: decode_attention" in text
    assert "#   uva_ctas unbounded: grid 4096, share 1" in text and "beside an H2D copy" in text
    assert "# graph_*: a captured CUDA graph" in text and "# engine_step_*: the real runner" in text
    assert "uva_blocks_per_sm (2) from the base profile" in p.provenance.notes


def test_mechanisms_not_measured_come_from_the_base_and_the_notes_say_so():
    raw = synthetic_gpu_raw()
    raw.update(sm_count=114, uva_rows_per_cta=64, contention={"skipped": "host_uva needs a CUDA GPU"})
    base = load_profile("h100-sxm")
    profile, _, _ = assemble.assemble(raw, base, "h100-sxm", "gpu", "2026-01-01", quick=True, cpu_only=False)
    g, notes = profile["gpu"], profile["provenance"]["notes"]
    assert g["sm_count"] == 114 and g["uva_interference"] == base.gpu.uva_interference
    assert g["graph_launch_us"] == base.gpu.graph_launch_us
    assert g["matmul_curve"] == [{"x": p.x, "y": p.y} for p in base.gpu.matmul_curve]
    for said in ("gpu.uva_interference from the base profile: the contention probe did not run (host_uva needs",
                 "gpu.matmul_curve from the base profile", "gpu.graph_* from the base profile",
                 "host.engine_step_* from the base profile"):
        assert said in notes, said


def test_critical_path_measurements_are_positive_and_finite(monkeypatch):
    monkeypatch.setattr(timing, "WARM_S", 0.0)
    monkeypatch.setattr(timing, "TIMED_S", 0.0)
    raw = {}
    done = list(measure_cpu.measure_critical_path(TINY, {}, raw))
    assert done == ["critical-path hash B=1", "sort 16 ids", "critical-path hash B=8", "sort 128 ids",
                    "critical-path hash B=64", "sort 1024 ids"]
    assert sorted(raw["critical_hash"]) == [1, 8, 64] and sorted(raw["sort"]) == [16, 128, 1024]
    fields, comments = assemble_mechanisms.critical_path_fields(raw)
    assert all(0 < v < float("inf") for v in fields.values()), fields
    assert comments[0].startswith("critical_hash_*")


def test_hash_call_is_timed_at_every_size_and_becomes_a_rate_curve(monkeypatch):
    monkeypatch.setattr(timing, "WARM_S", 0.0)
    monkeypatch.setattr(timing, "TIMED_S", 0.0)
    raw = {}
    done = list(measure_cpu.measure_hash_call(TINY, {}, raw))
    assert len(done) == len(raw["hash_call"]) == plan.HASH_CALL_STEPS
    assert all(0 < v < float("inf") for v in raw["hash_call"].values())
    raw = {**synthetic_gpu_raw(), **synthetic_mechanism_raw(0.4), "hash_call": {64: 16.0, 3072: 150.0}}
    host, comments, _ = assemble.host_section(raw, load_profile("h100-sxm"))
    # tokens / seconds: 4 M tokens/s at 64 tokens, 20.5 M at 3072 (the fixed part amortised)
    assert host["hash_call_curve"] == [{"x": 64, "y": 4e6}, {"x": 3072, "y": 2.048e7}]
    assert any(c.startswith("hash_call_curve:") for c in comments)


def test_store_call_costs_recover_the_store_work_they_were_made_from():
    from tools.calibrate.assemble_ssd import store_call_costs
    fixed, row_ns, cache_call_us, cache_row_ns = store_call_costs(synthetic_ssd_raw()["ssd"]["store"])
    assert (fixed, row_ns, cache_call_us, cache_row_ns) == pytest.approx((80.0, 700.0, 30.0, 250.0))
    table, comments, _ = assemble_ssd.ssd_section(synthetic_ssd_raw())
    assert table["store_call_fixed_us"] == 80.0 and table["store_cache_row_ns"] == 250.0
    assert table["store_cache_call_us"] == 30.0
    assert any(c.startswith("store_*") for c in comments)


def test_thread_wake_is_the_passive_gather_less_the_active_one():
    host, comments, _ = assemble.host_section({**synthetic_gpu_raw(), **synthetic_mechanism_raw(0.4)},
                                              load_profile("h100-sxm"))
    assert host["thread_wake_us"] == 130.0
    assert any(c.startswith("thread_wake_us") for c in comments)


def test_sched_slice_probe_measures_a_slice_between_a_tick_and_a_second():
    raw = {}
    assert list(measure_cpu.measure_sched_slice(TINY, {}, raw)) in (["sched slice"], ["sched slice (not measurable here)"])
    if "sched_slice_us" in raw:
        # two spinning processes on one core alternate: each run lasts at least a scheduler tick's share
        assert 100 <= raw["sched_slice_us"] <= 1e6, raw
        assert raw["sched_slice_runs_us"][0] <= raw["sched_slice_us"] <= raw["sched_slice_runs_us"][2]


def test_engine_step_is_measured_from_a_real_run_on_the_cpu(monkeypatch):
    pytest.importorskip("torch")
    sizes = dataclasses.replace(TINY, engine_batches=(2, 16), engine_steps=4)
    raw = {}
    assert list(measure_engine.measure_engine_step(sizes, raw, device="cpu")) == ["engine step B=2",
                                                                                   "engine step B=16"]
    assert all(0 < v < float("inf") for v in raw["engine_step"].values())
    fields, comments, notes = assemble_mechanisms.engine_fields(raw, load_profile("h100-sxm"))
    assert fields["engine_step_fixed_us"] >= 0 and fields["engine_step_per_seq_us"] >= 0 and notes == []


def test_step_gaps_are_from_one_steps_last_compute_to_the_next_ones_first():
    from vocab.records import CPU_HASH, GPU_COMPUTE, event_table

    events = event_table([(GPU_COMPUTE, "layer 0", 0.0, 1.0, 0, 0), (GPU_COMPUTE, "lm head", 1.0, 1.5, 0, -1),
                          (CPU_HASH, "hash", 1.6, 1.7, 1, 1), (GPU_COMPUTE, "layer 0", 1.75, 2.5, 1, 0),
                          (GPU_COMPUTE, "lm head", 2.5, 3.0, 1, -1), (GPU_COMPUTE, "layer 0", 3.5, 4.0, 2, 0)])
    assert measure_engine.step_gaps_s(events).tolist() == pytest.approx([0.25, 0.5])


def test_rate_ladders_run_the_backbones_code_on_the_cpu(monkeypatch):
    """On the CPU with small shapes and the host timer: what the GPU run records, and that it assembles."""
    pytest.importorskip("torch")
    monkeypatch.setattr(timing, "WARM_S", 0.0)
    monkeypatch.setattr(timing, "TIMED_S", 0.0)
    sizes = dataclasses.replace(TINY, warmup=0, repeats=1, matmul_rows=(1, 16), kv_ladder=((1, 8), (4, 16)))
    small = dataclasses.replace(preset_shapes(), ladder_gemms={"a": (32, 48), "b": (48, 32)},
                                decode_attention=dict(batch=2, heads=4, kv_heads=2, head_dim=16, context=24))
    raw = {}
    for gen in (measure_rates.measure_matmul_ladder(sizes, raw, small, "cpu", timing.median_time),
                measure_rates.measure_memory_ladder(sizes, raw, small, "cpu", timing.median_time)):
        list(gen)
    assert raw["matmul_ladder"][16]["a"]["flops"] == 2 * 16 * 32 * 48
    assert [p["bytes"] for p in raw["memory_ladder"]] == [2 * 1 * 2 * 8 * 16 * 2, 2 * 4 * 2 * 16 * 16 * 2]
    curve, _ = assemble_mechanisms.matmul_curve(raw, 1e-3)
    assert [q["x"] for q in curve] == [1, 16] and all(0 < q["y"] <= 1 for q in curve)
    curve, _ = assemble_mechanisms.memory_curve(raw, 1e3)
    assert len(curve) == 2 and all(0 < q["y"] <= 1 for q in curve)


def test_the_probe_writes_the_base_with_the_probed_fields(tmp_path):
    raw = {**synthetic_mechanism_raw(0.25), "gemm_large": {"n": 8192, "tflops": 900.0}, "d2d_gbps": 4000.0,
           "d2d_bytes": GiB, "gpu_info": {"name": "NVIDIA H200", "torch": "2.x", "cuda": "13.0"}}
    base = load_profile("h200-sxm")
    profile, comments, header = probe.assemble_probe(raw, base, "h200-sxm", "probe", "2026-01-01", " --quick")
    out = tmp_path / "probe.toml"
    output.write_profile_atomic(dump_toml(profile, comments, header), out)
    p = load_profile(out)
    assert p.gpu.bf16_tflops == 900.0 and p.gpu.hbm_gbps == 4000.0 and p.gpu.uva_interference == pytest.approx(0.25)
    assert p.gpu.matmul_efficiency == base.gpu.matmul_efficiency and (p.link, p.uva) == (base.link, base.uva)
    assert p.host.engine_step_fixed_us == pytest.approx(50.0, rel=0.01)
    assert p.host.cpu == base.host.cpu
    assert "gpu.uva_interference" in p.provenance.notes and "host.engine_step_fixed_us" in p.provenance.notes
    assert "everything else is the base profile 'h200-sxm'" in p.provenance.notes
    assert [probe.base_for_gpu(n) for n in ("NVIDIA H200", "NVIDIA GH200 480GB", "NVIDIA H100 80GB HBM3",
                                            "NVIDIA A100-SXM4-80GB", "NVIDIA L4")] == [
        "h200-sxm", "gh200", "h100-sxm", "a100-sxm4-80gb", "h100-sxm"]


def test_the_probe_without_a_gpu_exits_2_with_one_line(monkeypatch, tmp_path, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert probe.main(["--out", str(tmp_path / "p.toml")]) == 2
    assert capsys.readouterr().err == NO_GPU_LINE
    assert list(tmp_path.iterdir()) == []
