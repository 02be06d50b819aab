"""`engram-sim calibrate --ssd-path`: the [ssd] section it writes (measured for real on a tiny file in tmp_path,
no timed assertions), the test file always removed, bad drive folders refused in one line; fio's JSON read."""

import dataclasses
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from profiles import load_profile
from real_runs import timing
from tests.test_calibrate import TINY, run_calibrate, tiny  # noqa: F401 (tiny: a fixture)
from tests.test_calibrate_sanity import fake_gather
from tools.calibrate import drive, measure_cpu, measure_ssd, plan
from tools.fio import FioError, parse_fio_json, random_read_args, seq_read_args
from vocab.units import GiB, MiB

ROOT = Path(__file__).resolve().parents[1]
DEPTHS = (1, 2, 4)
TINY_DRIVE = dataclasses.replace(TINY, ssd_file_bytes=4 * MiB, ssd_depths=DEPTHS, ssd_reads_per_thread=4,
                                 ssd_seq_call_bytes=2 * MiB, ssd_cpu_reads=16, ssd_stop_when_flat=False)
SIZE_GIB = str(4 * MiB / GiB)


def fake_dedup(sizes, plan_, raw):
    raw["dedup"] = 2e7
    yield "dedup"


@pytest.fixture
def tiny_drive(tiny, monkeypatch):  # noqa: F811 (the imported fixture)
    """Tiny sizes; the two CPU steps that need the torch stores replaced (the drive is what these tests test)."""
    monkeypatch.setattr(plan, "QUICK", TINY_DRIVE)
    monkeypatch.setattr(plan, "FULL", TINY_DRIVE)
    monkeypatch.setattr(measure_cpu, "measure_cpu_gather", fake_gather([2.0], []))
    monkeypatch.setattr(measure_cpu, "measure_dedup", fake_dedup)


def leftovers(folder: Path) -> list:
    return [p.name for p in folder.iterdir()]


def test_the_ssd_section_is_measured_loads_and_the_test_file_is_removed(tiny_drive, tmp_path, capsys):
    folder, out = tmp_path / "drive", tmp_path / "p.toml"
    folder.mkdir()
    assert run_calibrate(["--cpu-only", "--quick", "--ssd-path", str(folder), "--ssd-size-gib", SIZE_GIB,
                          "--out", str(out)]) == 0
    assert leftovers(folder) == []
    p = load_profile(out)
    ssd = p.ssd
    assert [q.x for q in ssd.random_read_iops] == list(DEPTHS)
    assert [q.x for q in ssd.random_read_latency_us] == list(DEPTHS)
    assert all(q.y > 0 for q in ssd.random_read_iops) and ssd.seq_read_gbps > 0 and ssd.read_cpu_us > 0
    for iops, lat in zip(ssd.random_read_iops, ssd.random_read_latency_us):
        little = iops.x / iops.y * 1e6                  # Little's law: reads in flight / reads per second
        assert little / 3 <= lat.y <= little * 3
    assert ssd.read_block_bytes >= 4096 and ssd.gds is False and ssd.capacity_gib > 0
    notes = p.provenance.notes
    assert "measured here: ssd" in notes and str(folder) in notes and "free space at calibration" in notes
    assert "--ssd-path" in p.provenance.method
    text = out.read_text()
    assert "# Measured with real_runs/direct_io.DirectReader" in text and "#   ssd: ssd random reads depth 1" in text
    assert "  ssd: " in capsys.readouterr().out


def test_without_ssd_path_there_is_no_ssd_section(tiny_drive, tmp_path):
    out = tmp_path / "p.toml"
    assert run_calibrate(["--cpu-only", "--quick", "--out", str(out)]) == 0
    assert load_profile(out).ssd is None and "[ssd]" not in out.read_text()


@pytest.mark.parametrize("failure", [OSError(errno.EIO, "the drive went away"), KeyboardInterrupt()])
def test_the_test_file_is_removed_after_a_failure_and_no_profile_is_written(tiny_drive, tmp_path, monkeypatch,
                                                                            failure):
    folder, out = tmp_path / "drive", tmp_path / "p.toml"
    folder.mkdir()
    seen = []

    def broken(sizes, path, raw):
        seen.append(path.exists())
        raise failure
        yield

    monkeypatch.setattr(measure_ssd, "measure_seq_reads", broken)
    code = run_calibrate(["--cpu-only", "--quick", "--ssd-path", str(folder), "--ssd-size-gib", SIZE_GIB,
                          "--out", str(out)])
    assert code == (130 if isinstance(failure, KeyboardInterrupt) else 2)
    assert seen == [True] and leftovers(folder) == [] and not out.exists()


def test_quick_stops_climbing_once_iops_stops_rising(tmp_path, monkeypatch):
    monkeypatch.setattr(timing, "WARM_S", 0.0)
    monkeypatch.setattr(timing, "TIMED_S", 0.0)
    monkeypatch.setattr(measure_ssd, "time_spread", lambda fn, w, r, setup: timing.Spread(1.0, 1.0, 1.0, r))
    sizes = dataclasses.replace(TINY_DRIVE, ssd_depths=(1, 2, 4, 8, 16), ssd_stop_when_flat=True)
    raw = {"ssd": {}}
    with drive.drive_test_file(tmp_path, 4 * MiB) as path:
        labels = list(measure_ssd.measure_random_reads(sizes, path, 4096, raw))
    # one call a second whatever the depth: IOPS = reads per call, still rising, so every depth is measured
    assert sorted(raw["ssd"]["random"]) == [1, 2, 4, 8, 16] and len(labels) == 5
    monkeypatch.setattr(measure_ssd, "time_spread", lambda fn, w, r, setup: timing.Spread(1.0, 1.0, 1.0, r)
                        if len(raw["ssd"]["random"]) < 2 else timing.Spread(9.0, 9.0, 9.0, r))
    raw = {"ssd": {}}
    with drive.drive_test_file(tmp_path, 4 * MiB) as path:
        labels = list(measure_ssd.measure_random_reads(sizes, path, 4096, raw))
    assert sorted(raw["ssd"]["random"]) == [1, 2, 4] and labels[-1] == "ssd depth 16 skipped"
    assert leftovers(tmp_path) == []


# -- a bad --ssd-path: one line naming it, exit 2, nothing left behind, no profile -------------------------

def cli(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", *argv], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("where, names", [
    ("missing", "--ssd-path: "), ("a_file", "--ssd-path: "), ("/proc", "--ssd-path: needs"),
    ("/dev/shm", "--ssd-path: '/dev/shm' is on tmpfs"), ("size0", "--ssd-size-gib: got 0"),
])
def test_a_bad_ssd_path_is_one_line_exit_2_and_nothing_written(tmp_path, where, names):
    (tmp_path / "a_file").write_text("x")
    folder = {"missing": tmp_path / "missing", "a_file": tmp_path / "a_file"}.get(where, Path(where))
    size = ["--ssd-size-gib", "0"] if where == "size0" else []
    if where == "size0":
        folder = tmp_path
    if where == "/dev/shm" and not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm here")
    before = sorted(tmp_path.iterdir())
    done = cli(["calibrate", "--cpu-only", "--quick", "--ssd-path", str(folder), *size,
                "--out", str(tmp_path / "p.toml")], ROOT)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"engram-sim: error: {names}"), done.stderr
    assert sorted(tmp_path.iterdir()) == before
    assert not (Path("/dev/shm") / drive.TEST_FILE_NAME).exists()


def test_an_unwritable_folder_or_one_without_o_direct_is_refused_and_left_clean(tmp_path, monkeypatch):
    real_access, real_open = os.access, os.open
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path else real_access(p, mode))
    with pytest.raises(drive.DriveError, match="--ssd-path: .* is not writable; give a folder"):
        drive.check_ssd_folder(str(tmp_path), MiB)
    monkeypatch.setattr(os, "access", real_access)

    def no_direct(path, flags, *a):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *a)

    monkeypatch.setattr(os, "open", no_direct)
    with pytest.raises(drive.DriveError, match="--ssd-path: the file system of .* does not support O_DIRECT"):
        drive.check_ssd_folder(str(tmp_path), MiB)
    assert leftovers(tmp_path) == []


def test_a_failed_write_is_one_drive_error_and_the_partial_file_is_removed(tmp_path, monkeypatch):
    def full(path, size):
        Path(path).write_bytes(b"x" * 4096)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(drive, "_write_random", full)
    with pytest.raises(drive.DriveError, match="--ssd-path: writing the .* failed \\(No space left on device\\)"):
        with drive.drive_test_file(tmp_path, 4 * MiB):
            pass
    assert leftovers(tmp_path) == []


# -- fio ------------------------------------------------------------------------------------------------

FIO_JSON = """fio: note: both iodepth >= 1 and synchronous I/O engine are selected, queue depth will be capped at 1
{
  "fio version" : "fio-3.33",
  "jobs" : [
    {
      "jobname" : "randread",
      "read" : {
        "io_bytes" : 89846025, "bw_bytes" : 89846025, "iops" : 21935.064935,
        "slat_ns" : {"mean" : 2000.5},
        "clat_ns" : {"min" : 40000, "max" : 900000, "mean" : 90095.79979},
        "lat_ns" : {"mean" : 90160.023728}
      },
      "write" : {"iops" : 0.0}
    }
  ]
}
"""


def test_fio_json_is_read_for_iops_completion_latency_and_bandwidth():
    r = parse_fio_json(FIO_JSON)
    assert r.iops == pytest.approx(21935.064935)
    assert r.clat_mean_us == pytest.approx(90.09579979)
    assert r.gbps == pytest.approx(0.089846025)
    old = '{"jobs": [{"read": {"iops": 10, "bw_bytes": 40960, "clat": {"mean": 99.5}}}]}'  # fio 2 gave us
    assert parse_fio_json(old).clat_mean_us == 99.5
    for bad in ("", "fio: failed to open", '{"jobs": []}', "{not json"):
        with pytest.raises(FioError, match="fio: its output is not a JSON report"):
            parse_fio_json(bad)


def test_fio_jobs_match_the_readers_settings():
    psync = random_read_args("/d/f", 2 * GiB, 16, 3)
    assert {"--direct=1", "--rw=randread", "--bs=4096", "--ioengine=psync", "--numjobs=16", "--iodepth=1",
            "--group_reporting", "--time_based", "--runtime=3", "--output-format=json", "--readonly"} <= set(psync)
    aio = random_read_args("/d/f", 2 * GiB, 32, 3, engine="libaio")
    assert {"--ioengine=libaio", "--numjobs=1", "--iodepth=32"} <= set(aio)
    seq = seq_read_args("/d/f", 2 * GiB, 4, 3, MiB)
    assert {"--rw=read", "--bs=1048576", "--numjobs=4", f"--size={GiB // 2}", f"--offset_increment={GiB // 2}"} <= set(seq)
