"""Where calibrate writes its profile, and how: checked before measuring, validated, moved into place."""

from __future__ import annotations

import re
from pathlib import Path

from profiles import load_profile
from vocab.errors import ProfileError, UserError
from vocab.files import atomic_write_text, check_writable_file


class CalibrateError(UserError):
    """Calibration cannot run or cannot write its profile."""


def slug(text: str) -> str:
    """A GPU or CPU name as part of a file name ('Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz' ->
    'intel-xeon-platinum-8480')."""
    text = re.sub(r"\((R|TM|tm|r)\)|\bCPU\b|@.*$", " ", text)
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "machine"


def default_out(machine_slug: str, today: str) -> Path:
    return Path("profiles") / f"{machine_slug}-measured-{today}.toml"


def check_out(out: Path) -> None:
    """Refuse an --out that cannot be written, before minutes of measuring."""
    check_writable_file(out, "--out")


def write_profile_atomic(text: str, out: Path) -> None:
    """Write text to a temporary file beside `out`, validate it as a profile, then move it into place."""
    def check(tmp: Path) -> None:
        try:
            load_profile(tmp)
        except ProfileError as e:
            raise CalibrateError("calibrate", f"the measured profile does not validate ({e})",
                                 "nothing was written; please report this with the figures above") from None

    try:
        atomic_write_text(out, text, check=check, fsync=True)
    except OSError as e:
        raise CalibrateError("--out", f"cannot write {out} ({e.strerror or e})", "give a writable path") from None
