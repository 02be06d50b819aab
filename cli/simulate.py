"""Commands that predict: simulate, sweep, demo, bench, and the listings of presets and profiles."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from cli.args import add_run_options, add_sweep_options, check_estimate, choices, floats, load_run, one_gpu_only
from profiles import load_profile, shipped_names
from reports.charts import hidden_summary, sweep_sections
from reports.html import write_report
from reports.trace import write_chrome_trace
from sim.analytic import estimate
from sim.engine import plan_steps, trace_for
from sim.predict import predict, throughput
from sim.server import simulate_server
from sim.topology import Topology
from tools.bench import bench_serving, bench_simulator
from tools.executor import check_executor, remove_shards, shard_paths
from tools.sweep import sweep
from vocab.config import load_config, preset_names
from vocab.files import check_distinct, check_writable_dir, check_writable_file, staged_dir, staged_files
from vocab.placements import ENGRAM_PLACEMENTS, NONE, PLACEMENTS
from vocab.records import overhead, write_record
from vocab.tables import OVERHEAD_BASELINES, PHASES, write_parquet
from vocab.units import GiB

DEMO_CONFIG = "engram-27b"
BENCH_CONFIG = "engram-27b"
DEMO_TABLE_GIB = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
SHARDS = "shards"  # OUT/shards/: one Parquet file per finished point, kept until sweep.csv and the rest land


def _print_summary(title: str, summary: dict) -> None:
    print(title)
    for key, value in summary.items():
        if isinstance(value, float):
            value = f"{value:.6g}"
        print(f"  {key:22s} {value}")


def _checked_outputs(args) -> dict[str, str]:
    """--out and --trace, checked before any work: both writable and not one file."""
    outputs = {flag: path for flag, path in (("--out", args.out), ("--trace", args.trace)) if path is not None}
    for flag, path in outputs.items():
        check_writable_file(path, flag)
    check_distinct(outputs)
    return outputs


def _write_outputs(outputs: dict, record, timelines: dict) -> None:
    """The record (--out) and the trace (--trace) land together or not at all."""
    with staged_files(*outputs.values()) as tmps:
        staged = dict(zip(outputs, tmps))
        if "--out" in staged:
            write_record(record, staged["--out"])
        if "--trace" in staged:
            write_chrome_trace(timelines, staged["--trace"])
    for path in outputs.values():
        print(f"wrote {path}")


def _table_words(cfg) -> str:
    return "no Engram" if cfg.placement.kind == NONE else f"{cfg.engram.total_table_bytes / GiB:.2f} GiB table"


def cmd_simulate_server(args, cfg, profile, outputs: dict) -> int:
    """A deployment over several GPUs of a server profile: the server's figures, then its pipes."""
    d = cfg.deployment
    t0 = time.perf_counter()
    result = simulate_server(cfg, profile, record_events=bool(args.trace), baselines=True)
    wall = time.perf_counter() - t0
    host = "" if cfg.placement.kind in (NONE, "hbm") else (f", host copies {d.host_copies}, gather threads "
                                                          f"{d.gather_numa}")
    _print_summary(f"{cfg.name}: {cfg.placement.kind}, {cfg.workload.phase}, {_table_words(cfg)}, profile "
                   f"{profile.name}: {d.gpus} GPU(s), {d.replicas} replica(s) x tensor parallel "
                   f"{d.tensor_parallel}{host}", result.summary)
    used = result.pipes[result.pipes["bytes"] > 0].sort_values(["full", "utilisation", "pipe"],
                                                                ascending=[False, False, True])
    print(f"  {'pipe':22s} {'GB/s':>8s} {'MB/step':>12s} {'mean use':>9s} {'time full':>9s}")
    for row in used.itertuples():
        print(f"  {row.pipe:22s} {row.capacity_gbps:8.1f} {row.bytes_per_step / 1e6:12.3f} {row.utilisation:9.2%} "
              f"{row.full:9.2%}")
    for row in result.cores.itertuples():
        print(f"  {row.pool:22s} {row.cores:5.0f} cores {row.core_seconds / result.summary['steps'] * 1e6:9.0f} "
              f"core-us/step {row.utilisation:7.2%} {row.full:9.2%}")
    print(f"  (simulated {result.summary['steps']} steps on {d.gpus} GPU(s), {result.sim_events} events in "
          f"{wall:.2f} s)")
    _write_outputs(outputs, result.to_record(), {f"gpu {i}": r.events for i, r in enumerate(result.gpus)})
    return 0


def cmd_simulate(args) -> int:
    outputs = _checked_outputs(args)
    cfg, profile = load_run(args)
    if cfg.deployment.gpus > 1 or (profile.server is not None and cfg.workload.phase != "serve"):
        return cmd_simulate_server(args, cfg, profile, outputs)
    if profile.server is not None:  # one GPU of a server serving requests: its NUMA node is its host
        profile = Topology(profile, cfg.deployment).gpu_view(0)
    t0 = time.perf_counter()
    result = predict(cfg, profile, record_events=bool(args.trace))
    wall = time.perf_counter() - t0
    summary = dict(result.serving if result.serving is not None else result.summary)
    # Throughput lost against the same run with the table in HBM (capacity aside) and without Engram.
    for name, kind in OVERHEAD_BASELINES.items():
        base = result if kind == cfg.placement.kind else predict(cfg.with_placement(kind), profile,
                                                                   check_capacity=False)
        summary[name] = overhead(throughput(result), throughput(base))
    _print_summary(f"{cfg.name}: {cfg.placement.kind}, {cfg.workload.phase}, {_table_words(cfg)}, profile "
                   f"{profile.name}", summary)
    if args.analytic and result.serving is None:
        est = estimate(cfg, profile, plan_steps(cfg, profile, trace_for(cfg)))
        _print_summary("closed-form steady state", est)
    print(f"  (simulated {result.summary['steps']} steps, {result.sim_events} events in {wall:.2f} s)")
    _write_outputs(outputs, result.to_record(), {"predicted": result.events})
    return 0


def _run_sweep(args, cfg, profile, sizes, placements, phases) -> pd.DataFrame:
    """The sweep on --executor, its finished points kept in OUT/shards/ (and reused with --resume) until the
    outputs land: an interrupted or failed run says how many it kept."""
    shards = Path(args.out) / SHARDS
    try:
        df = sweep(cfg, sizes, placements, phases, profile=profile, steps=args.steps, threshold=args.threshold,
                   jobs=args.jobs, progress=not args.quiet, executor=args.executor, address=args.address,
                   shard_dir=shards, resume=args.resume)
    except BaseException:
        if kept := len(shard_paths(shards)):
            print(f"kept {kept} finished point(s) in {shards}; rerun with --resume to skip them", file=sys.stderr)
        raise
    if df.attrs["resumed_points"]:
        print(f"resumed {df.attrs['resumed_points']} of {df.attrs['points']} points from {shards}")
    return df


def _write_sweep_outputs(df: pd.DataFrame, out: Path, title: str, threshold: float, cfg, profile) -> None:
    """sweep.csv, sweep.parquet (the run's facts in its metadata) and the report land together; then the
    shards go."""
    facts = {"config": cfg.name, "profile": profile.name, "profile_provenance": asdict(profile.provenance),
             "steps": int(df["steps"].max()) if len(df) else None, "threshold": threshold, "title": title}
    with staged_dir(out) as tmp:
        df.to_csv(tmp / "sweep.csv", index=False)
        write_parquet(df, tmp / "sweep.parquet", facts)
        write_report(tmp, title, sweep_sections(df, threshold))
    remove_shards(out / SHARDS)


def _verdict(df: pd.DataFrame, row) -> str:
    """One placement and phase: up to which size the fetch stays hidden, and beyond which size it does not fit."""
    g = df[(df.placement == row.placement) & (df.phase == row.phase)]
    fits = g["fits"].astype(bool) if "fits" in g else pd.Series(True, index=g.index)
    if row.largest_fitting_gib is None:
        return f"does not fit at any size swept (at {row.first_unfit_gib:,.3g} GiB: {row.unfit_reason})"
    if row.first_unhidden_gib is None:
        upto = ("at every size swept" if row.first_unfit_gib is None else "at every size that fits")
        asked = g.loc[fits, "table_gib_asked" if "table_gib_asked" in g else "table_gib"].max()
        hidden = (f"hidden {upto} (up to {asked:,.4g} GiB); its fetch uses at most "
                  f"{g.loc[fits, 'window_use'].max():.0%} of the time before its rows are needed")
    elif row.largest_hidden_gib is None:
        hidden = f"not hidden even at {row.first_unhidden_gib:,.3g} GiB"
    else:
        hidden = (f"hidden up to {row.largest_hidden_gib:,.3g} GiB, "
                  f"stops being hidden at {row.first_unhidden_gib:,.3g} GiB")
    if row.first_unfit_gib is None:
        return hidden
    return f"{hidden};\n{'':22s}{_unfit(row)}"


def _unfit(row) -> str:
    return (f"does not fit beyond {row.largest_fitting_gib or 0:,.3g} GiB (at {row.first_unfit_gib:,.3g} GiB: "
            f"{row.unfit_reason.removeprefix('does not fit: ')})")


def _ssd_tier(df: pd.DataFrame, phase: str, threshold: float, drive: str, reads_in_flight: int) -> str | None:
    """The ssd placement beyond host memory (the sizes host_dma cannot hold): up to which size its fetch stays
    hidden with its DRAM cache, and where the rows come from. None when no swept size is beyond host memory."""
    host = df[(df.placement == "host_dma") & (df.phase == phase) & ~df["fits_host"].astype(bool)]
    g = df[(df.placement == "ssd") & (df.phase == phase)].sort_values("table_bytes")
    if host.empty or g.empty:
        return None
    beyond = g[g["table_bytes"] >= host["table_bytes"].min()]
    fits = beyond[beyond["fits"].astype(bool)]
    if fits.empty:
        return f"beyond host memory, does not fit: {beyond['capacity'].iloc[0].removeprefix('does not fit: ')}"
    cache = f"a {fits['dram_cache_gib'].iloc[0]:,.3g} GiB DRAM cache and {reads_in_flight} reads in flight"
    over = fits["overhead_vs_hbm"] > threshold
    first = fits[over].iloc[0] if over.any() else None
    hidden = fits[~over & (fits["table_bytes"] < (first.table_bytes if first is not None else float("inf")))]
    if first is None:
        verdict = f"hidden at every size beyond host memory swept (up to {fits['table_gib_asked'].max():,.4g} GiB)"
    elif hidden.empty:
        verdict = (f"not hidden at {first.table_gib_asked:,.4g} GiB (overhead {first.overhead_vs_hbm:.0%}: the drive "
                   f"serves {first.rows_drive_per_step / first.rows_per_step:.0%} of the rows, "
                   f"{first.drive_reads_per_step:,.0f} reads a step)")
    else:
        verdict = (f"hidden up to {hidden['table_gib_asked'].max():,.4g} GiB, not at {first.table_gib_asked:,.4g} GiB "
                   f"(overhead {first.overhead_vs_hbm:.0%})")
    lower = "" if fits["cache_filled"].astype(bool).all() else (
        "; the cache did not fill in its replay, so its hit rate (and this verdict) is pessimistic")
    return f"beyond host memory, {verdict},\n{'':22s}with {cache} on this drive ({drive}){lower}"


def _print_sweep(df: pd.DataFrame, threshold: float, drive: str = "", reads_in_flight: int = 1) -> None:
    view = df[["phase", "placement", "table_gib_asked", "tokens_per_s", "step_time_s", "exposed_stall_s",
               "overlap_fraction", "window_use", "overhead_vs_hbm"]].copy()
    # Where the configuration does not fit: which memory ("HBM" or "host"); the CSV's capacity column says by how much.
    view["fits"] = ["yes" if ok else ("no: HBM" if not hbm else "no: host" if not host else "no: drive")
                    for ok, hbm, host in zip(df["fits"], df["fits_hbm"], df["fits_host"])]
    # The size asked for, as given (the real table, a little larger for its prime row counts, is in the CSV).
    view.insert(2, "table_gib", view.pop("table_gib_asked").map("{:g}".format))
    view["step_ms"] = view.pop("step_time_s") * 1e3
    view["stall_us"] = view.pop("exposed_stall_s") * 1e6
    view["overhead_%"] = view.pop("overhead_vs_hbm") * 100
    view["vs_none_%"] = df["overhead_vs_none"] * 100  # against the backbone without Engram (the paper's baseline)
    if (df["rows_drive_per_step"] > 0).any():  # the share of rows read from the drive (ssd)
        view["drive_%"] = 100 * df["rows_drive_per_step"] / df["rows_per_step"].where(df["rows_per_step"] > 0)
    with pd.option_context("display.max_rows", 500, "display.width", 160, "display.float_format", "{:,.3f}".format):
        print(view.to_string(index=False))
    print()
    print(f"Hidden = throughput within {threshold:.1%} of the same run with the table in HBM (capacity aside), "
          f"where the whole configuration fits the machine's HBM, host memory and drive:")
    for row in hidden_summary(df, threshold).itertuples():
        if row.placement == "hbm":
            if row.first_unfit_gib is not None:
                print(f"  {row.phase:8s} {'hbm':10s} the baseline; {_unfit(row)}")
            continue
        tier = _ssd_tier(df, row.phase, threshold, drive, reads_in_flight) if row.placement == "ssd" else None
        # ssd: its verdict over every size swept, then what it does where the host cannot hold the table.
        answer = _verdict(df, row) + (f";\n{'':22s}{tier}" if tier else "")
        print(f"  {row.phase:8s} {row.placement:10s} {answer}")
    costs = df[(df.placement == "hbm") & df["fits"].astype(bool)].groupby("phase")["overhead_vs_none"].max()
    if len(costs):
        print("Against no Engram at all (overhead_% is against the table in HBM; vs_none_% against the backbone "
              "alone): the table in HBM costs " + ", ".join(f"{v:.1%} in {ph}" for ph, v in costs.items())
              + " where it fits.")


def _drive(cfg, profile) -> tuple[str, int]:
    """The drive an ssd verdict names, and the reads the placement keeps in flight on it."""
    return (profile.ssd.name if profile.ssd else "", cfg.placement.ssd_threads * cfg.placement.ssd_queue_depth)


def cmd_sweep(args) -> int:
    check_writable_dir(args.out, "--out")
    check_executor(args.executor, args.address)
    cfg, profile = load_run(args)
    one_gpu_only(cfg, "sweep")
    sizes = floats("--table-gib", args.table_gib)
    placements = choices("--placements", args.placements, ENGRAM_PLACEMENTS) if args.placements else None
    phases = choices("--phases", args.phases, PHASES) if args.phases else None
    df = _run_sweep(args, cfg, profile, sizes, placements, phases)
    _print_sweep(df, args.threshold, *_drive(cfg, profile))
    _write_sweep_outputs(df, Path(args.out), f"engram-sim sweep: {cfg.name} on {profile.name}", args.threshold,
                         cfg, profile)
    out = Path(args.out)
    print(f"\nwrote {out / 'sweep.csv'}, {out / 'sweep.parquet'} and {out / 'report.html'}")
    return 0


def cmd_demo(args) -> int:
    args.config = DEMO_CONFIG
    check_writable_dir(args.out, "--out")
    check_executor(args.executor, args.address)
    cfg, profile = load_run(args)
    print(f"Demo: {cfg.name} ({cfg.backbone.layers} layers, Engram at layers {cfg.engram.layer_ids}, "
          f"{cfg.engram.row_bytes} B rows), {cfg.workload.sequences} sequences, profile {profile.name} "
          f"({profile.provenance.source}; which figures are measured, seeded or assumed: engram-sim profiles "
          f"{profile.name}); tables 1 GiB .. 1 TiB, {cfg.workload.steps} steps per point.")
    df = _run_sweep(args, cfg, profile, DEMO_TABLE_GIB, None, ["decode", "prefill"])
    _print_sweep(df, args.threshold, *_drive(cfg, profile))
    _write_sweep_outputs(df, Path(args.out), f"engram-sim demo: {cfg.name} on {profile.name}", args.threshold,
                         cfg, profile)
    out = Path(args.out)
    print(f"\nwrote {out / 'sweep.csv'}, {out / 'sweep.parquet'}, {out / 'report.html'} and PNG charts")
    return 0


def cmd_profiles(args) -> int:
    if args.name:
        p = load_profile(args.name)
        print(f"{p.name}: {p.description}")
        print(f"  source: {p.provenance.source}, {p.provenance.machine}, {p.provenance.date}")
        if p.provenance.notes:
            print(f"  notes: {p.provenance.notes}")
        for section in ("gpu", "link", "uva", "host", "server"):
            if getattr(p, section) is None:
                continue
            d = getattr(p, section).__dict__
            flat = {k: v for k, v in d.items() if not isinstance(v, list)}
            print(f"  [{section}] " + ", ".join(f"{k}={v}" for k, v in flat.items()))
        if p.server is not None:
            for k, n in enumerate(p.server.numa):
                print(f"    NUMA node {k}: {n.cores} cores, {n.dram_gbps:g} GB/s, {n.memory_gib:g} GiB, GPUs {n.gpus}")
            for j, sw in enumerate(p.server.switches):
                print(f"    PCIe switch {j}: GPUs {sw.gpus}, uplink {sw.uplink_gbps:g} GB/s")
        return 0
    for name in shipped_names():
        p = load_profile(name)
        print(f"{name:22s} {p.provenance.source:9s} {p.description}")
    return 0


def cmd_presets(args) -> int:
    for name in preset_names():
        c = load_config(name)
        print(f"{name:16s} {c.backbone.layers:3d} layers, hidden {c.backbone.hidden_size}, Engram at "
              f"{c.engram.layer_ids}, table {c.engram.total_table_bytes / GiB:.2f} GiB, "
              f"{c.engram.row_bytes} B rows")
    return 0


def cmd_bench(args) -> int:
    check_estimate(load_config(BENCH_CONFIG).with_steps(args.steps), None)
    bench_simulator(steps=args.steps, jobs=args.jobs, config=BENCH_CONFIG)
    bench_serving()
    return 0


def register(sub) -> None:
    p = sub.add_parser("simulate", help="simulate one configuration")
    p.add_argument("config", help="a config TOML or preset name (see `engram-sim presets`)")
    add_run_options(p, PLACEMENTS)
    p.add_argument("--out", help="write the run record (JSON) here")
    p.add_argument("--trace", help="write a Chrome trace-event JSON of the timeline here")
    p.add_argument("--analytic", action="store_true", help="also print the closed-form estimate")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("sweep", help="sweep table sizes across placements and phases")
    p.add_argument("config")
    add_run_options(p, PLACEMENTS, one_point=False)
    p.add_argument("--table-gib", required=True, help="comma-separated total table sizes in GiB")
    p.add_argument("--placements", help="comma-separated (default: all)")
    p.add_argument("--phases", help="comma-separated (default: the config's phase)")
    p.add_argument("--out", required=True, help="output folder (sweep.csv, sweep.parquet, report.html, PNGs)")
    add_sweep_options(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("demo", help="Engram-27B on H100: tables 1 GiB..1 TiB, all placements, both phases")
    p.add_argument("--profile", default=None)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--out", default="out/demo")
    add_sweep_options(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("profiles", help="list hardware profiles, or show one")
    p.add_argument("name", nargs="?")
    p.set_defaults(func=cmd_profiles)

    p = sub.add_parser("presets", help="list shipped configurations")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("bench", help="benchmark the simulator's own speed")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--jobs", type=int, default=None)
    p.set_defaults(func=cmd_bench)
