"""`python -m real_runs CONFIG [--placement P] [--steps N] [--out FILE] [--device D]`: one real run.

The same command as `engram-sim run`, for machines (the GPU image) that lack
the simulator's dependencies.
"""

import argparse
import sys

from real_runs.command import add_run_arguments, cmd_run
from vocab.errors import run_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m real_runs", description=__doc__.splitlines()[0])
    add_run_arguments(parser)
    return run_command(cmd_run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
