"""What the commands share: argument parsing that fails in one line, and loading a config with overrides."""

from __future__ import annotations

import argparse
import math

from profiles import HardwareProfile, load_profile
from real_runs.instrument import memory_gib
from vocab.config import RunConfig, load_config
from vocab.errors import UserError
from vocab.units import GiB


class CliError(UserError):
    """A bad command-line argument."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, no usage dump
        self.exit(2, f"engram-sim: error: {message} (see: {self.prog} --help)\n")


def floats(field: str, text: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise CliError(field, f"{text!r} is not a list of numbers", "use e.g. --table-gib 1,4,16") from None
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise CliError(field, f"{text!r} needs positive sizes", "use e.g. --table-gib 1,4,16")
    return values


def choices(field: str, text: str, allowed) -> list[str]:
    values = [v for v in text.replace(",", " ").split() if v]
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise CliError(field, f"unknown value(s) {bad or text!r}", f"use some of: {', '.join(allowed)}")
    return values


def load_run(args) -> tuple[RunConfig, HardwareProfile]:
    """The config named by args.config with the command line's overrides, and its hardware profile.

    Every override is checked as the config's own field would be, but named by its flag; a run beyond
    the up-front estimate of memory or time (check_estimate) is refused before any work."""
    cfg = with_sets(load_config(args.config), getattr(args, "sets", None))
    for name in OVERRIDES:
        value = getattr(args, name, None)
        if value is not None:  # not truthiness: --table-gib 0 is an error, not "no override"
            cfg = _flag_edit(cfg, name, value)
    sizes = getattr(args, "table_gib", None)
    if isinstance(sizes, str):  # a sweep's sizes: each point must load, before the first one runs
        for size in floats("--table-gib", sizes):
            _flag_edit(cfg, "table_gib_one", size)
    check_estimate(cfg, getattr(args, "force", None))
    return cfg, load_profile(cfg.profile)


# Command-line overrides of one run: the args attribute, its flag, and the RunConfig edit it makes.
OVERRIDES = {"placement": ("--placement", "with_placement"), "phase": ("--phase", "with_phase"),
             "table_gib_one": ("--table-gib", "with_table_gib"), "steps": ("--steps", "with_steps"),
             "profile": ("--profile", "with_profile")}


def with_sets(cfg: RunConfig, assignments: list[str] | None) -> RunConfig:
    """cfg with each --set KEY=VALUE in order; a bad one is named `--set KEY`."""
    for assignment in assignments or []:
        try:
            cfg = cfg.with_set(assignment)
        except UserError as e:
            raise CliError(f"--set {e.field}", e.problem, e.fix) from None
    return cfg


def add_set_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="sets", action="append", metavar="KEY=VALUE",
                   help="override one config field, validated as the TOML is (repeatable), e.g. "
                        "--set workload.sequences=128 --set placement.uva_ctas=32")


def _flag_edit(cfg: RunConfig, name: str, value) -> RunConfig:
    """cfg with one command-line override; a bad value is named by its flag."""
    flag, edit = OVERRIDES[name]
    if isinstance(value, float) and not (math.isfinite(value) and value > 0):
        raise CliError(flag, f"got {value:g}", f"use a positive size, e.g. {flag} 4")
    try:
        return getattr(cfg, edit)(value)
    except UserError as e:
        raise CliError(flag, e.problem, e.fix) from None


# The simulator's speed for the time estimate (README: about 140K events/s on one core), and the longest
# run started without --force: about an hour.
EVENTS_PER_S = 1e5
MAX_EVENTS = 3600 * EVENTS_PER_S
# The share of this machine's memory that one run's trace may take without --force.
MAX_MEMORY_FRACTION = 0.5


def run_estimate(cfg: RunConfig) -> dict:
    """Up-front estimates of one simulated run: events (steps x layers, and the Engram layers' fetch
    events), and the bytes of its token trace (the trace's tokens x their contexts and row ids)."""
    w, e = cfg.workload, cfg.engram
    layers = len(e.layer_ids)
    steps = w.steps
    tokens = min(w.steps, w.tokens.trace_steps) * (w.sequences if w.phase == "decode" else w.tokens_per_step)
    if w.phase == "serve":
        # Serving: each wave of max_sequences requests decodes for up to its longest output, after its prompts;
        # every request's tokens are held, and one step's tokens are hashed at a time.
        r, s = w.requests, w.scheduler
        waves = -(-r.count // s.max_sequences)
        steps = waves * r.output.high + -(-r.count * r.prompt.high // s.max_batched_tokens)
        tokens = s.max_batched_tokens + r.count * (r.prompt.high + r.output.high) // 8
    events = steps * (cfg.backbone.layers + 12 * layers + 4)
    trace_bytes = tokens * 8 * (2 * e.max_ngram_size + 4 + layers * e.tables_per_layer)
    return {"events": events, "trace_bytes": trace_bytes}


def check_estimate(cfg: RunConfig, force: bool | None) -> None:
    """Refuse, in one line, a run whose estimated time or memory is beyond this machine. `force` is the
    parsed --force (None: the command has no such flag, so the fix is to make the run smaller)."""
    if force:
        return
    est = run_estimate(cfg)
    override = ", or pass --force to run it anyway" if force is not None else ""
    if est["events"] > MAX_EVENTS:
        hours = est["events"] / EVENTS_PER_S / 3600
        raise CliError("--steps", f"the run needs about {est['events']:.2g} simulator events (~{hours:,.1f} h at "
                       f"~{EVENTS_PER_S:.0e} events/s; the limit is {MAX_EVENTS:.2g})",
                       f"lower --steps (workload.steps) or backbone.layers{override}")
    memory = memory_gib() * GiB  # this machine's (real_runs.instrument keeps the machine facts)
    limit = MAX_MEMORY_FRACTION * memory
    if est["trace_bytes"] > limit:
        raise CliError("workload.sequences", f"the token trace needs about {est['trace_bytes'] / GiB:,.1f} GiB "
                       f"(sequences or tokens_per_step x trace_steps x tables), over half of this machine's "
                       f"{memory / GiB:,.0f} GiB",
                       f"lower workload.sequences, workload.tokens_per_step or workload.tokens.trace_steps{override}")


def one_gpu_only(cfg: RunConfig, command: str) -> None:
    """Refuse a deployment over several GPUs in a command that steps one GPU (its answers would silently be one
    GPU's)."""
    if cfg.deployment.gpus > 1:
        raise CliError("deployment.gpus", f"{command} steps one GPU, not a deployment of {cfg.deployment.gpus}",
                       "use engram-sim plan-server (or simulate) for a server, or deployment.gpus = 1")


def threshold(text: str) -> float:
    """--threshold: a finite overhead fraction >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; use a fraction such as 0.01") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite fraction >= 0; use e.g. 0.01")
    return value


def add_run_options(p: argparse.ArgumentParser, placements, one_point: bool = True) -> None:
    """--profile and --steps; for one point also --placement, --phase and --table-gib."""
    p.add_argument("--profile", help="hardware profile name or TOML path (default: the config's)")
    p.add_argument("--steps", type=int, help="steps to simulate (default: the config's)")
    add_set_option(p)
    p.add_argument("--force", action="store_true",
                   help="run even beyond the up-front estimate of time (an hour) or memory (half this machine's)")
    if one_point:
        p.add_argument("--placement", choices=list(placements))
        p.add_argument("--phase", choices=["prefill", "decode", "serve"])
        p.add_argument("--table-gib", dest="table_gib_one", type=float, help="total Engram table size")


def add_sweep_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threshold", type=threshold, default=0.01,
                   help="overhead versus HBM above which a placement is not hidden (default 0.01)")
    p.add_argument("--jobs", type=int, default=None, help="worker processes (default: CPU count)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_executor_options(p)


def add_executor_options(p: argparse.ArgumentParser, resume: bool = True) -> None:
    """Where a sweep's (or a plan's) points run, and whether the shards of an interrupted run are reused."""
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: a process pool on this machine (default); ray: Ray tasks (pip install "
                        "'engram-sim[ray]')")
    p.add_argument("--address", help="with --executor ray: the cluster's address (host:port, or auto); "
                                     "default: start a local Ray instance")
    if not resume:
        return
    p.add_argument("--resume", action="store_true",
                   help="reuse the points an interrupted or failed run of the same sweep left in OUT/shards/")
