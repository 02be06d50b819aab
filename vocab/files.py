"""Output files that are never half-written: atomic file writes and staged folders.

Every command that writes goes through these, so a failure (or Ctrl-C) leaves
what the user had in place and no partial file behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from vocab.errors import UserError


class OutputError(UserError):
    """An output path cannot be written."""


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], *, binary: bool = False,
                 check: Callable[[Path], None] | None = None, fsync: bool = False) -> Path:
    """Call write(f) on a temporary file beside `path`, optionally check(temp path), then move it into place.

    A failure anywhere leaves the old file (or nothing) at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, **kwargs) -> Path:
    return atomic_write(path, lambda f: f.write(text), **kwargs)


def check_writable_file(out: Path, field: str = "--out") -> None:
    """Refuse a file path that cannot be written, before any work: a folder, a device, no permission."""
    if out.exists() and out.is_dir():
        raise OutputError(field, f"{out} is a folder", "give a file path")
    if out.exists() and not out.is_file():
        raise OutputError(field, f"{out} exists and is not a regular file", "give a file path")
    anc = out.absolute().parent
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise OutputError(field, f"{anc} is not a folder", "give a path inside a folder")
    try:   # a probe file, removed at once: permissions, read-only and pseudo file systems all show here
        fd, probe = tempfile.mkstemp(dir=anc, prefix=".engram-sim-probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(field, f"cannot write in {anc} ({e.strerror or e})", "give a writable path") from None


@contextmanager
def staged_dir(out: str | os.PathLike, field: str = "--out", last: str | None = None) -> Iterator[Path]:
    """Write into a temporary sibling folder, then move its files into `out`; on failure nothing lands.

    `last` names the file moved last (e.g. report.html), so its presence means the rest is there."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and not out.is_dir():
        raise OutputError(field, f"{out} exists and is not a folder", "give a folder path")
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        yield tmp
        out.mkdir(exist_ok=True)
        names = sorted(f.name for f in tmp.iterdir())
        if last in names:
            names.remove(last)
            names.append(last)
        for name in names:
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
