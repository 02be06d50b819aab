"""engram-sim: the command line.

Bad input of any kind ends in one line on stderr naming the field and the
fix, exit code 2, and no output files touched. This module is the top of the
project: it imports the commands, and nothing imports it.
"""

from __future__ import annotations

import argparse
import sys

from cli import measure, simulate, validate
from cli.args import Parser
from vocab.errors import run_command


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="engram-sim", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    simulate.register(sub)
    measure.register(sub)
    validate.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("steps", "jobs"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            print(f"engram-sim: error: --{name}: must be >= 1; use a positive integer", file=sys.stderr)
            return 2
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
