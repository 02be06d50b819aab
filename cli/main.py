"""engram-sim: the command line.

Bad input of any kind ends in one line on stderr naming the field and the
fix, exit code 2, and no output files touched. Ctrl-C stops the work and
exits with 130 and one line; a second Ctrl-C exits at once. This module is
the top of the project: it imports the command being run, and nothing imports it.
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing
import os
import signal
import sys
import threading

from cli.args import Parser
from vocab.errors import run_command
from vocab.files import remove_temporaries

PROG = "engram-sim"
INTERRUPTED = f"{PROG}: interrupted\n"
_announced = False  # the interrupt line is printed once, by whichever of the two paths comes first


# Worker processes beyond this only cost memory and start-up time.
MAX_JOBS = 256


# Every command, the module whose register() adds it (with its options), and its line in `--help` (the same
# help the module registers: tests/test_cli.py holds them equal). The commands' modules are imported by
# name (importlib), and only the one whose command runs: together they pull in pandas, SimPy, pyarrow and
# the rest, which `engram-sim --help` or a command of another module has no use for.
COMMANDS = {
    "simulate": ("cli.simulate", "simulate one configuration"),
    "sweep": ("cli.simulate", "sweep table sizes across placements and phases"),
    "demo": ("cli.simulate", "Engram-27B on H100: tables 1 GiB..1 TiB, all placements, both phases"),
    "profiles": ("cli.simulate", "list hardware profiles, or show one"),
    "presets": ("cli.simulate", "list shipped configurations"),
    "bench": ("cli.simulate", "benchmark the simulator's own speed"),
    "run": ("cli.measure", "a real, instrumented Engram-MoE run (GPU; tiny configs also on CPU)"),
    "calibrate": ("cli.measure", "measure this machine into a hardware profile (TOML)"),
    "shared-host": ("cli.measure", "measure several gather workers reading one host table (a server's GPUs sharing "
                                   "the host), on this machine"),
    "compare": ("cli.measure", "predicted versus measured: simulate what measured records ran"),
    "report": ("cli.measure", "HTML report + PNGs from a sweep CSV and/or a compare CSV, or from serving run "
                              "records"),
    "validate": ("cli.validate", "the simulator against every published measurement (profiles/reference/)"),
    "plan": ("cli.plan", "the largest Engram table each placement holds within a throughput budget"),
    "plan-server": ("cli.server_plan", "per placement, the best deployment of a whole server: replicate or shard the "
                                       "table, NUMA placement of host copies and threads, gather threads per GPU"),
}


def command_of(argv: list[str]) -> str | None:
    """The command argv names: its first word that is not an option (the top level has only -h)."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser for `command`: its module's commands in full, the others by name and help line (all of
    them so, for no command or an unknown one: enough for --help and for the error naming the choices)."""
    parser = Parser(prog=PROG, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    full = COMMANDS[command][0] if command in COMMANDS else None
    for module in dict.fromkeys(m for m, _ in COMMANDS.values()):  # in order: a module's commands are adjacent
        if module == full:
            importlib.import_module(module).register(sub)
            continue
        for name, (of, text) in COMMANDS.items():
            if of == module:
                sub.add_parser(name, help=text, add_help=False)
    return parser


def _announce_interrupt() -> None:
    global _announced
    if not _announced:
        _announced = True
        try:  # straight to the descriptor: a signal handler may interrupt a buffered write to stderr
            os.write(sys.stderr.fileno(), INTERRUPTED.encode())
        except (AttributeError, OSError, ValueError):  # stderr replaced by an object without a descriptor
            print(INTERRUPTED, end="", file=sys.stderr)


def _interrupt_first(signum, frame) -> None:
    """The first Ctrl-C: stop the work (KeyboardInterrupt unwinds it, cleaning up); the next one exits at once."""
    signal.signal(signal.SIGINT, _interrupt_again)
    raise KeyboardInterrupt


def _interrupt_again(signum, frame) -> None:
    """A second Ctrl-C while the first is still cleaning up: kill the workers, drop temporaries, exit now."""
    for child in multiprocessing.active_children():
        child.kill()
    remove_temporaries()
    _announce_interrupt()
    os._exit(130)  # skips atexit, which would wait for the process pool's threads


def _run(args) -> int:
    try:
        return args.func(args)
    except KeyboardInterrupt:
        _announce_interrupt()
        return 130


def main(argv: list[str] | None = None) -> int:
    global _announced
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(command_of(argv)).parse_args(argv)
    for name in ("steps", "jobs"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            print(f"{PROG}: error: --{name}: must be >= 1; use a positive integer", file=sys.stderr)
            return 2
    if getattr(args, "jobs", None) is not None and args.jobs > MAX_JOBS:
        print(f"{PROG}: error: --jobs: {args.jobs} worker processes is more than {MAX_JOBS}; use at most "
              f"{MAX_JOBS} (this machine has {os.cpu_count()} CPUs)", file=sys.stderr)
        return 2
    for name in ("out", "trace"):  # Path("") is the current folder: an empty path is a mistake, not a default
        if getattr(args, name, None) == "":
            print(f"{PROG}: error: --{name}: is empty; give a path", file=sys.stderr)
            return 2
    # Our handler only where Python's own is in place (not when SIGINT is ignored, nor off the main thread).
    ours = threading.current_thread() is threading.main_thread() and \
        signal.getsignal(signal.SIGINT) is signal.default_int_handler
    previous = signal.signal(signal.SIGINT, _interrupt_first) if ours else None
    _announced = False
    try:
        return run_command(_run, args, prog=PROG)
    finally:
        # Restored unless interrupted: then a further Ctrl-C, even in the exit's own cleanup, still exits at once.
        if ours and signal.getsignal(signal.SIGINT) is _interrupt_first:
            signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    sys.exit(main())
