"""User-facing errors: one line that names the field and the fix."""

import os
import sys


class UserError(Exception):
    """Bad input from the user. The CLI prints it as one line and exits 2."""

    def __init__(self, field: str, problem: str, fix: str = ""):
        self.field = field
        self.problem = problem
        self.fix = fix
        msg = f"{field}: {problem}"
        if fix:
            msg += f"; {fix}"
        super().__init__(msg)


class ConfigError(UserError):
    """A configuration file or value is invalid."""


class ProfileError(UserError):
    """A hardware profile is invalid or missing."""


class CapacityError(UserError):
    """The configuration does not fit the hardware (HBM or host memory)."""


class DeviceError(UserError, RuntimeError):
    """The device asked for does not exist or is not here (a RuntimeError too, as torch's own errors are)."""


def run_command(func, args, prog: str = "engram-sim") -> int:
    """Run a command: bad input prints one line and gives exit code 2; Ctrl-C gives 130 and no traceback;
    a reader that stops early (`engram-sim presets | head`) ends the command quietly, as it would a shell tool."""
    try:
        return func(args)
    except BrokenPipeError:
        # Nothing more can reach the reader; point stdout at nothing so that Python's exit flush is quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool stopped this way
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
