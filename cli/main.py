"""engram-sim: the command line.

Bad input of any kind ends in one line on stderr naming the field and the
fix, exit code 2, and no output files touched.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from vocab.errors import UserError
from vocab.files import staged_dir

DEMO_TABLE_GIB = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]


class CliError(UserError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, no usage dump
        self.exit(2, f"engram-sim: error: {message} (see: {self.prog} --help)\n")


def _floats(field: str, text: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise CliError(field, f"{text!r} is not a list of numbers", "use e.g. --table-gib 1,4,16") from None
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise CliError(field, f"{text!r} needs positive sizes", "use e.g. --table-gib 1,4,16")
    return values


def _choices(field: str, text: str, allowed) -> list[str]:
    values = [v for v in text.replace(",", " ").split() if v]
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise CliError(field, f"unknown value(s) {bad or text!r}", f"use some of: {', '.join(allowed)}")
    return values


def _load(args):
    from profiles import load_profile
    from vocab.config import load_config

    cfg = load_config(args.config)
    if getattr(args, "placement", None):
        cfg = cfg.with_placement(args.placement)
    if getattr(args, "phase", None):
        cfg = cfg.with_phase(args.phase)
    if getattr(args, "table_gib_one", None):
        cfg = cfg.with_table_gib(args.table_gib_one)
    if getattr(args, "steps", None):
        cfg = cfg.with_steps(args.steps)
    if getattr(args, "profile", None):
        cfg = cfg.with_profile(args.profile)
    return cfg, load_profile(cfg.profile)


def _print_summary(title: str, summary: dict) -> None:
    print(title)
    for key, value in summary.items():
        if isinstance(value, float):
            value = f"{value:.6g}"
        print(f"  {key:22s} {value}")


def cmd_simulate(args) -> int:
    from sim.analytic import estimate
    from sim.engine import plan_steps, simulate

    cfg, profile = _load(args)
    t0 = time.perf_counter()
    result = simulate(cfg, profile, record_events=bool(args.trace))
    wall = time.perf_counter() - t0
    _print_summary(f"{cfg.name}: {cfg.placement.kind}, {cfg.workload.phase}, "
                   f"{cfg.engram.total_table_bytes / (1 << 30):.2f} GiB table, profile {profile.name}", result.summary)
    if args.analytic:
        from workloads.trace import build_trace

        est = estimate(cfg, profile, plan_steps(cfg, profile, build_trace(cfg)))
        _print_summary("closed-form steady state", est)
    print(f"  (simulated {result.summary['steps']} steps, {result.sim_events} events in {wall:.2f} s)")
    if args.out:
        from vocab.records import write_record

        write_record(result.to_record(), args.out)
        print(f"wrote {args.out}")
    if args.trace:
        from reports.trace import write_chrome_trace

        write_chrome_trace({"predicted": result.events}, args.trace)
        print(f"wrote {args.trace}")
    return 0


def _write_sweep_outputs(df, out: Path, title: str, threshold: float) -> None:
    from reports.charts import sweep_sections
    from reports.html import write_report

    with staged_dir(out) as tmp:
        df.to_csv(tmp / "sweep.csv", index=False)
        write_report(tmp, title, sweep_sections(df, threshold))


def _print_sweep(df, threshold: float) -> None:
    import pandas as pd

    from reports.charts import hidden_summary

    view = df[["phase", "placement", "table_gib", "tokens_per_s", "step_time_s", "exposed_stall_s",
               "overlap_fraction", "window_use", "overhead_vs_hbm", "fits_hbm", "fits_host"]].copy()
    view["step_ms"] = view.pop("step_time_s") * 1e3
    view["stall_us"] = view.pop("exposed_stall_s") * 1e6
    view["overhead_%"] = view.pop("overhead_vs_hbm") * 100
    with pd.option_context("display.max_rows", 500, "display.width", 160, "display.float_format", "{:,.3f}".format):
        print(view.to_string(index=False))
    print()
    print(f"Hidden = throughput within {threshold:.1%} of the same run with the table in HBM:")
    largest = df["table_gib"].max()
    for row in hidden_summary(df, threshold).itertuples():
        if row.placement == "hbm":
            continue
        if row.first_unhidden_gib is None:
            g = df[(df.placement == row.placement) & (df.phase == row.phase)]
            verdict = (f"hidden at every size swept (up to {largest:,.0f} GiB); its fetch uses at most "
                       f"{g['window_use'].max():.0%} of the time before its rows are needed")
        elif row.largest_hidden_gib is None:
            verdict = f"not hidden even at {row.first_unhidden_gib:,.3g} GiB"
        else:
            verdict = (f"hidden up to {row.largest_hidden_gib:,.3g} GiB, "
                       f"stops being hidden at {row.first_unhidden_gib:,.3g} GiB")
        print(f"  {row.phase:8s} {row.placement:10s} {verdict}")


def cmd_sweep(args) -> int:
    from tools.sweep import sweep
    from vocab.config import PLACEMENTS

    cfg, profile = _load(args)
    sizes = _floats("--table-gib", args.table_gib)
    placements = _choices("--placements", args.placements, PLACEMENTS) if args.placements else None
    phases = _choices("--phases", args.phases, ("prefill", "decode")) if args.phases else None
    df = sweep(cfg, sizes, placements, phases, profile=profile, steps=args.steps, threshold=args.threshold,
               jobs=args.jobs, progress=not args.quiet)
    _print_sweep(df, args.threshold)
    _write_sweep_outputs(df, Path(args.out), f"engram-sim sweep: {cfg.name} on {profile.name}", args.threshold)
    print(f"\nwrote {Path(args.out) / 'sweep.csv'} and {Path(args.out) / 'report.html'}")
    return 0


def cmd_demo(args) -> int:
    from tools.sweep import sweep

    args.config = "engram-27b"
    cfg, profile = _load(args)
    print(f"Demo: {cfg.name} ({cfg.backbone.layers} layers, Engram at layers {cfg.engram.layer_ids}, "
          f"{cfg.engram.row_bytes} B rows), {cfg.workload.sequences} sequences, profile {profile.name} "
          f"({profile.provenance.source}); tables 1 GiB .. 1 TiB, {cfg.workload.steps} steps per point.")
    df = sweep(cfg, DEMO_TABLE_GIB, None, ["decode", "prefill"], profile=profile, steps=args.steps,
               threshold=args.threshold, jobs=args.jobs, progress=not args.quiet)
    _print_sweep(df, args.threshold)
    _write_sweep_outputs(df, Path(args.out), f"engram-sim demo: {cfg.name} on {profile.name}", args.threshold)
    print(f"\nwrote {Path(args.out) / 'sweep.csv'}, {Path(args.out) / 'report.html'} and PNG charts")
    return 0


def cmd_profiles(args) -> int:
    from profiles import load_profile, shipped_names

    if args.name:
        p = load_profile(args.name)
        print(f"{p.name}: {p.description}")
        print(f"  source: {p.provenance.source}, {p.provenance.machine}, {p.provenance.date}")
        for section in ("gpu", "link", "uva", "host"):
            d = getattr(p, section).__dict__
            flat = {k: v for k, v in d.items() if not isinstance(v, list)}
            print(f"  [{section}] " + ", ".join(f"{k}={v}" for k, v in flat.items()))
        return 0
    for name in shipped_names():
        p = load_profile(name)
        print(f"{name:22s} {p.provenance.source:9s} {p.description}")
    return 0


def cmd_presets(args) -> int:
    from vocab.config import load_config, preset_names

    for name in preset_names():
        c = load_config(name)
        print(f"{name:16s} {c.backbone.layers:3d} layers, hidden {c.backbone.hidden_size}, Engram at "
              f"{c.engram.layer_ids}, table {c.engram.total_table_bytes / (1 << 30):.2f} GiB, "
              f"{c.engram.row_bytes} B rows")
    return 0


def cmd_run(args) -> int:
    from real_runs.runner import main_run

    return main_run(args)


def cmd_bench(args) -> int:
    from tools.bench import bench_simulator

    bench_simulator(steps=args.steps, jobs=args.jobs)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="engram-sim", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def common(p, table_one=True):
        p.add_argument("--profile", help="hardware profile name or TOML path (default: the config's)")
        p.add_argument("--steps", type=int, help="steps to simulate (default: the config's)")
        if table_one:
            p.add_argument("--placement", choices=["hbm", "host_dma", "host_uva", "hbm_cache"])
            p.add_argument("--phase", choices=["prefill", "decode"])
            p.add_argument("--table-gib", dest="table_gib_one", type=float, help="total Engram table size")

    p = sub.add_parser("simulate", help="simulate one configuration")
    p.add_argument("config", help="a config TOML or preset name (see `engram-sim presets`)")
    common(p)
    p.add_argument("--out", help="write the run record (JSON) here")
    p.add_argument("--trace", help="write a Chrome trace-event JSON of the timeline here")
    p.add_argument("--analytic", action="store_true", help="also print the closed-form estimate")
    p.set_defaults(func=cmd_simulate)

    def sweep_opts(p):
        p.add_argument("--threshold", type=float, default=0.01,
                       help="overhead versus HBM above which a placement is not hidden (default 0.01)")
        p.add_argument("--jobs", type=int, default=None, help="worker processes (default: CPU count)")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("sweep", help="sweep table sizes across placements and phases")
    p.add_argument("config")
    common(p, table_one=False)
    p.add_argument("--table-gib", required=True, help="comma-separated total table sizes in GiB")
    p.add_argument("--placements", help="comma-separated (default: all)")
    p.add_argument("--phases", help="comma-separated (default: the config's phase)")
    p.add_argument("--out", required=True, help="output folder (sweep.csv, report.html, PNGs)")
    sweep_opts(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("demo", help="Engram-27B on H100: tables 1 GiB..1 TiB, all placements, both phases")
    p.add_argument("--profile", default=None)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--out", default="out/demo")
    sweep_opts(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", help="a real, instrumented Engram-MoE run (GPU; tiny configs also on CPU)")
    p.add_argument("config")
    p.add_argument("--placement", choices=["hbm", "host_dma", "host_uva", "hbm_cache", "none"],
                   help="table placement (none: the backbone without Engram)")
    p.add_argument("--steps", type=int)
    p.add_argument("--out", help="record path (default: out/<config>-<placement>-measured.json)")
    p.add_argument("--device", help="cuda or cpu (default: cuda when present)")
    p.add_argument("--warmup", type=int, default=1, help="steps run before recording (default 1)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("profiles", help="list hardware profiles, or show one")
    p.add_argument("name", nargs="?")
    p.set_defaults(func=cmd_profiles)

    p = sub.add_parser("presets", help="list shipped configurations")
    p.set_defaults(func=cmd_presets)

    from tools.calibrate import register as register_calibrate
    from tools.compare import register as register_compare

    register_calibrate(sub)
    register_compare(sub)

    p = sub.add_parser("bench", help="benchmark the simulator's own speed")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--jobs", type=int, default=None)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("steps", "jobs"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            print(f"engram-sim: error: --{name}: must be >= 1; use a positive integer", file=sys.stderr)
            return 2
    try:
        return args.func(args)
    except UserError as e:
        print(f"engram-sim: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("engram-sim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
