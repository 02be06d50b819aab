"""`engram-sim plan-server`: per placement, the deployment of a whole server that keeps Engram's cost lowest."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from cli.args import CliError, add_executor_options, add_set_option, choices, floats, with_sets
from cli.plan import BASELINE_NAMES, _ints, percentage
from profiles import load_profile, server_topology
from tools.executor import check_executor
from tools.server_plan import ServerPlan, plan_server
from vocab.config import load_config
from vocab.errors import UserError
from vocab.files import check_writable_dir, staged_dir
from vocab.placements import ENGRAM_PLACEMENTS, SSD
from vocab.tables import write_parquet

HEADER = ["TP x replicas", "Table (GiB)", "Placement", "Best deployment", "Overhead", "Replicated", "One GPU", "Fits",
          "Busiest pipe", "Why not within budget"]


def _deployment(r) -> str:
    """The option as a person would say it."""
    parts = ["replicated" if r.table == "replicate" else f"sharded over the {r.shard_over}"]
    if r.host_copies != "-":
        parts.append("a host copy per NUMA node" if r.host_copies == "per_numa" else "one interleaved host copy")
    parts.append("threads on the GPU's node" if r.gather_numa == "local" else "threads anywhere")
    if r.gather_threads:
        parts.append(f"{r.gather_threads} gather threads")
    return ", ".join(parts)


def _pct(value: float) -> str:
    return "does not fit" if math.isnan(value) else f"{value:.2%}"


def _rows(answers: pd.DataFrame) -> list[list[str]]:
    return [[f"{r.tensor_parallel} x {r.replicas}", f"{r.table_gib:,.4g}", r.placement, _deployment(r),
             f"{r.overhead:.2%}", _pct(r.simplest_overhead), f"{r.single_gpu_overhead:.2%}", "yes" if r.fits else "no",
             f"{r.busiest_pipe} ({r.busiest_pipe_full:.0%} full)", r.reason or "-"]
            for r in answers.itertuples()]


def _changes(result: ServerPlan) -> list[str]:
    """Where the simplest server deployment costs more than a tenth of a point more or less than one GPU alone, and
    what the best deployment makes of it."""
    lines = []
    for r in result.answers.itertuples():
        if math.isnan(r.simplest_overhead):
            lines.append(f"TP {r.tensor_parallel}, {r.table_gib:,.4g} GiB, {r.placement}: replicated does not fit; "
                         f"{_deployment(r)}: {r.overhead:.2%}")
            continue
        delta = r.simplest_overhead - r.single_gpu_overhead
        if abs(delta) >= 0.001:
            fix = ("" if r.overhead >= r.simplest_overhead - 1e-4
                   else f"; {_deployment(r)}: {r.overhead:.2%}")
            lines.append(f"TP {r.tensor_parallel}, {r.table_gib:,.4g} GiB, {r.placement}: replicated costs "
                         f"{r.simplest_overhead:.2%} on the server against {r.single_gpu_overhead:.2%} on one GPU "
                         f"({delta:+.2%}){fix}")
    return lines or ["Replicated on the server costs what one GPU alone would (within a tenth of a point)."]


def format_server_plan(result: ServerPlan) -> str:
    m = result.meta
    body = [HEADER, ["-" * len(h) for h in HEADER], *_rows(result.answers)]
    widths = [max(len(r[i]) for r in body) for i in range(len(HEADER))]
    table = ["   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in body]
    within = int(result.options["within_budget"].sum())
    notes = [f"Overhead: server throughput lost against {BASELINE_NAMES[m['baseline']]} on the same deployment, by "
             f"the DES ({m['steps']} steps each). Replicated: the simplest deployment (a whole table per GPU, a host "
             f"copy per NUMA node, threads on the GPU's node). One GPU: the same placement on GPU 0 alone, its NUMA "
             f"node's host to itself.",
             f"{len(result.options)} deployments simulated ({m['simulations']} simulations with the baselines), "
             f"{within} within {m['max_overhead']:.1%}; options.csv lists them all.",
             *_changes(result),
             f"Profile {m['profile']}: {m['provenance']}."]
    title = f"engram-sim plan-server: {m['config']} on {m['gpus']} GPUs of {m['profile']}, ran {m['elapsed_s']:.1f} s"
    return "\n".join([title, "", *table, "", *notes])


def _profile(args, cfg):
    try:
        return load_profile(args.profile or cfg.profile)
    except UserError as e:
        raise CliError("--profile", e.problem, e.fix) from None


def cmd_plan_server(args) -> int:
    check_writable_dir(args.out, "--out")
    check_executor(args.executor, args.address)
    cfg = with_sets(load_config(args.config), args.sets)
    if cfg.workload.phase == "serve":
        raise CliError("workload.phase", "a server is planned in decode or prefill", "use --phase decode or prefill")
    if args.phase:
        cfg = cfg.with_phase(args.phase)
    profile = _profile(args, cfg)
    gpus = server_topology(profile).gpus
    if args.gpus is not None and not 1 <= args.gpus <= gpus:
        raise CliError("--gpus", f"{args.gpus} is not within 1..{gpus} ({profile.name}'s GPUs)",
                       f"use at most {gpus}, or a server profile such as dgx-h100")
    gpus = args.gpus or gpus
    tps = _ints("--tensor-parallel", args.tensor_parallel, "1,8")
    for tp in tps:
        if gpus % tp:
            raise CliError("--tensor-parallel", f"{tp} does not divide --gpus {gpus}", "use divisors of the GPUs")
    placements = choices("--placements", args.placements, ENGRAM_PLACEMENTS)
    if SSD in placements and profile.ssd is None:
        raise CliError("--placements", f"ssd needs a drive and {profile.name} has no [ssd] section", "drop ssd")
    sizes = floats("--table-gib", args.table_gib) if args.table_gib else [cfg.engram.total_table_bytes / 2**30]
    threads = _ints("--gather-threads", args.gather_threads, "4,8,14") if args.gather_threads else []
    if args.profile:
        cfg = cfg.with_profile(args.profile)
    result = plan_server(cfg, profile,
                         placements=placements, table_gib=sizes, tensor_parallel=tps, gpus=gpus,
                         gather_threads=threads, max_overhead=args.max_overhead, baseline=args.baseline,
                         steps=args.steps, jobs=args.jobs or 1, executor=args.executor, address=args.address,
                         progress=not args.quiet)
    print(format_server_plan(result))
    out = Path(args.out)
    with staged_dir(out) as tmp:
        result.answers.to_csv(tmp / "plan-server.csv", index=False)
        write_parquet(result.answers, tmp / "plan-server.parquet", result.meta)
        result.options.to_csv(tmp / "options.csv", index=False)
    print(f"\nwrote {out / 'plan-server.csv'}, {out / 'plan-server.parquet'} and {out / 'options.csv'}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("plan-server", help="per placement, the best deployment of a whole server: replicate or "
                       "shard the table, NUMA placement of host copies and threads, gather threads per GPU")
    p.add_argument("config", help="a config TOML or preset name (see `engram-sim presets`)")
    p.add_argument("--profile", help="a server profile (default: the config's), e.g. dgx-h100")
    p.add_argument("--gpus", type=int, help="GPUs of the server to use (default: all)")
    p.add_argument("--tensor-parallel", default="1", help="tensor-parallel widths, comma-separated (default 1)")
    p.add_argument("--placements", default="host_dma,host_uva", help="comma-separated (default host_dma,host_uva)")
    p.add_argument("--table-gib", help="table sizes in GiB, comma-separated (default: the config's)")
    p.add_argument("--gather-threads", help="gather threads per GPU to try, comma-separated (default: the "
                   "config's placement.gather_threads)")
    p.add_argument("--phase", choices=["decode", "prefill"])
    p.add_argument("--max-overhead", default="3%", type=percentage, help="the budget, e.g. 3%% (default)")
    p.add_argument("--baseline", choices=sorted(BASELINE_NAMES), default="none",
                   help="overhead against no Engram (default, the paper's) or the table in HBM")
    p.add_argument("--steps", type=int, help="DES steps per simulation (default: the config's)")
    p.add_argument("--jobs", type=int, default=None, help="worker processes (default 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_set_option(p)
    add_executor_options(p, resume=False)
    p.add_argument("--out", default="out/plan-server", help="output folder (plan-server.csv, .parquet, "
                   "options.csv)")
    p.set_defaults(func=cmd_plan_server)
