"""Running a list of tasks with one function: in this process, on a local process pool, or as Ray tasks.

A task is any picklable object and `fn(task)` returns a DataFrame (its attrs are kept). Every result
travels as a Parquet shard (parquet_bytes), whichever executor ran it, so the tables are the same to the
bit. With a shard folder, each shard lands there as it arrives, written whole and renamed into place, so a
run stopped by a failure or Ctrl-C resumes (`resume=True`): a task whose shard is there is not run again.
A shard is named by the task's position and a hash of its repr, so a changed task never picks up an old
shard. The process that calls run_tasks writes the shards: a Ray cluster's nodes need no shared folder.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path

import numba
import pandas as pd

from vocab.errors import UserError
from vocab.files import atomic_write, sigint_deferred
from vocab.tables import parquet_bytes, read_parquet

LOCAL, RAY = "local", "ray"
EXECUTORS = (LOCAL, RAY)
SHARD_PREFIX = "shard-"
RAY_INSTALL = "pip install 'engram-sim[ray]'"
# Ray's own address words: "auto" finds the cluster started on this machine (or RAY_ADDRESS), "local" starts one.
RAY_ADDRESS_WORDS = ("auto", "local")
ADDRESS_PROBE_S = 3.0  # ray.init retries an address that does not answer for minutes: a bad one is refused first
WORKER_STOP_S = 1.0  # how long stopped workers get to exit on SIGTERM before they are killed
RAY_POLL_S = 0.5  # how often the Ray loop wakes up, so that a Ctrl-C is seen at once


class ExecutorError(UserError):
    """A bad --executor or --address."""


# -- checks ---------------------------------------------------------------------------------------

def _import_ray():
    try:
        import ray  # optional heavy dependency (the [ray] extra): only --executor ray needs it
    except ImportError:
        raise ExecutorError("--executor", "ray needs Ray, which is not installed", RAY_INSTALL) from None
    return ray


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ExecutorError("--address", f"{address!r} is not host:port",
                            "give the head node's address as `ray start --head` prints it, e.g. 10.0.0.5:6379, "
                            "or auto; leave --address out to start a local Ray instance")
    return host.strip("[]"), int(port)


def check_executor(executor: str, address: str | None = None) -> None:
    """Refuse, before any work, an unknown executor, an --address without Ray, Ray not installed, or an
    address that is not host:port or where nothing answers."""
    if executor not in EXECUTORS:
        raise ExecutorError("--executor", f"unknown executor {executor!r}", f"use one of: {', '.join(EXECUTORS)}")
    if address is not None and executor != RAY:
        raise ExecutorError("--address", "is for a Ray cluster", "add --executor ray, or leave --address out")
    if executor != RAY:
        return
    _import_ray()
    if address is None or address in RAY_ADDRESS_WORDS:
        return
    host, port = _host_port(address)
    try:
        socket.create_connection((host, port), timeout=ADDRESS_PROBE_S).close()
    except OSError as e:
        raise ExecutorError("--address", f"nothing answers at {host}:{port} ({e.strerror or e})",
                            "start the cluster (ray start --head) or give its address; leave --address out "
                            "to start a local Ray instance") from None


# -- shards ---------------------------------------------------------------------------------------

def task_key(index: int, task) -> str:
    """A task's shard name: its position, and a hash of its repr (a changed task gets a new name)."""
    return f"{SHARD_PREFIX}{index:05d}-{hashlib.sha256(repr(task).encode()).hexdigest()[:16]}"


def shard_paths(shard_dir: str | os.PathLike) -> list[Path]:
    folder = Path(shard_dir)
    return sorted(folder.glob(f"{SHARD_PREFIX}*.parquet")) if folder.is_dir() else []


def remove_shards(shard_dir: str | os.PathLike) -> None:
    """Remove the shards (once the merged table has landed), and the folder if nothing else is in it."""
    for path in shard_paths(shard_dir):
        path.unlink(missing_ok=True)
    try:
        Path(shard_dir).rmdir()
    except OSError:  # absent, or holding files that are not ours
        pass


def _shard(fn: Callable, task, single_threaded: bool = False) -> bytes:
    """Run one task where it is scheduled; its table as Parquet bytes for the caller to land."""
    if single_threaded:  # one task per core already: nested Numba threads would oversubscribe
        numba.set_num_threads(1)
    return parquet_bytes(fn(task))


# -- executors ------------------------------------------------------------------------------------

def run_tasks(fn: Callable[[object], pd.DataFrame], tasks: Sequence, *, executor: str = LOCAL,
              address: str | None = None, jobs: int | None = None, shard_dir: str | os.PathLike | None = None,
              resume: bool = False, on_result: Callable[[int, pd.DataFrame, bool], None] | None = None,
              keys: Sequence[str] | None = None) -> list[pd.DataFrame]:
    """fn(task) for every task; the tables in task order. on_result(index, table, resumed) as each arrives.

    executor "local": a process pool of `jobs` workers (default: the CPU count; 1: in this process);
    "ray": Ray tasks, on the cluster at `address` (default: a local instance, started and stopped here,
    unless Ray is already initialised). With shard_dir, each table lands there as it arrives; with
    resume, the tables already there are read instead of run."""
    check_executor(executor, address)
    keys = list(keys) if keys is not None else [task_key(i, t) for i, t in enumerate(tasks)]
    shard_dir = Path(shard_dir) if shard_dir is not None else None
    tables: list[pd.DataFrame | None] = [None] * len(tasks)

    def land(index: int, data: bytes, resumed: bool = False) -> None:
        if shard_dir is not None and not resumed:
            atomic_write(shard_dir / f"{keys[index]}.parquet", lambda f: f.write(data), binary=True)
        tables[index] = read_parquet(data)
        if on_result is not None:
            on_result(index, tables[index], resumed)

    if shard_dir is not None and resume:
        for i, key in enumerate(keys):
            path = shard_dir / f"{key}.parquet"
            if path.is_file():
                land(i, path.read_bytes(), resumed=True)
    todo = [(i, tasks[i]) for i in range(len(tasks)) if tables[i] is None]
    if todo:
        (_run_ray if executor == RAY else _run_local)(fn, todo, land, jobs, address)
    return tables


def init_worker() -> None:
    """Worker initialiser: the workers already fill the cores; nested Numba threads would oversubscribe.
    Ctrl-C reaches the whole process group: the parent alone decides, so workers ignore it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    numba.set_num_threads(1)


@contextmanager
def sigint_ignored_while_spawning() -> Iterator[None]:
    """Workers start with SIGINT ignored: an ignored signal stays ignored across spawn's exec, and Python then
    leaves it so, covering the second or two in which a worker imports before init_worker runs. (A Ctrl-C in
    these few milliseconds of spawning is lost.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def stop_workers(pool: ProcessPoolExecutor) -> None:
    """On an interrupt or error: cancel what is queued and end the running workers now, not after their task."""
    processes = list((pool._processes or {}).values())  # the executor has no public handle on its workers
    pool.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        p.terminate()
    deadline = time.monotonic() + WORKER_STOP_S
    for p in processes:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(WORKER_STOP_S)


def _run_local(fn, todo, land, jobs, address) -> None:
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(todo)))
    if jobs == 1:
        for i, task in todo:
            land(i, _shard(fn, task))
        return
    with sigint_ignored_while_spawning():  # submitting starts the workers
        # spawn, not fork: Numba's parallel threading layer is not fork-safe once used.
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=init_worker)
        futures = {pool.submit(_shard, fn, task): i for i, task in todo}
    try:
        pending = set(futures)
        while pending:  # as each finishes, not in order: a finished shard lands while others still run
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=futures.get):
                land(futures[future], future.result())
    except BaseException:  # Ctrl-C (KeyboardInterrupt) or a failed task: no worker outlives the run
        stop_workers(pool)
        raise
    finally:
        pool.shutdown(cancel_futures=True)


def _connect_ray(ray, address: str | None, jobs: int | None) -> None:
    options = {"num_cpus": jobs} if address is None else {"address": address}
    try:
        # ray.init cut half-way leaves Ray's servers running, or crashes the process: a first Ctrl-C waits.
        with sigint_deferred(second_goes_through=True):
            try:
                ray.init(**options, include_dashboard=False, logging_level="WARNING")
            except BaseException:  # what a failed start left behind
                ray.shutdown()
                raise
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"at {address}" if address else "locally"
        raise ExecutorError("--address" if address else "--executor", f"cannot start or reach Ray {where} "
                            f"({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})",
                            "check the cluster (ray status) or leave --address out") from None


def start_ray(address: str | None = None, jobs: int | None = None) -> bool:
    """Ray initialised for several run_tasks calls (a plan's rounds): True if this call started it, and the
    caller then stops it (stop_ray)."""
    ray = _import_ray()
    if ray.is_initialized():
        return False
    _connect_ray(ray, address, jobs)
    return True


def stop_ray() -> None:
    _import_ray().shutdown()


def _run_ray(fn, todo, land, jobs, address) -> None:
    ray = _import_ray()
    started = not ray.is_initialized()  # an instance the caller set up is the caller's to stop
    try:
        if started:
            _connect_ray(ray, address, jobs)
        remote = ray.remote(num_cpus=1)(_shard)
        refs = {remote.remote(fn, task, True): i for i, task in todo}
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=RAY_POLL_S)
                for ref in done:
                    try:
                        data = ray.get(ref)
                    except ray.exceptions.RayTaskError as e:  # the task's own exception, not Ray's wrapper
                        raise (e.cause if isinstance(e.cause, BaseException) else e) from None
                    land(refs[ref], data)
        except BaseException:  # Ctrl-C or a failed task: what has not finished is cancelled; landed shards stay
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
    finally:
        if started:
            ray.shutdown()
