"""`engram-sim plan`: the largest Engram table each placement holds within a throughput budget."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

from cli.args import CliError, add_executor_options, check_estimate, choices, floats, load_run, one_gpu_only
from profiles import load_profile
from reports.html import write_chart
from reports.plan_charts import frontier_chart
from tools.executor import check_executor
from tools.plan import BASELINES, PlanResult, make_plans, plan
from vocab.errors import UserError
from vocab.files import check_writable_dir, staged_dir
from vocab.placements import ENGRAM_PLACEMENTS, SSD
from vocab.tables import write_parquet

BASELINE_NAMES = {"none": "the backbone without Engram", "hbm": "the same table in HBM (capacity aside)"}


def percentage(text: str) -> float:
    """--max-overhead: a percentage such as 3% (a bare number would be ambiguous: 0.03 or 3 %?)."""
    number = text.strip().removesuffix("%").strip()
    try:
        value = float(number) if text.strip().endswith("%") else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not 0 < value < 100:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage between 0 and 100; write it with a "
                                         f"percent sign, e.g. --max-overhead 3%")
    return value / 100


def _ints(flag: str, text: str, example: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise CliError(flag, f"{text!r} is not a list of whole numbers", f"use e.g. {flag} {example}") from None
    if not values:
        raise CliError(flag, "is empty", f"use e.g. {flag} {example}")
    return values


def _profiles(args, default: str) -> list[tuple[str, object]]:
    names = [n for n in (args.profiles or default).replace(",", " ").split() if n]
    out = []
    for name in names:
        try:
            out.append((name, load_profile(name)))
        except UserError as e:
            raise CliError("--profiles", e.problem, e.fix) from None
    return out


def _layer_sets(args, cfg) -> list[list[int]]:
    if not args.layers:
        return [list(cfg.engram.layer_ids)]
    n = cfg.backbone.layers
    layers = _ints("--layers", args.layers, "1,5,15")
    for layer in layers:
        if not 0 <= layer < n:
            raise CliError("--layers", f"{layer} is outside 0..{n - 1} ({cfg.name} has {n} layers)",
                           "use zero-based backbone layer ids, e.g. --layers 1,5,15")
    return [[layer] for layer in layers]


def _batches(args, cfg) -> list[int]:
    if not args.batch:
        return [cfg.workload.sequences]
    batches = _ints("--batch", args.batch, "64,512")
    for b in batches:
        try:
            check_estimate(cfg.with_workload(sequences=b), None)
        except UserError as e:
            raise CliError("--batch", f"{b}: {e.problem}", e.fix) from None
    return batches


def _placements(args, profiles) -> list[str]:
    if not args.placements:
        return list(ENGRAM_PLACEMENTS)
    placements = choices("--placements", args.placements, ENGRAM_PLACEMENTS)
    lacking = [name for name, p in profiles if p.ssd is None]
    if SSD in placements and lacking:
        raise CliError("--placements", f"ssd needs a drive and profile {lacking[0]} has no [ssd] section",
                       "drop ssd, or plan on a profile with a drive")
    return placements


def _gib(value: float) -> str:
    return "none" if not math.isfinite(value) else f"{value:,.1f}"


def _pct(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.1%}"


def _why(size: float, reason: str) -> str:
    if not math.isfinite(size):
        return reason
    return f"{size:,.4g} GiB {reason if reason.startswith('does not fit') else 'over budget: ' + reason}"


def _rows(df: pd.DataFrame, with_profile: bool) -> list[list[str]]:
    rows = []
    for r in df.itertuples():
        des = f"moved from {r.answer_cf_gib:,.4g} GiB" if r.des_changed else "agrees"
        rows.append([r.profile] * with_profile + [
            r.placement, r.mix, r.layers, str(r.batch), _gib(r.table_gib), _pct(r.overhead), _gib(r.hbm_freed_gib),
            _pct(r.link_utilisation), des, _why(r.next_table_gib, r.next_reason)])
    return rows


HEADER = ["Placement", "Cache", "Layers", "Batch", "Table (GiB)", "Overhead", "HBM freed (GiB)", "Link", "DES",
          "The next size: why not"]


def _layer_notes(df: pd.DataFrame) -> list[str]:
    """Where several layers were planned: the shallowest layer that holds each plan's largest table (deeper
    layers have more compute before them to hide a fetch behind, but hold no more beyond it)."""
    found = []
    for key, g in df.groupby(["profile", "batch", "placement", "mix"], sort=False):
        if len(g) < 2 or g["table_gib"].isna().all():
            continue
        best = g["table_gib"].max()
        first = min(g.loc[g["table_gib"] >= best * (1 - 1e-9), "layers"], key=lambda s: int(s.split(",")[0]))
        found.append((f"{key[2]}{'' if key[3] == '-' else ' (' + key[3] + ')'}, batch {key[1]}, {key[0]}", first,
                      best))
    if found and len({layer for _, layer, _ in found}) == 1 and found[0][1] == min(df["layers"], key=int):
        return [f"Every plan holds its largest table already at layer {found[0][1]}, the shallowest planned: "
                f"deeper layers hold no more."]
    return [f"{what}: layer {layer} is the shallowest that holds {best:,.1f} GiB; deeper ones hold no more"
            for what, layer, best in found]


def _best(df: pd.DataFrame) -> str:
    """The headline: the plan with the largest table within the budget."""
    ok = df.dropna(subset=["table_gib"])
    if ok.empty:
        return "No plan holds a table within the budget (the last column says why)."
    b = ok.sort_values(["table_gib", "overhead"], ascending=[False, True]).iloc[0]
    mix = "" if b.mix == "-" else f" ({b.mix})"
    return (f"Largest table within the budget: {b.table_gib:,.1f} GiB on {b.placement}{mix}, layers {b.layers}, "
            f"batch {b.batch}, {b.profile}: {b.overhead:.1%} overhead, frees {b.hbm_freed_gib:,.1f} GiB of HBM.")


def _notes(result: PlanResult) -> list[str]:
    m, df = result.meta, result.plans
    changed = df[df["changed_points"] != ""]
    des = ("the DES changed the closed form's verdict at: " + "; ".join(
        f"{r.placement} {r.mix if r.mix != '-' else ''} {r.changed_points}".replace("  ", " ")
        for r in changed.itertuples()) if len(changed) else
           "the DES agreed with the closed form at every point it checked")
    lines = [_best(df),
             f"Overhead: throughput lost against {BASELINE_NAMES[m['baseline']]}, by the DES ({m['steps']} steps "
             f"per point). Sizes on a log grid, {m['grid']['per_doubling']} per doubling, from "
             f"{m['grid']['min_gib']:g} GiB.",
             "HBM freed: what the same table in HBM would need, less what this placement needs (cache, staging).",
             "Link: the host link's utilisation (bytes over the step time at its peak).",
             f"Searched {m['closed_form_points']} points by the closed form, {m['des_points']} by the DES; {des}."]
    lines += _layer_notes(df)
    lines += [f"Profile {name}: {p['source']}, {p['machine']}, {p['date']}." for name, p in m["profiles"].items()]
    return lines


def format_plan(result: PlanResult) -> str:
    """The plans as a boxed table in the style of TorchRec's planner statistics, with its notes."""
    several = result.plans["profile"].nunique() > 1
    header = ["Profile"] * several + HEADER
    body = [header, ["-" * len(h) for h in header], *_rows(result.plans, several)]
    widths = [max(len(r[i]) for r in body) for i in range(len(header))]
    lines = ["   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in body]
    m = result.meta
    title = (f"--- engram-sim plan: {m['config']} on {', '.join(m['profiles'])}, at most {m['max_overhead']:.1%} "
             f"overhead ---")
    sub = (f"--- {len(result.plans)} plans, {m['closed_form_points'] + m['des_points']} points evaluated, "
           f"ran for {m['elapsed_s']:.1f} s ---")
    notes = _notes(result)
    width = max(len(x) for x in [*lines, *notes, title, sub]) + 4
    inner = [title.center(width - 4), sub.center(width - 4), "-" * (width - 4), *lines, "", *notes]
    return "\n".join(["#" * width, *(f"# {text.ljust(width - 4)} #" for text in inner), "#" * width])


def cmd_plan(args) -> int:
    check_writable_dir(args.out, "--out")
    check_executor(args.executor, args.address)
    cfg, _ = load_run(args)
    one_gpu_only(cfg, "plan")
    if cfg.workload.phase == "serve":
        raise CliError("workload.phase", "the planner steps a steady batch; a serving run is simulated one "
                       "configuration at a time", "use a decode or prefill config")
    profiles = _profiles(args, cfg.profile)
    placements = _placements(args, profiles)
    plans = make_plans(cfg, profiles, placements, _layer_sets(args, cfg), _batches(args, cfg),
                       floats("--cache-gib", args.cache_gib),
                       floats("--dram-cache-gib", args.dram_cache_gib) if args.dram_cache_gib else None)
    result = plan(plans, max_overhead=args.max_overhead, baseline=args.baseline, steps=args.steps,
                  jobs=args.jobs or 1, progress=not args.quiet, executor=args.executor, address=args.address)
    print(format_plan(result))
    out = Path(args.out)
    with staged_dir(out) as tmp:
        result.plans.to_csv(tmp / "plan.csv", index=False)
        write_parquet(result.plans, tmp / "plan.parquet", result.meta)
        result.points.to_csv(tmp / "points.csv", index=False)
        write_chart(frontier_chart(result.points, result.plans, result.meta), tmp / "frontier")
    print(f"\nwrote {out / 'plan.csv'}, {out / 'plan.parquet'}, {out / 'points.csv'} and {out / 'frontier.png'}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("plan", help="the largest Engram table each placement holds within a throughput budget")
    p.add_argument("config", help="a config TOML or preset name (see `engram-sim presets`)")
    p.add_argument("--max-overhead", required=True, type=percentage,
                   help="the throughput budget, as a percentage, e.g. 3%%")
    p.add_argument("--baseline", choices=sorted(BASELINES), default="none",
                   help="overhead against the backbone without Engram (none, the paper's) or the table in HBM")
    p.add_argument("--placements", help=f"comma-separated (default: {', '.join(ENGRAM_PLACEMENTS)}; ssd only on "
                   "profiles with a drive)")
    p.add_argument("--layers", help="comma-separated zero-based Engram layer ids, each a one-layer plan "
                   "(default: the config's layers, as one plan)")
    p.add_argument("--batch", help="comma-separated batch sizes, workload.sequences (default: the config's)")
    p.add_argument("--profiles", help="comma-separated hardware profiles (default: the config's)")
    p.add_argument("--cache-gib", default="8", help="hbm_cache's HBM cache sizes in GiB, comma-separated "
                   "(default 8)")
    p.add_argument("--dram-cache-gib", help="ssd's DRAM cache sizes in GiB (default: half the host's usable "
                   "memory)")
    p.add_argument("--steps", type=int, help="DES steps per point (default: the config's)")
    p.add_argument("--jobs", type=int, default=None, help="worker processes (default 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_executor_options(p, resume=False)
    p.add_argument("--out", default="out/plan", help="output folder (plan.csv, plan.parquet, points.csv, "
                   "frontier.png)")
    p.set_defaults(func=cmd_plan)
