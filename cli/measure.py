"""Commands that measure or check measurements: run, compare, report, calibrate, shared-host."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cli.shared_host import register as register_shared_host
from profiles import load_profile
from real_runs.command import add_run_arguments, cmd_run
from tools.calibrate import register as register_calibrate
from tools.compare import (
    compare_records,
    format_serving,
    format_summary,
    format_table,
    nothing_compared,
    write_outputs,
)
from tools.report import build_report
from tools.shared_host_check import compare_shared_host, is_shared_host_record, read_shared_host, summarise
from vocab.files import check_writable_dir, check_writable_file, staged_dir

RUN_DEFAULT_FOLDER = "out"  # where `run` writes its record without --out (real_runs/runner.py names the file)


def cmd_run_checked(args) -> int:
    """`run`, with its --out checked before the model is built (the default's folder when none is given)."""
    if args.out is not None:
        check_writable_file(args.out, "--out")
    else:
        check_writable_dir(RUN_DEFAULT_FOLDER, "--out")
    return cmd_run(args)


def compare_shared_hosts(paths: list[str], profile_name: str | None, out: Path) -> None:
    """Shared-host records (engram-sim shared-host) against the server DES: one table, printed and written."""
    profile = load_profile(profile_name) if profile_name else None
    tables = []
    for p in paths:
        t = compare_shared_host(read_shared_host(p), profile)
        t.insert(0, "record", Path(p).name)
        tables.append(t)
    df = pd.concat(tables, ignore_index=True)
    print("Shared-host fetch makespan per step (median: all workers start, the last one's rows are in staging), "
          "measured vs predicted by the server DES (tools/shared_host_check.py); the gathers' span beside:")
    shown = ["record", "workers", "gather_threads", "quiet", "measured_ms", "predicted_ms", "error_pct",
             "one_worker_ratio_measured", "one_worker_ratio_predicted", "gather_span_measured_ms",
             "gather_span_predicted_ms"]
    print(df[shown].to_string(index=False, float_format=lambda v: f"{v:,.2f}"))
    for name, part in df.groupby("record", sort=False):  # each record its own figures (a policy, a session)
        s = summarise(part)
        print(f"  {name}: |error| min/median/max {s['abs_error_min_pct']:.1f} / {s['abs_error_median_pct']:.1f} / "
              f"{s['abs_error_max_pct']:.1f} % over {s['points']} points ({s['quiet_points']} measured quiet)")
    with staged_dir(out) as tmp:
        df.to_csv(tmp / "shared-host-compare.csv", index=False)
    print(f"wrote {out / 'shared-host-compare.csv'}")


def cmd_compare(args) -> int:
    check_writable_dir(args.out, "--out")
    shared = [p for p in args.records if is_shared_host_record(p)]
    if shared:
        compare_shared_hosts(shared, args.profile, Path(args.out))
        args.records = [p for p in args.records if p not in shared]
        if not args.records:
            return 0
        print()
    df, summary, timelines, skipped = compare_records(args.records, args.profile, keep_results=bool(args.trace))
    serving = summary.pop("_serving")
    if df.empty and serving.empty:
        raise nothing_compared(skipped)
    runs = summary.pop("_runs", {})
    out = Path(args.out)
    written = write_outputs(out, df, timelines, runs, serving)
    for p, why in skipped:
        print(f"skipped {p}: {why}")
    if not df.empty:
        print(format_table(df))
        print()
        print(format_summary(summary))
    if not serving.empty:
        print(("\n" if not df.empty else "") + "Serving runs, measured vs predicted (sim.serve):")
        print(format_serving(serving))
    for note in dict.fromkeys(n for n in [*df["note"], *serving["note"]] if n):
        print(f"  note: {note}")
    print(f"\nwrote {', '.join(str(out / n) for n in written)}")
    return 0


def cmd_report(args) -> int:
    check_writable_dir(args.out, "--out")
    written = build_report(args.inputs, args.out, timelines=args.timelines, record=args.record,
                           threshold=args.threshold, title=args.title)
    pngs = [n for n in written if n.endswith(".png")]
    print(f"wrote {Path(args.out) / 'report.html'} and {len(pngs)} PNG chart(s): {', '.join(pngs)}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("run", help="a real, instrumented Engram-MoE run (GPU; tiny configs also on CPU)")
    add_run_arguments(p)
    p.set_defaults(func=cmd_run_checked)

    register_calibrate(sub)
    register_shared_host(sub)

    p = sub.add_parser("compare", help="predicted versus measured: simulate what measured records ran")
    p.add_argument("records", nargs="+", metavar="RECORDS", help="measured run records (JSON from `engram-sim run`)")
    p.add_argument("--profile", help="hardware profile for every record (default: the one matching each "
                                     "record's GPU, else the config's)")
    p.add_argument("--out", default="out/compare", help="output folder: compare.csv, compare.parquet, timelines.csv "
                                                        "(default out/compare)")
    p.add_argument("--trace", action="store_true",
                   help="also write <record>.trace.json: predicted and measured timelines (Chrome trace)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("report", help="HTML report + PNGs from a sweep CSV and/or a compare CSV, or from "
                                      "serving run records")
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="SWEEP.csv and/or COMPARE.csv (either order); or serving run records (JSON from "
                        "`engram-sim simulate`), overlaid, e.g. the same workload with placements x, hbm and none")
    p.add_argument("--out", required=True, help="output folder (report.html, PNGs)")
    p.add_argument("--timelines", help="timelines CSV (default: timelines.csv beside the compare CSV)")
    p.add_argument("--record", help="which record's step to draw in the timeline (default: the first "
                                    "non-hbm record)")
    p.add_argument("--threshold", type=float, default=0.01,
                   help="overhead versus HBM above which a placement is not hidden (default 0.01)")
    p.add_argument("--title", help="page title")
    p.set_defaults(func=cmd_report)
