"""The drive cross-check (a benchmark, not a test): calibrate's [ssd] measurements, made with the SSD store's
reader, against fio on the same test file with matching settings (tools/fio.py), repeated.

    python -m tools.drive_bench --ssd-path FOLDER [--ssd-size-gib 2] [--repeats 3] [--runtime 3] [--quick]

Prints, per depth (reads in flight), ours and fio's IOPS, their ratio and both mean latencies (fio's
completion latency), as min/median/max over the repeats; then fio's libaio at iodepth 32 for reference,
sequential GB/s, and our CPU per read. Without fio it says so in one line and prints ours alone. The test
file is removed afterwards, as calibrate's is.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from tools.calibrate import plan
from tools.calibrate.drive import check_ssd_folder, drive_file_bytes, drive_test_file, read_block_bytes
from tools.calibrate.measure_ssd import measure_drive
from tools.fio import fio_path, random_read_args, run_fio, seq_read_args
from vocab.errors import UserError, run_command

LIBAIO_DEPTH = 32


def spread(values: list) -> str:
    """min/median/max, or the one value."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{min(values):.4g}/{float(np.median(values)):.4g}/{max(values):.4g}"


def ours_once(sizes: plan.Sizes, path, block_bytes: int) -> dict:
    raw: dict = {}
    for _ in measure_drive(sizes, path, block_bytes, raw):
        pass
    return raw["ssd"]


def fio_once(path, size_bytes: int, sizes: plan.Sizes, depths, runtime_s: float) -> dict:
    out = {"random": {d: run_fio(random_read_args(path, size_bytes, d, runtime_s)) for d in depths}}
    out["libaio"] = run_fio(random_read_args(path, size_bytes, LIBAIO_DEPTH, runtime_s, engine="libaio"))
    out["seq"] = run_fio(seq_read_args(path, size_bytes, sizes.ssd_seq_threads, runtime_s, sizes.ssd_seq_block_bytes))
    return out


def table(ours: list[dict], fio: list[dict]) -> list[str]:
    """The comparison's lines (min/median/max over repeats)."""
    depths = sorted(ours[0]["random"])
    lines = [f"{'depth':>5}  {'ours IOPS':>22}  {'fio IOPS':>22}  {'ours/fio':>8}  {'ours lat us':>18}  "
             f"{'fio clat us':>18}"]
    for d in depths:
        o_iops = [r["random"][d]["iops"] for r in ours]
        o_lat = [r["random"][d]["latency_us"] for r in ours]
        f_iops = [r["random"][d].iops for r in fio]
        f_lat = [r["random"][d].clat_mean_us for r in fio]
        ratio = f"{np.median(o_iops) / np.median(f_iops):.2f}" if fio else "-"
        lines.append(f"{d:>5}  {spread(o_iops):>22}  {spread(f_iops):>22}  {ratio:>8}  {spread(o_lat):>18}  "
                     f"{spread(f_lat):>18}")
    seq_o = [r["seq"]["gbps"] for r in ours]
    lines.append(f"sequential {ours[0]['seq']['block_bytes'] >> 20} MiB reads, {ours[0]['seq']['threads']} threads: "
                 f"ours {spread(seq_o)} GB/s" + (f", fio {spread([r['seq'].gbps for r in fio])} GB/s" if fio else ""))
    if fio:
        lines.append(f"fio libaio iodepth {LIBAIO_DEPTH} (one job, for reference): "
                     f"{spread([r['libaio'].iops for r in fio])} IOPS, clat {spread([r['libaio'].clat_mean_us for r in fio])} us")
    lines.append(f"ours, host CPU per read at depth {ours[0].get('read_cpu_threads', 1)}: {spread([r['read_cpu_us'] for r in ours])} us")
    return lines


def run_bench(args) -> int:
    if args.repeats < 1 or not args.runtime > 0:
        raise UserError("--repeats" if args.repeats < 1 else "--runtime", "must be positive", "use e.g. 3")
    sizes = plan.QUICK if args.quick else plan.FULL
    file_bytes = drive_file_bytes(args.ssd_size_gib, sizes.ssd_file_bytes)
    facts = check_ssd_folder(args.ssd_path, file_bytes)
    have_fio = fio_path() is not None
    if not have_fio:
        print("drive bench: fio is not installed (apt-get install fio); printing ours alone", file=sys.stderr)
    print(f"drive {facts.describe()}, {file_bytes / 2**30:.2f} GiB test file in {facts.folder}, "
          f"{args.repeats} repeat(s), fio runtime {args.runtime:g} s a job")
    ours, fio = [], []
    with drive_test_file(facts.folder, file_bytes) as path:
        block = read_block_bytes(facts)
        for r in range(args.repeats):
            print(f"  repeat {r + 1} of {args.repeats}", file=sys.stderr)
            ours.append(ours_once(sizes, path, block))
            if have_fio:
                fio.append(fio_once(path, file_bytes, sizes, sorted(ours[-1]["random"]), args.runtime))
    for line in table(ours, fio):
        print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.drive_bench", description=__doc__.splitlines()[0])
    p.add_argument("--ssd-path", required=True, help="a folder on the drive to measure")
    p.add_argument("--ssd-size-gib", type=float, default=None, help="the test file's size (default 2, 1 --quick)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--runtime", type=float, default=3.0, help="seconds of each fio job")
    p.add_argument("--quick", action="store_true", help="calibrate's quick sizes")
    return run_command(run_bench, p.parse_args(argv), prog="drive bench")


if __name__ == "__main__":
    sys.exit(main())
