"""User-facing errors: one line that names the field and the fix."""


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
