"""What the commands share: argument parsing that fails in one line, and loading a config with overrides."""

from __future__ import annotations

import argparse
import math

from profiles import HardwareProfile, load_profile
from vocab.config import RunConfig, load_config
from vocab.errors import UserError


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
    """The config named by args.config with the command line's overrides, and its hardware profile."""
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


def add_run_options(p: argparse.ArgumentParser, placements, one_point: bool = True) -> None:
    """--profile and --steps; for one point also --placement, --phase and --table-gib."""
    p.add_argument("--profile", help="hardware profile name or TOML path (default: the config's)")
    p.add_argument("--steps", type=int, help="steps to simulate (default: the config's)")
    if one_point:
        p.add_argument("--placement", choices=list(placements))
        p.add_argument("--phase", choices=["prefill", "decode"])
        p.add_argument("--table-gib", dest="table_gib_one", type=float, help="total Engram table size")


def add_sweep_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threshold", type=float, default=0.01,
                   help="overhead versus HBM above which a placement is not hidden (default 0.01)")
    p.add_argument("--jobs", type=int, default=None, help="worker processes (default: CPU count)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
