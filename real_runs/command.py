"""The `run` command's arguments and entry, importable without torch.

`engram-sim run` (cli/measure.py) and `python -m real_runs` (the GPU image,
which has no SimPy or Altair for the rest of the CLI) share these.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from vocab.files import check_writable_file
from vocab.placements import PLACEMENTS


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="a config TOML or preset name (see `engram-sim presets`)")
    p.add_argument("--placement", choices=list(PLACEMENTS),
                   help="table placement (none: the backbone without Engram)")
    p.add_argument("--steps", type=int)
    p.add_argument("--out", help="record path (default: out/<config>-<placement>-measured.json)")
    p.add_argument("--device", help="cuda or cpu (default: cuda when present)")
    p.add_argument("--warmup", type=int, default=1, help="steps run before recording (default 1)")
    p.add_argument("--table-gib", type=float, help="the Engram table size in GiB (engram.table_gib)")
    p.add_argument("--dram-cache-gib", type=float,
                   help="ssd: the DRAM cache in front of the drive, GiB over all layers (placement.dram_cache_gib)")
    p.add_argument("--ssd-dir", help="ssd: the folder on the drive for the table file (placement.ssd_dir; "
                                     "default: the system's temp folder)")
    p.add_argument("--omp-wait-policy", choices=("passive", "active", "default"),
                   help="OMP_WAIT_POLICY for the run's Numba and torch (OpenMP) threads, unless the environment "
                        "sets it (default: the runtime's own, which spins). passive lets idle threads sleep: on a "
                        "machine of few cores a spinning thread can hold a core for a time slice while the ssd "
                        "store's reader threads wait (2 cores: a 4 ms stall in 40 %% of decode steps), but each "
                        "call then wakes its threads (a 2-core CPU serving run: 2.6x slower)")


def cmd_run(args) -> int:
    if getattr(args, "out", None) is not None:  # before torch loads and the tables fill
        check_writable_file(Path(args.out), "--out")
    # The OpenMP runtimes read it when they load (torch's with the runner, Numba's at its first parallel call).
    policy = getattr(args, "omp_wait_policy", None) or "default"
    if policy != "default" and "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = policy.upper()
    # torch is an optional heavy dependency: the runner (which imports it) loads only for a real run.
    from real_runs.runner import main_run

    return main_run(args)
