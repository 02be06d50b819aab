"""Output files that are never half-written: path checks, atomic file writes and staged folders.

Every command that writes goes through these, so a failure (or Ctrl-C) leaves
what the user had in place and no partial file behind. Commands check their
output paths first (check_writable_file, check_writable_dir), before any work.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from vocab.errors import UserError


class OutputError(UserError):
    """An output path cannot be written."""


# Temporaries alive right now, so that a hard exit (a second Ctrl-C) can remove them: see remove_temporaries.
_temporaries: set[Path] = set()


def remove_temporaries() -> None:
    """Remove every temporary file and staging folder still alive; for an exit that skips the usual cleanup."""
    for tmp in list(_temporaries):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        _temporaries.discard(tmp)


@contextmanager
def removed_after(path: str | os.PathLike) -> Iterator[Path]:
    """A scratch file the block creates at `path`: removed when the block ends, however it ends (a second
    Ctrl-C's hard exit too, by remove_temporaries)."""
    p = Path(path)
    _temporaries.add(p)
    try:
        yield p
    finally:
        p.unlink(missing_ok=True)
        _temporaries.discard(p)


def _new_file_mode(path: Path) -> int:
    """The mode a plain open() would give: the old file's, else 0o666 less the umask (mkstemp's 0600 is private)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        umask = os.umask(0)  # the only way to read it; set straight back
        os.umask(umask)
        return 0o666 & ~umask


@contextmanager
def sigint_deferred(second_goes_through: bool = False) -> Iterator[None]:
    """Hold a Ctrl-C until the block ends: moving several outputs into place is not cut in the middle.
    With second_goes_through, a second Ctrl-C in the block is handled at once (for a block that takes seconds)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if not callable(previous):  # ignored, default or set outside Python: nothing to defer
        yield
        return
    caught = []

    def hold(signum, frame):
        if caught and second_goes_through:
            signal.signal(signal.SIGINT, previous)
            previous(signum, frame)
        caught.append(frame)

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGINT) is hold:  # not already restored by a second Ctrl-C
            signal.signal(signal.SIGINT, previous)
            if caught:
                previous(signal.SIGINT, caught[0])


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], *, binary: bool = False,
                 check: Callable[[Path], None] | None = None, fsync: bool = False) -> Path:
    """Call write(f) on a temporary file beside `path`, optionally check(temp path), then move it into place.

    A failure anywhere leaves the old file (or nothing) at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    _temporaries.add(tmp)
    try:
        os.chmod(tmp, _new_file_mode(path))
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
        _temporaries.discard(tmp)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, **kwargs) -> Path:
    return atomic_write(path, lambda f: f.write(text), **kwargs)


def _given(out: str | os.PathLike, field: str, what: str) -> Path:
    if not str(out).strip():  # Path("") is ".": an empty flag would silently mean the current folder
        raise OutputError(field, "is empty", f"give {what} path")
    return Path(out)


def _writable_ancestor(out: Path, field: str) -> Path:
    """The nearest existing folder above `out`, where its temporaries go; refused if not a folder or not writable."""
    anc = out.absolute().parent
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise OutputError(field, f"{anc} is not a folder", "give a path inside a folder")
    _probe(anc, field)
    return anc


def _probe(folder: Path, field: str) -> None:
    try:   # a probe file, removed at once: permissions, read-only and pseudo file systems all show here
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".engram-sim-probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(field, f"cannot write in {folder} ({e.strerror or e})", "give a writable path") from None


def check_writable_file(out: str | os.PathLike, field: str = "--out") -> None:
    """Refuse a file path that cannot be written, before any work: a folder, a device, no permission."""
    out = _given(out, field, "a file")
    if out.exists() and out.is_dir():
        raise OutputError(field, f"{out} is a folder", "give a file path")
    if out.exists() and not out.is_file():
        raise OutputError(field, f"{out} exists and is not a regular file", "give a file path")
    _writable_ancestor(out, field)


def check_writable_dir(out: str | os.PathLike, field: str = "--out") -> None:
    """Refuse an output folder that cannot be written, before any work: a file, a path through a file, no permission."""
    out = _given(out, field, "a folder")
    if out.exists() and not out.is_dir():
        raise OutputError(field, f"{out} exists and is not a folder", "give a folder path")
    _writable_ancestor(out, field)
    if out.exists():  # staged files are moved into it
        _probe(out, field)


def check_distinct(paths: dict[str, str | os.PathLike]) -> None:
    """Refuse two output flags naming one file: the second would overwrite the first."""
    seen: dict[Path, str] = {}
    for field, path in paths.items():
        resolved = Path(path).absolute().resolve()
        if resolved in seen:
            raise OutputError(field, f"is the same file as {seen[resolved]}", "give a different path")
        seen[resolved] = field


@contextmanager
def staged_files(*paths: str | os.PathLike) -> Iterator[list[Path]]:
    """Temporary paths beside each of `paths`, to write into; when the block succeeds all move into place, else none.

    For one command's several output files (a record and its trace)."""
    targets = [Path(p) for p in paths]
    tmps: list[Path] = []
    try:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            os.close(fd)
            tmps.append(Path(name))
            _temporaries.add(tmps[-1])
            os.chmod(name, _new_file_mode(target))
        yield list(tmps)
        with sigint_deferred():
            for tmp, target in zip(tmps, targets):
                os.replace(tmp, target)
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
            _temporaries.discard(tmp)


@contextmanager
def staged_dir(out: str | os.PathLike, field: str = "--out", last: str | None = None) -> Iterator[Path]:
    """Write into a temporary sibling folder, then move its files into `out`; on failure nothing lands.

    `last` names the file moved last (e.g. report.html), so its presence means the rest is there."""
    check_writable_dir(out, field)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    _temporaries.add(tmp)
    try:
        yield tmp
        with sigint_deferred():
            out.mkdir(exist_ok=True)
            names = sorted(f.name for f in tmp.iterdir())
            if last in names:
                names.remove(last)
                names.append(last)
            for name in names:
                os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        _temporaries.discard(tmp)


def cache_dir() -> Path:
    """Where built artefacts (corpora, tokenizers, report bundles) are kept between runs: $ENGRAM_SIM_CACHE,
    else ~/.cache/engram-sim (created)."""
    path = Path(os.environ.get("ENGRAM_SIM_CACHE") or Path.home() / ".cache" / "engram-sim")
    path.mkdir(parents=True, exist_ok=True)
    return path
