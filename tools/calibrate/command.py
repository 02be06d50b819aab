"""The `engram-sim calibrate` command: its arguments (`register`) and what it does (`run_calibrate`)."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from profiles import load_profile
from profiles.writer import dump_toml
from real_runs.instrument import cpu_model
from real_runs.timing import recording_spreads
from tools.calibrate import plan, sanity
from tools.calibrate.assemble import assemble, comparison
from tools.calibrate.bounds import CPU_STEPS, GPU_STEPS, MAX_REMEASURES, SSD_STEPS
from tools.calibrate.cpu_device import run_cpu_device
from tools.calibrate.drive import check_ssd_folder, drive_file_bytes, drive_test_file, read_block_bytes
from tools.calibrate.measure_cpu import cpu_steps, system_info
from tools.calibrate.measure_gpu import gpu_info, gpu_steps
from tools.calibrate.measure_ssd import drive_count, ssd_steps
from tools.calibrate.output import CalibrateError, check_out, default_out, slug, write_profile_atomic

NO_GPU = "no CUDA GPU found"
NO_GPU_FIX = "use --cpu-only to measure the CPU side only"


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("calibrate", help="measure this machine into a hardware profile (TOML)",
                              description="Measure this machine into a hardware profile (TOML).")
    p.add_argument("--out", help="profile to write (default: profiles/<gpu-or-cpu>-measured-<date>.toml)")
    p.add_argument("--quick", action="store_true", help="fewer sizes and repeats (under 2 minutes on an H100)")
    p.add_argument("--cpu-only", action="store_true",
                   help="measure the CPU side only; gpu, link and uva come from --base")
    p.add_argument("--base", default="h100-sxm",
                   help="profile the unmeasured sections come from (default h100-sxm)")
    p.add_argument("--ssd-path", help="also measure the [ssd] section on a test file written in this folder "
                                      "(on the drive to measure; the file is removed afterwards)")
    p.add_argument("--ssd-size-gib", type=float, default=None,
                   help="the test file's size (default 2 GiB, 1 with --quick); larger than the drive's caches")
    p.add_argument("--device", choices=["cpu"],
                   help="cpu: measure this CPU as the device of `run --device cpu` and print its [gpu] and [link] "
                        "sections and the [host] fields of its runs (serve step, fetch pick-up); --out FILE: "
                        "write the --base profile with them in; nothing else is measured")
    p.add_argument("--config", help="--device cpu: the config whose backbone's layers are counted and timed "
                                    "(default tiny)")
    p.set_defaults(func=run_calibrate)
    return p


def run_calibrate(args) -> int:
    """Measure, assemble the profile, write it atomically, print a summary and the reference comparison.
    With --ssd-path the drive's test file lives while measuring (re-measuring too), and is removed after."""
    if getattr(args, "device", None) == "cpu":
        return run_cpu_device(args)
    quick, cpu_only = bool(getattr(args, "quick", False)), bool(getattr(args, "cpu_only", False))
    base_name = getattr(args, "base", None) or "h100-sxm"
    base = load_profile(base_name)                      # ProfileError: one line, exit 2
    cuda = not cpu_only and require_cuda()
    today = _dt.date.today().isoformat()
    out = Path(args.out) if getattr(args, "out", None) else default_out(_machine_slug(cuda), today)
    check_out(out)
    sizes = plan.sizes_for(quick)
    raw: dict = {}
    ssd_path = getattr(args, "ssd_path", None)
    if ssd_path is None:
        return calibrate_into(out, sizes, base, base_name, today, quick, cuda, raw, [])
    file_bytes = drive_file_bytes(getattr(args, "ssd_size_gib", None), sizes.ssd_file_bytes)
    facts = check_ssd_folder(ssd_path, file_bytes)      # DriveError: one line, exit 2, nothing left behind
    raw["drive"] = {**dataclasses.asdict(facts), "file_bytes": file_bytes}
    print(f"calibrate: drive {facts.describe()}: writing a {file_bytes / 2**30:.2f} GiB test file in "
          f"{facts.folder}", file=sys.stderr)
    with drive_test_file(facts.folder, file_bytes) as test_file:
        return calibrate_into(out, sizes, base, base_name, today, quick, cuda, raw,
                              ssd_steps(sizes, test_file, read_block_bytes(facts)))


def calibrate_into(out: Path, sizes: plan.Sizes, base, base_name: str, today: str, quick: bool, cuda: bool,
                   raw: dict, drive_steps: list) -> int:
    """Measure into raw (the CPU side, the GPU side with cuda, the drive's steps), re-measure what fails its
    checks, write the profile to out and print what was measured."""
    spread_log: dict = {}
    wall, steps = measure(sizes, cuda, quick, raw, spread_log, drive_steps)

    def build():
        return assemble(raw, base, base_name, out.stem, today, quick, cpu_only=not cuda)

    (profile, comments, header), findings, tries = remeasure_until_sane(build, steps, raw, spread_log)
    comments.setdefault("host", []).extend(sanity.spread_comments(spread_log, CPU_STEPS))
    if cuda:
        comments.setdefault("gpu", []).extend(sanity.spread_comments(spread_log, GPU_STEPS))
    if drive_steps:
        comments.setdefault("ssd", []).extend(sanity.spread_comments(spread_log, SSD_STEPS))
    warnings = sanity.flag(profile, findings, tries)
    write_profile_atomic(sanity.annotate(dump_toml(profile, comments, header), findings), out)
    print(f"wrote {out} (measured in {wall:.0f} s)")
    print_summary(profile, cuda)
    for line in comparison(raw, gpu_measured=cuda):
        print(line)
    sanity.warn(warnings)
    return 0


def remeasure_until_sane(build, steps: dict, raw: dict, spread_log: dict) -> tuple:
    """(build()'s result, the findings left, re-measurements made): while a figure is out of its bounds or
    its repeats spread too widely, re-run the steps that measure it, at most MAX_REMEASURES times."""
    tries = 0
    while True:
        result = build()
        findings = sanity.check_bounds(result[0], steps) + sanity.check_spreads(spread_log)
        if not findings or tries == MAX_REMEASURES:
            return result, findings, tries
        tries += 1
        first = {}                                         # the first finding of each step, in step order
        for f in findings:
            first.setdefault(f.step, f)
        again = [name for name in steps if name in first]
        for name in again:
            print(f"calibrate: re-measuring {name} ({tries} of {MAX_REMEASURES}): {first[name].field} "
                  f"{first[name].reason}", file=sys.stderr)
        drive([recorded(name, steps[name], raw, spread_log) for name in again], lambda label: None)


def require_cuda() -> bool:
    try:
        import torch  # optional heavy dependency: the GPU side needs it
        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if not cuda:
        raise CalibrateError("calibrate", NO_GPU, NO_GPU_FIX)
    return True


def _machine_slug(cuda: bool) -> str:
    if cuda:
        import torch  # optional heavy dependency

        return slug(torch.cuda.get_device_name())
    return slug(cpu_model())


def measure(sizes: plan.Sizes, cuda: bool, quick: bool, raw: dict, spread_log: dict,
            drive_steps: list = ()) -> tuple[float, dict]:
    """Run every measurement step into `raw` under a progress bar, the spread of each measurement's repeats
    into `spread_log`; (seconds taken, the steps by name, to re-run). A failure is one CalibrateError naming
    the measurement after which it happened."""
    cplan = plan.cpu_plan(sizes)
    gplan = plan.gpu_plan(sizes) if cuda else None
    total = cplan["count"] + (gplan["count"] if gplan else 0) + (drive_count(sizes) if drive_steps else 0)
    what = "CPU and GPU" if cuda else "CPU side only"
    print(f"calibrate: measuring {what} ({'quick' if quick else 'full'}), {cpu_model()}, "
          f"{os.cpu_count()} cores; threads {cplan['threads']}", file=sys.stderr)
    t0 = time.perf_counter()
    system_info(cplan, raw)
    steps = dict(cpu_steps(sizes, cplan, pin_staging=cuda))
    if cuda:
        gpu_info(gplan, raw)
        steps.update(gpu_steps(sizes, gplan))
    steps.update(drive_steps)
    with tqdm(total=total, desc="calibrate", unit="measurement", file=sys.stderr, dynamic_ncols=True) as bar:
        def done(label: str) -> None:
            bar.set_postfix_str(label, refresh=False)
            bar.update(1)

        drive([recorded(name, step, raw, spread_log) for name, step in steps.items()], done)
    return time.perf_counter() - t0, steps


def recorded(name: str, step, raw: dict, spread_log: dict):
    """Run one step, logging the spreads timed for each of its measurements as {label: (step, [Spread])}
    (a re-run replaces the step's earlier entries)."""
    for label in [k for k, (st, _) in spread_log.items() if st == name]:
        del spread_log[label]
    with recording_spreads() as seen:
        for label in step(raw):
            spread_log[label] = (name, list(seen))
            seen.clear()
            yield label


def drive(steps, done) -> None:
    """Run the measurement generators, calling done(label) after each measurement. A failure is one
    CalibrateError naming the measurement after which it happened."""
    label = "start"
    try:
        for gen in steps:
            for label in gen:
                done(label)
    except (RuntimeError, OSError, MemoryError, ValueError) as e:   # CUDA errors are RuntimeErrors
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CalibrateError("calibrate", f"a measurement failed after '{label}' ({type(e).__name__}: {first})",
                             "nothing was written; try --quick, or free memory and run again") from None


def print_summary(profile: dict, cuda: bool) -> None:
    h = profile["host"]
    print(f"  host: hashing {h['hash_tokens_per_s_per_core'] / 1e6:.3g} M tokens/s/core, dedup "
          f"{h['dedup_rows_per_s_per_core'] / 1e6:.3g} M rows/s/core, gather per thread "
          + ", ".join(f"{p['x']} B {p['y']:.3g}" for p in h["cpu_gather_per_thread"])
          + f" GB/s (max {h['cpu_gather_max_threads']} threads, fixed {h['cpu_gather_fixed_us']:.3g} us), "
          f"dram ~{h['dram_gbps']:.3g} GB/s")
    print(f"  host critical path: NumPy hash {h['critical_hash_fixed_us']:.3g} us + {h['critical_hash_ns_per_token']:.3g} "
          f"ns/token per layer, sort {h['sort_rows_per_s'] / 1e6:.3g} M ids/s; engine step "
          f"{h['engine_step_fixed_us']:.3g} us + {h['engine_step_per_seq_us']:.3g} us/sequence"
          + ("" if cuda else " (from the base)"))
    if "ssd" in profile:
        d = profile["ssd"]
        print(f"  ssd: {d['name']}: random {d['read_block_bytes']} B reads/s by depth "
              + ", ".join(f"{p['x']}: {p['y']:.3g}" for p in d["random_read_iops"])
              + "; latency us by depth " + ", ".join(f"{p['x']}: {p['y']:.3g}" for p in d["random_read_latency_us"])
              + f"; sequential {d['seq_read_gbps']:.3g} GB/s; {d['read_cpu_us']:.3g} us CPU a read; a read call "
              f"{d['read_call_fixed_us']:.3g} us + {d['read_handoff_us']:.3g} us a thread; "
              f"{d['capacity_gib']:.4g} GiB free")
    if cuda:
        g, lk = profile["gpu"], profile["link"]
        print(f"  gpu: {g['name']}, bf16 {g['bf16_tflops']:.4g} TFLOP/s (layers x{g['matmul_efficiency']}), "
              f"HBM {g['hbm_gbps']:.4g} GB/s; link {lk['kind']}: H2D {lk['h2d_gbps']:.4g} GB/s, D2H "
              f"{lk['d2h_gbps']:.4g} GB/s, fixed {lk['copy_fixed_us']:.3g} us")
        print_mechanisms(g)


def print_mechanisms(g: dict) -> None:
    """One line of the gpu table's mechanism figures."""
    curve = ", ".join(f"{p['x']}: {p['y']:.2g}" for p in g.get("matmul_curve", []))
    print(f"  gpu mechanisms: {g['sm_count']} SMs, uva_interference {g['uva_interference']:.3g} "
          f"({g['uva_rows_per_cta']} rows a program), CUDA graph launch {g['graph_launch_us']:.3g} us + "
          f"{g['graph_kernel_gap_us']:.3g} us a kernel; matmul_curve {curve or 'none'}")
