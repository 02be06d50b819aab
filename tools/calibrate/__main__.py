"""`python -m tools.calibrate [--quick] [--cpu-only] [--out FILE]`: calibrate without the CLI.

The GPU image has neither SimPy nor Altair, which the CLI's other commands
import; real_runs/gpu_session.sh calibrates through this entry point.
"""

import argparse
import sys

from tools.calibrate.command import register
from vocab.errors import run_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.calibrate")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["calibrate", *(sys.argv[1:] if argv is None else argv)])
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
