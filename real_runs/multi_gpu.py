"""`python -m real_runs.multi_gpu CONFIG [--gpus N] [--table replicate|shard] [--steps N] [--out DIR]`:
a real run on every GPU of one machine, one process per GPU (torch.distributed, NCCL).

- replicate: each rank runs the single-GPU runner (real_runs/runner.py) on its own GPU with its own copy
  of the tables, the steps of workload.seed + rank (data-parallel replicas, each serving its own
  requests), started together after a barrier: one record per rank, `<config>-rank<r>.json`.
- shard: the table's rows split evenly over the ranks, each slice in its rank's GPU memory (the
  `[deployment] table = "shard"` of a tensor-parallel group: every rank has the same tokens). Per step and
  Engram layer every rank hashes the step, deduplicates, gathers the rows its slice owns (index_select)
  and all-gathers them (padded to the largest share), so every rank holds all the step's rows. Times by
  CUDA events: `<config>-shard-rank<r>.json` with per step the rank's own rows, the gather and the
  all-gather ms and the bytes the all-gather moved; the rows are checked against the table's contents.

Without two or more CUDA GPUs (or without NCCL) it prints one line, `skipped: <why>`, and exits 0.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from pathlib import Path

import numpy as np

from real_runs.hashing import NgramHasher
from real_runs.inputs import step_rows, workload_inputs
from vocab.config import RunConfig, load_config
from vocab.errors import UserError, run_command
from vocab.files import atomic_write_text, check_writable_dir
from vocab.geometry import table_offsets

PROG = "python -m real_runs.multi_gpu"
TABLE_MODES = ("replicate", "shard")
CHECKED_ROWS = 16        # rows per step compared with the table's contents (shard)


def unavailable_reason(gpus: int | None) -> str | None:
    """Why a multi-GPU run cannot happen here, or None."""
    try:
        import torch  # optional heavy dependency: only a run needs it
        import torch.distributed as dist
    except ImportError:
        return "needs PyTorch (pip install 'engram-sim[real]')"
    if not torch.cuda.is_available():
        return "needs 2 or more CUDA GPUs, and torch.cuda.is_available() is False here"
    have = torch.cuda.device_count()
    want = gpus or have
    if want < 2 or have < want:
        return f"needs {max(2, want)} CUDA GPUs, this machine has {have}"
    if not dist.is_available() or not dist.is_nccl_available():
        return "needs torch.distributed with NCCL, which this PyTorch build lacks"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cfg: RunConfig, world: int, mode: str, steps: int, out: Path, backend: str = "nccl") -> None:
    """`world` processes, one per GPU (backend nccl), or on the CPU (backend gloo: how the tests run it)."""
    import torch.multiprocessing as tmp  # optional heavy dependency (see unavailable_reason)

    out.mkdir(parents=True, exist_ok=True)
    tmp.spawn(_rank_main, args=(world, _free_port(), cfg, mode, steps, out, backend), nprocs=world, join=True)


def _rank_main(rank: int, world: int, port: int, cfg: RunConfig, mode: str, steps: int, out: Path,
               backend: str) -> None:
    import torch  # optional heavy dependency (see unavailable_reason)
    import torch.distributed as dist

    device = f"cuda:{rank}" if backend == "nccl" else "cpu"
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        if mode == "replicate":
            from real_runs.runner import run  # the runner imports torch itself: loaded in the rank's process

            rank_cfg = cfg.with_workload(seed=cfg.workload.seed + rank)
            dist.barrier()
            run(rank_cfg, steps=steps, device=device, out=out / f"{cfg.name}-rank{rank}.json")
        else:
            record = _shard_steps(cfg, rank, world, steps, torch.device(device))
            atomic_write_text(out / f"{cfg.name}-shard-rank{rank}.json", json.dumps(record, indent=1) + "\n")
        dist.barrier()
    finally:
        dist.destroy_process_group()


class _Marks:
    """Timestamps on the device's clock: CUDA events on a GPU, host time on the CPU."""

    def __init__(self, device, n: int):
        import torch  # optional heavy dependency (see unavailable_reason)

        self.cuda = device.type == "cuda"
        self.marks = [torch.cuda.Event(enable_timing=True) for _ in range(n)] if self.cuda else [0.0] * n

    def record(self, i: int) -> None:
        if self.cuda:
            self.marks[i].record()
        else:
            self.marks[i] = time.perf_counter()

    def ms(self, a: int, b: int) -> float:
        if self.cuda:
            return self.marks[a].elapsed_time(self.marks[b])
        return (self.marks[b] - self.marks[a]) * 1e3


def _slice(cfg: RunConfig, layer: int, first: int, rows: int, device):
    """Rows first..first+rows-1 of layer's table (its contents, real_runs/tables.py), on `device`."""
    import torch  # optional heavy dependency (see unavailable_reason)

    from real_runs.tables import _FILL_KIND, TORCH_DTYPES, _fill  # imports torch at its top: loaded here too

    e = cfg.engram
    kind, word = _FILL_KIND[e.table_dtype]
    host = np.empty((rows, e.values_per_row), dtype=word)
    _fill(host, first, e.seed * 1_000_003 + layer, kind)   # the runner's seed for the layer's table
    return torch.from_numpy(host).view(TORCH_DTYPES[e.table_dtype]).to(device)


def _shard_steps(cfg: RunConfig, rank: int, world: int, steps: int, dev) -> dict:
    """The shard loop of one rank (see the module's docstring)."""
    import torch  # optional heavy dependency (see unavailable_reason)
    import torch.distributed as dist

    e = cfg.engram
    hasher = NgramHasher.from_config(e)
    layers = sorted(e.layer_ids)
    bounds = {layer: np.linspace(0, e.layer_rows(layer), world + 1).astype(np.int64) for layer in layers}
    slices = {layer: _slice(cfg, layer, int(b[rank]), int(b[rank + 1] - b[rank]), dev) for layer, b in bounds.items()}
    offsets = {layer: table_offsets(hasher.table_sizes(layer)) for layer in layers}
    _, inputs = workload_inputs(cfg, steps + 1, np.random.default_rng(cfg.workload.seed))
    rows_out = []
    for s, step in enumerate(inputs):
        for layer in layers:
            uniq = np.unique(step_rows(hasher, step, layer, offsets[layer]))
            owner = np.searchsorted(bounds[layer], uniq, side="right") - 1
            counts = np.bincount(owner, minlength=world)      # every rank computes the same: same tokens
            mine = torch.from_numpy(uniq[owner == rank] - bounds[layer][rank]).to(dev)
            width = int(counts.max())
            ev = _Marks(dev, 3)
            ev.record(0)
            local = torch.zeros((width, e.values_per_row), dtype=slices[layer].dtype, device=dev)
            local[:mine.numel()] = slices[layer].index_select(0, mine)
            ev.record(1)
            gathered = torch.empty((world * width, e.values_per_row), dtype=local.dtype, device=dev)
            dist.all_gather_into_tensor(gathered, local)
            ev.record(2)
            rows = torch.cat([gathered[q * width:q * width + int(counts[q])] for q in range(world)])
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if s == 0:
                continue   # the warm-up step
            _check_rows(cfg, layer, uniq, rows)
            rows_out.append({"step": s - 1, "layer": layer, "unique_rows": int(uniq.size),
                             "own_rows": int(counts[rank]), "gather_ms": ev.ms(0, 1),
                             "all_gather_ms": ev.ms(1, 2),
                             "all_gather_bytes": int(world * width * e.row_bytes)})
    return {"kind": "engram-sim multi-gpu shard", "config": cfg.to_dict(), "rank": rank, "world": world,
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "row_bytes": e.row_bytes, "steps": rows_out,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _check_rows(cfg: RunConfig, layer: int, uniq: np.ndarray, rows) -> None:
    """A few of the all-gathered rows against the table's contents (a wrong exchange fails loudly)."""
    pick = np.linspace(0, uniq.size - 1, min(CHECKED_ROWS, uniq.size)).astype(np.int64)
    for i in pick:
        want = _slice(cfg, layer, int(uniq[i]), 1, rows.device)[0]
        if not bool((rows[i].view(want.dtype) == want).all()):
            raise RuntimeError(f"layer {layer}: the all-gathered row {int(uniq[i])} differs from the table's")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a config TOML or preset name")
    parser.add_argument("--gpus", type=int, help="GPUs (processes) to use (default: every GPU here)")
    parser.add_argument("--table", choices=TABLE_MODES, default="replicate", help="replicate (default) or shard")
    parser.add_argument("--steps", type=int, help="measured steps (default: workload.steps)")
    parser.add_argument("--out", default="out/multi-gpu", help="folder for the records (default out/multi-gpu)")
    return run_command(_command, parser.parse_args(argv), prog=PROG)


def _command(args) -> int:
    if args.gpus is not None and args.gpus < 2:
        raise UserError("--gpus", f"{args.gpus} is fewer than 2", "use 2 or more (or the single-GPU engram-sim run)")
    if args.steps is not None and args.steps < 1:
        raise UserError("--steps", f"{args.steps} is fewer than 1", "use a positive number of steps")
    cfg = load_config(args.config)
    check_writable_dir(args.out, "--out")
    reason = unavailable_reason(args.gpus)
    if reason:
        print(f"{PROG}: skipped: {reason}", file=sys.stderr)
        return 0
    import torch  # optional heavy dependency, there when unavailable_reason found nothing missing

    world = args.gpus or torch.cuda.device_count()
    out = Path(args.out)
    launch(cfg, world, args.table, args.steps or cfg.workload.steps, out)
    print(f"{world} GPUs, table {args.table}: records in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
