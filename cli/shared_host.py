"""`engram-sim shared-host CONFIG --workers 1,2,3,4 [--gather-threads 1,2] [--steps N] [--out FILE]`:
several gather worker processes reading one host table in lock-step (real_runs/shared_host.py), as
several GPUs' fetches of a server would; the record says what each gather interval covers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cli.args import CliError, add_set_option, with_sets
from vocab.config import load_config
from vocab.files import check_writable_file

DEFAULT_CONFIG_HELP = "real_runs/records/shared-host.toml"
MAX_WORKERS = 64     # processes; each holds staging and a Numba thread pool
MAX_THREADS = 256


def counts(flag: str, text: str, most: int, example: str) -> list[int]:
    """A list such as 1,2,4 of distinct whole numbers in 1..most, in the order given."""
    try:
        values = [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise CliError(flag, f"{text!r} is not a list of whole numbers", f"use e.g. {flag} {example}") from None
    if not values or any(not 1 <= v <= most for v in values):
        raise CliError(flag, f"{text!r} needs whole numbers from 1 to {most}", f"use e.g. {flag} {example}")
    return list(dict.fromkeys(values))


def cmd_shared_host(args) -> int:
    workers = counts("--workers", args.workers, MAX_WORKERS, "1,2,3,4")
    threads = counts("--gather-threads", args.gather_threads, MAX_THREADS, "1,2")
    if args.warmup < 0:
        raise CliError("--warmup", f"{args.warmup} is negative", "use 0 or more steps")
    out = Path(args.out or f"out/{Path(args.config).stem}-shared-host.json")
    check_writable_file(out, "--out")
    cfg = with_sets(load_config(args.config), args.sets)
    if args.table_gib is not None:
        cfg = cfg.with_table_gib(args.table_gib)
    steps = args.steps or cfg.workload.steps
    before = os.environ.get("OMP_WAIT_POLICY")
    if args.omp_wait_policy != "default":
        # Read by the OpenMP runtime when a worker's first parallel kernel loads it (the parent starts none).
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()
    try:
        return _measure(args, cfg, workers, threads, steps, out)
    finally:  # this process's environment as it was (a caller, e.g. a test, may go on)
        if before is None:
            os.environ.pop("OMP_WAIT_POLICY", None)
        else:
            os.environ["OMP_WAIT_POLICY"] = before


def _measure(args, cfg, workers, threads, steps, out) -> int:
    # torch (the real stores' dependency) is an optional heavy one: loaded only for a measurement.
    from real_runs.shared_host import measure_shared_host
    from real_runs.shared_host_record import finish_record, format_points, write_shared_host

    def progress(point):
        print(f"  {point['workers']} worker(s), {point['gather_threads']} gather thread(s): gather makespan "
              f"{point['summary']['gather_makespan_s']['median'] * 1e3:.3f} ms median", file=sys.stderr)

    try:
        record = measure_shared_host(cfg, workers, threads, steps, warmup=args.warmup, rows=args.rows,
                                     copy=args.copy, progress=progress)
    except RuntimeError as e:
        print(f"engram-sim shared-host: {e}", file=sys.stderr)
        return 2
    record["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "default (unset)")
    finish_record(record, args.note or "")
    write_shared_host(record, out)
    print(format_points(record))
    if not record["quiet"]:
        print(f"note: {record['note']}")
    print(f"wrote {out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("shared-host", help="measure several gather workers reading one host table (a server's "
                                           "GPUs sharing the host), on this machine")
    p.add_argument("config", help=f"a host_dma config TOML or preset (e.g. {DEFAULT_CONFIG_HELP})")
    p.add_argument("--workers", default="1,2,3,4", help="worker process counts, e.g. 1,2,3,4 (default)")
    p.add_argument("--gather-threads", default="1,2", help="Numba gather threads per worker, e.g. 1,2 (default)")
    p.add_argument("--steps", type=int, help="measured steps per point (default: workload.steps)")
    p.add_argument("--warmup", type=int, default=3, help="steps run before recording (default 3)")
    p.add_argument("--rows", choices=["per_worker", "same"], default="per_worker",
                   help="per_worker: worker w reads the steps of workload.seed + w (each GPU its own requests; "
                        "default); same: every worker reads the same steps")
    p.add_argument("--copy", choices=["none", "memcpy"], default="none",
                   help="none: the chunks' copies out of staging move nothing (on a GPU machine a copy engine "
                        "moves them, no core; default); memcpy: the CPU run's memcpy into fresh host memory")
    p.add_argument("--omp-wait-policy", choices=["default", "passive", "active"], default="default",
                   help="OMP_WAIT_POLICY for the workers' Numba (OpenMP) threads: passive threads sleep when idle, "
                        "active ones spin, holding a core other workers could use (default: the runtime's own)")
    p.add_argument("--table-gib", type=float, help="the Engram table size in GiB (engram.table_gib)")
    p.add_argument("--note", help="a note kept in the record (e.g. how quiet the machine was)")
    p.add_argument("--out", help="record path (default: out/<config>-shared-host.json)")
    add_set_option(p)
    p.set_defaults(func=cmd_shared_host)
