"""`python -m tools.calibrate.probe [--quick] [--out FILE] [--base NAME|auto] [--engine]`: the GPU figures of
the simulator's end-to-end mechanisms only, in well under 10 minutes.

Measures bf16_tflops and hbm_gbps (the peaks the curves are fractions of), the GEMM and decode-attention
ladders (gpu.matmul_curve, memory_curve), CUDA-graph timing (graph_launch_us, graph_kernel_gap_us), the
contention probe (sm_count, uva_rows_per_cta, uva_interference) and, with --engine, the engine's step
(host.engine_step_*), and writes them into a copy of the base profile (auto: the shipped profile of this
GPU's kind), which the provenance notes say field by field. The full `calibrate` measures these too.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
import time
from pathlib import Path

from profiles import load_profile, shipped_names
from profiles.writer import dump_toml, plain, sig
from real_runs.cuda_gather import uva_unavailable_reason
from tools.calibrate import plan
from tools.calibrate.assemble import check_finite, tool_version
from tools.calibrate.assemble_mechanisms import engine_fields, gpu_mechanism_fields
from tools.calibrate.command import drive, print_mechanisms, require_cuda
from tools.calibrate.measure_gpu import measure_device_copy, measure_peak_gemm, mechanism_measurements
from tools.calibrate.output import check_out, slug, write_profile_atomic
from vocab.errors import run_command

# Shipped profiles by the GPU-name fragment that picks them (GH200 before H200: both names hold "h200").
GPU_KINDS = ("gh200", "h200", "h800", "h100", "a100")
DEFAULT_BASE = "h100-sxm"


def base_for_gpu(gpu_name: str) -> str:
    """The shipped profile of a GPU's kind ('NVIDIA H200' -> 'h200-sxm'), else DEFAULT_BASE."""
    name = gpu_name.lower()
    for kind in GPU_KINDS:
        if kind in name:
            # The single-GPU profile of that kind (h100-sxm, not h100-8gpu-server: a server's host is its own).
            return next((p for p in shipped_names() if p.startswith(kind) and "server" not in p), DEFAULT_BASE)
    return DEFAULT_BASE


def measure_probe(sizes: plan.Sizes, raw: dict, engine: bool):
    """The peaks, then the mechanisms' measurements (measure_gpu.mechanism_measurements)."""
    import torch  # optional heavy dependency

    raw["gpu_info"] = {"name": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda}
    measure_peak_gemm(sizes, raw)
    yield f"bf16 gemm {sizes.gemm_n}^3"
    free, _ = torch.cuda.mem_get_info()
    measure_device_copy(sizes, int(min(sizes.d2d_bytes, free * 0.2)), raw)
    torch.cuda.empty_cache()
    yield "d2d"
    yield from mechanism_measurements(sizes, {"uva_reason": uva_unavailable_reason()}, raw, engine=engine)


def assemble_probe(raw: dict, base, base_name: str, out_name: str, today: str, flags: str) -> tuple:
    """(profile dict, comments, header): the base profile with the probed fields replaced."""
    profile = plain(base)
    gpu = profile["gpu"]
    gpu.update(bf16_tflops=sig(raw["gemm_large"]["tflops"]), hbm_gbps=sig(raw["d2d_gbps"]))
    fields, gpu_comments, notes = gpu_mechanism_fields(raw, base, gpu["bf16_tflops"], gpu["hbm_gbps"])
    gpu.update(fields)
    host_fields, host_comments, host_notes = engine_fields(raw, base)
    profile["host"].update(host_fields)
    measured = ["gpu.bf16_tflops", "gpu.hbm_gbps"] + [f"gpu.{k}" for k in fields if k != "uva_blocks_per_sm"]
    measured += [f"host.{k}" for k in host_fields] if raw.get("engine_step") else []
    info = raw["gpu_info"]
    bp = base.provenance
    profile.update(name=out_name, description=f"{info['name']}: the mechanism probe over {base_name}")
    profile["provenance"] = {
        "source": "measured", "machine": info["name"], "date": today,
        "method": (f"python -m tools.calibrate.probe{flags} ({tool_version()}): medians of CUDA-event timings "
                   f"(torch {info['torch']}, CUDA {info['cuda']}); fits by profiles/fit.py"),
        "notes": ". ".join([f"measured here: {', '.join(measured)} (bf16_tflops and hbm_gbps are the peaks the "
                            f"curves are fractions of); everything else is the base profile '{base_name}' "
                            f"({bp.source}, {bp.machine}, {bp.date}), including matmul_efficiency and "
                            f"memory_efficiency", *notes, *host_notes]),
    }
    check_finite(profile)
    comments = {"gpu": [f"bf16_tflops: bf16 GEMM {raw['gemm_large']['n']}^3; hbm_gbps: device-to-device copy, "
                        "read + write", *gpu_comments]}
    if host_comments:
        comments["host"] = host_comments
    header = [f"{out_name}: the mechanism probe (python -m tools.calibrate.probe) on {today}, {info['name']}.",
              f"Probed figures over the base profile {base_name}; see provenance.notes."]
    return profile, comments, header


def run_probe(args) -> int:
    require_cuda()
    import torch  # optional heavy dependency: require_cuda has checked it is there

    name = torch.cuda.get_device_name()
    base_name = base_for_gpu(name) if args.base == "auto" else args.base
    base = load_profile(base_name)                      # ProfileError: one line, exit 2
    today = _dt.date.today().isoformat()
    out = Path(args.out) if args.out else Path("profiles") / f"{slug(name)}-probe-{today}.toml"
    check_out(out)
    raw: dict = {}
    t0 = time.perf_counter()

    def done(label: str) -> None:
        print(f"probe: {label} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)

    drive([measure_probe(plan.sizes_for(args.quick), raw, args.engine)], done)
    flags = f"{' --quick' if args.quick else ''}{' --engine' if args.engine else ''}"
    profile, comments, header = assemble_probe(raw, base, base_name, out.stem, today, flags)
    write_profile_atomic(dump_toml(profile, comments, header), out)
    print(f"wrote {out} (probed in {time.perf_counter() - t0:.0f} s over {base_name})")
    g = profile["gpu"]
    print(f"  bf16 {g['bf16_tflops']:.4g} TFLOP/s, HBM {g['hbm_gbps']:.4g} GB/s")
    print_mechanisms(g)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.calibrate.probe", description=__doc__.splitlines()[0])
    p.add_argument("--out", help="profile to write (default: profiles/<gpu>-probe-<date>.toml)")
    p.add_argument("--quick", action="store_true", help="fewer points and repeats")
    p.add_argument("--base", default="auto", help="profile the other fields come from (default: this GPU's kind)")
    p.add_argument("--engine", action="store_true", help="also the engine's step (the real runner, tiny preset)")
    return run_command(run_probe, p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
