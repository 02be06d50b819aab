"""The mechanism probe's GPU measurements at tiny sizes (skipped without a CUDA GPU). No SimPy here: this file
runs in the GPU image (real_runs/gpu_session.sh tests)."""

import dataclasses

import pytest

torch = pytest.importorskip("torch")

from profiles import load_profile  # noqa: E402
from profiles.writer import dump_toml  # noqa: E402
from real_runs.cuda_gather import uva_unavailable_reason  # noqa: E402
from tools.calibrate import output, plan, probe  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (torch.cuda.is_available() is False)")

TINY_GPU = dataclasses.replace(
    plan.QUICK, warmup=1, repeats=3, gemm_n=1024, d2d_bytes=64 << 20, matmul_rows=(1, 64), kv_ladder=((1, 64),),
    graph_kernels=(4, 32), contention_rows=4096, contention_layers=1, engine_batches=(2, 8), engine_steps=3)


def test_the_probe_measures_every_mechanism_on_a_gpu(tmp_path):
    raw = {}
    labels = list(probe.measure_probe(TINY_GPU, raw, engine=True))
    assert labels[:2] == ["bf16 gemm 1024^3", "d2d"] and labels[-1] == "engine step B=8"
    assert raw["sm_count"] == torch.cuda.get_device_properties(0).multi_processor_count
    if uva_unavailable_reason() is None:
        c = raw["contention"]
        assert [p["ctas"] for p in c["points"]][-1] is None and len(c["points"]) == len(plan.CONTENTION_GRIDS)
        assert all(p["window_us"] > 0 and p["side_us"] > 0 for p in c["points"]) and c["copy"]["window_us"] > 0
    base = load_profile("h100-sxm")
    profile, comments, header = probe.assemble_probe(raw, base, "h100-sxm", "probe", "2026-01-01", "")
    out = tmp_path / "probe.toml"
    output.write_profile_atomic(dump_toml(profile, comments, header), out)
    g = load_profile(out).gpu
    assert [q.x for q in g.matmul_curve] == [1, 64] and len(g.memory_curve) == 1
    assert g.graph_kernel_gap_us > 0 and 0 <= g.uva_interference <= 1


@pytest.mark.skipif(uva_unavailable_reason() is not None, reason=f"{uva_unavailable_reason()}")
def test_zero_copy_gathers_are_timed_back_to_back_and_after_an_l2_flush():
    from tools.calibrate import measure_gpu  # imports the real stores (torch)

    sizes = dataclasses.replace(TINY_GPU, uva_cold_rows=(8192,))
    gpu_plan = {"uva_points": [(1, 256, 4096)], "uva_table_gib": 1, "uva_cold_points": [(1, 160, 8192)],
                "l2_bytes": 50 << 20, "l2_flush_bytes": 256 << 20}
    raw = {}
    labels = list(measure_gpu.measure_uva(sizes, gpu_plan, raw))
    assert labels[-1] == "uva 1 GiB 160 B x 8192, warm and after an L2 flush"
    (p,) = raw["uva_cold"]
    assert p["us_warm"] > 0 and p["us_cold"] > 0 and raw["uva_cold_flush_bytes"] == 256 << 20
