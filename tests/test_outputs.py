"""Output paths: checked before any work, one line naming the flag and the fix, exit 2, nothing written;
several outputs of one command land together or not at all; written files get the usual mode."""

import json
import os
import stat
import sys
from pathlib import Path

import pytest

import cli.measure
import cli.simulate
import cli.validate
import tools.calibrate.command
from cli.main import main
from vocab.files import (
    OutputError,
    atomic_write_text,
    check_writable_dir,
    check_writable_file,
    staged_dir,
    staged_files,
)


def _no_work(*args, **kwargs):
    raise AssertionError("the work started before the output path was checked")


@pytest.fixture
def no_work(monkeypatch):
    """Every command's work replaced by a failure: a bad path must be refused before any of it."""
    for module, name in [(cli.simulate, "predict"), (cli.simulate, "sweep"), (cli.validate, "validate"),
                         (cli.measure, "compare_records"), (cli.measure, "build_report"), (cli.measure, "cmd_run"),
                         (tools.calibrate.command, "measure")]:
        monkeypatch.setattr(module, name, _no_work)


def snapshot(root: Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.fixture
def places(tmp_path):
    """Bad places for a file and for a folder, by kind."""
    (tmp_path / "a-file.txt").write_text("user data\n")
    (tmp_path / "a-folder").mkdir()
    common = {"empty": "", "through a file": str(tmp_path / "a-file.txt" / "x")}
    if sys.platform.startswith("linux"):
        common["proc"] = "/proc/engram-sim-out"
    files = {**common, "a folder": str(tmp_path / "a-folder")}
    folders = {**common, "a file": str(tmp_path / "a-file.txt")}
    return files, folders


FILE_FLAGS = [
    (["simulate", "tiny", "--steps", "2"], "--out"),
    (["simulate", "tiny", "--steps", "2"], "--trace"),
    (["run", "tiny", "--steps", "1", "--device", "cpu"], "--out"),
    (["calibrate", "--cpu-only", "--quick"], "--out"),
]
FOLDER_FLAGS = [
    (["sweep", "tiny", "--table-gib", "0.01", "--quiet"], "--out"),
    (["demo", "--quiet"], "--out"),
    (["report", "missing-sweep.csv"], "--out"),
    (["compare", "missing-record.json"], "--out"),
    (["validate"], "--out"),
]


def _refused(tmp_path, capsys, argv, flag):
    before = snapshot(tmp_path)
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (argv, out, err)
    assert len(err.strip().splitlines()) == 1 and flag in err and "Traceback" not in err, err
    assert err.startswith("engram-sim: error: ") and "; " in err, err  # names the flag, then the fix
    assert snapshot(tmp_path) == before


CASES = [(argv, flag, "file", kind) for argv, flag in FILE_FLAGS
         for kind in ("empty", "through a file", "proc", "a folder")] + \
        [(argv, flag, "folder", kind) for argv, flag in FOLDER_FLAGS
         for kind in ("empty", "through a file", "proc", "a file")]


@pytest.mark.parametrize("argv,flag,wants,kind", CASES,
                         ids=[f"{a[0]} {f} {kind}" for a, f, _, kind in CASES])
def test_a_bad_output_path_is_refused_before_any_work(tmp_path, capsys, no_work, places, argv, flag, wants, kind):
    files, folders = places
    bad = files if wants == "file" else folders
    if kind not in bad:
        pytest.skip("no /proc here")
    _refused(tmp_path, capsys, [*argv, flag, bad[kind]], flag)


def test_simulate_writes_neither_output_when_the_trace_path_is_bad(tmp_path, capsys):
    ok = tmp_path / "ok.json"
    (tmp_path / "a-file.txt").write_text("x")
    code = main(["simulate", "tiny", "--steps", "2", "--out", str(ok), "--trace", str(tmp_path / "a-file.txt" / "t")])
    err = capsys.readouterr().err
    assert code == 2 and "--trace" in err and not ok.exists()


def test_simulate_writes_neither_output_when_the_trace_fails_late(tmp_path, capsys, monkeypatch):
    def broken(timelines, path):
        Path(path).write_text("half")
        raise OSError("disk full")

    monkeypatch.setattr(cli.simulate, "write_chrome_trace", broken)
    with pytest.raises(OSError):
        main(["simulate", "tiny", "--steps", "2", "--out", str(tmp_path / "r.json"), "--trace",
              str(tmp_path / "t.json")])
    assert list(tmp_path.iterdir()) == []  # neither the record nor a temporary


def test_simulate_refuses_one_file_for_both_outputs(tmp_path, capsys, no_work):
    same = str(tmp_path / "x.json")
    code = main(["simulate", "tiny", "--out", same, "--trace", same])
    err = capsys.readouterr().err
    assert code == 2 and "--trace: is the same file as --out" in err and not list(tmp_path.iterdir())


def test_simulate_still_writes_both_outputs(tmp_path, capsys):
    rec, trace = tmp_path / "r.json", tmp_path / "t.json"
    assert main(["simulate", "tiny", "--steps", "2", "--out", str(rec), "--trace", str(trace)]) == 0
    out = capsys.readouterr().out
    assert out.endswith(f"wrote {rec}\nwrote {trace}\n")
    assert json.loads(rec.read_text())["kind"] == "simulated" and "traceEvents" in json.loads(trace.read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "t.json"]


def test_checks_accept_good_paths(tmp_path):
    check_writable_file(tmp_path / "new" / "deeper" / "r.json")
    check_writable_file(tmp_path / "r.json")
    check_writable_dir(tmp_path / "new" / "out")
    check_writable_dir(tmp_path)
    assert list(tmp_path.iterdir()) == []  # probes leave nothing


def test_staged_dir_refuses_a_file_where_the_folder_goes(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="--out: .* exists and is not a folder; give a folder path"), \
            staged_dir(tmp_path / "f"):
        pass


def test_staged_files_land_all_or_none(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "sub" / "b.txt"
    with pytest.raises(RuntimeError), staged_files(a, b) as (ta, tb):
        ta.write_text("a")
        raise RuntimeError("the second output failed")
    assert not a.exists() and not b.exists() and [p.name for p in tmp_path.rglob("*")] == ["sub"]
    with staged_files(a, b) as (ta, tb):
        ta.write_text("a")
        tb.write_text("b")
    assert a.read_text() == "a" and b.read_text() == "b" and len(list(tmp_path.rglob("*"))) == 3


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_written_files_get_the_usual_mode(tmp_path, capsys):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "t.txt", "x")
        rec, trace = tmp_path / "r.json", tmp_path / "t.json"
        assert main(["simulate", "tiny", "--steps", "2", "--out", str(rec), "--trace", str(trace)]) == 0
        for path in (tmp_path / "t.txt", rec, trace):
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
        os.chmod(rec, 0o600)  # a user's own choice on an existing file is kept
        assert main(["simulate", "tiny", "--steps", "2", "--out", str(rec)]) == 0
        assert stat.S_IMODE(rec.stat().st_mode) == 0o600
    finally:
        os.umask(old)
