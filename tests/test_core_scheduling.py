"""The host's cores as the OS hands them out (sim.resources.CorePool, CpuThread)."""

from __future__ import annotations

import dataclasses

import pytest
import simpy

from profiles import load_profile
from sim.resources import HOST_CORES, SharedResources
from vocab.config import load_config


def resources(cores: int, slice_us: float):
    profile = load_profile("dev-vm-cpu")
    profile = dataclasses.replace(profile, host=dataclasses.replace(profile.host, cpu_cores=cores,
                                                                    sched_slice_us=slice_us))
    env = simpy.Environment()
    return env, SharedResources(env, profile, load_config("tiny").placement)


def run_jobs(env, res, jobs):
    """Each job a list of CPU work (seconds) one thread does back to back; the time each job ends."""
    ends = {}

    def job(name, pieces):
        thread = res.thread()
        for seconds in pieces:
            yield from thread.run(seconds)
        ends[name] = env.now
    for name, pieces in jobs.items():
        res.spawn(job(name, pieces))
    env.run()
    return ends


def test_more_threads_than_cores_queue_and_run_to_completion_within_a_slice():
    env, res = resources(cores=2, slice_us=4000)
    ends = run_jobs(env, res, {"a": [1e-3], "b": [1e-3], "c": [1e-3]})
    # two run at once at full speed; the third waits for a core (no sharing: the OS does not preempt
    # a thread before its slice ends)
    assert sorted(ends.values()) == pytest.approx([1e-3, 1e-3, 2e-3])


def test_a_short_slice_takes_turns_and_approaches_sharing():
    env, res = resources(cores=1, slice_us=10)
    ends = run_jobs(env, res, {"a": [1e-3], "b": [1e-3]})
    # round robin in 10 us turns: both end near 2 ms, neither at 1 ms
    assert min(ends.values()) > 1.9e-3 and max(ends.values()) == pytest.approx(2e-3)


def test_a_thread_keeps_its_core_across_consecutive_work():
    env, res = resources(cores=1, slice_us=4000)
    ends = run_jobs(env, res, {"a": [0.5e-3, 0.5e-3], "b": [1e-3]})
    # a's second piece follows its first without b getting in between (a has not used up its slice)
    assert ends == pytest.approx({"a": 1e-3, "b": 2e-3})


def test_a_blocked_thread_gives_its_core_to_a_waiting_one():
    env, res = resources(cores=1, slice_us=4000)
    ends = {}

    def a():
        thread = res.thread()
        yield from thread.run(1e-3)
        yield from thread.wait(env.timeout(5e-3))   # blocks (I/O, a copy): b runs meanwhile
        yield from thread.run(1e-3)
        ends["a"] = env.now

    def b():
        yield from res.thread().run(2e-3)
        ends["b"] = env.now
    res.spawn(a())
    res.spawn(b())
    env.run()
    assert ends == pytest.approx({"a": 7e-3, "b": 3e-3})


def test_a_parallel_region_splits_its_work_over_threads_that_each_take_a_core():
    env, res = resources(cores=2, slice_us=4000)
    ends = {}

    def region():
        yield from res.thread().run_parallel(2e-3, 2)
        ends["region"] = env.now

    def other():
        yield from res.thread().run(3e-3)
        ends["other"] = env.now
    res.spawn(other())
    res.spawn(region())
    env.run()
    # one core is taken: the region's first half runs at once; its second waits for a core, and gets the one
    # its first thread gives up when it has done its half and waits at the region's end
    assert ends == pytest.approx({"other": 3e-3, "region": 2e-3})
    # every core-second crossed the core pool
    assert res.net.bytes_moved[HOST_CORES] == pytest.approx(5e-3)


def test_the_pool_never_runs_more_threads_than_cores():
    env, res = resources(cores=2, slice_us=50)
    running, peak = [0], [0]

    def job():
        thread = res.thread()
        for _ in range(20):
            yield from thread._core()
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            yield env.timeout(10e-6)
            running[0] -= 1
            thread.release()
    for _ in range(5):
        res.spawn(job())
    env.run()
    assert peak[0] == 2


def test_sleeping_helpers_join_a_parallel_call_late_and_never_make_it_faster():
    ends = {}
    for helpers in ("spin", "sleep"):
        profile = load_profile("dev-vm-cpu")
        profile = dataclasses.replace(profile, host=dataclasses.replace(profile.host, thread_wake_us=100.0))
        env = simpy.Environment()
        res = SharedResources(env, profile, load_config("tiny").with_placement(helper_threads=helpers).placement)

        def region():
            yield from res.thread().run_parallel(2e-3, 2)
            ends[helpers] = env.now
        res.spawn(region())
        env.run()
    # 1 ms a thread; a sleeping helper starts 100 us late and the call waits for it
    assert ends == pytest.approx({"spin": 1e-3, "sleep": 1.1e-3})


def test_the_fetch_pickup_delays_every_fetch_and_never_speeds_a_step():
    from sim.engine import simulate
    cfg = load_config("tiny").with_placement(kind="host_dma")
    profile = load_profile("dev-vm-cpu")
    fast = simulate(cfg, dataclasses.replace(profile, host=dataclasses.replace(profile.host, fetch_pickup_us=0.0)),
                    steps=8, check_capacity=False)
    slow = simulate(cfg, dataclasses.replace(profile, host=dataclasses.replace(profile.host, fetch_pickup_us=500.0)),
                    steps=8, check_capacity=False)
    assert slow.summary["fetch_time_s"] == pytest.approx(fast.summary["fetch_time_s"] + 500e-6, rel=1e-6)
    assert slow.summary["step_time_s"] >= fast.summary["step_time_s"]


def test_the_ssd_stores_own_work_lengthens_its_fetch_by_what_the_profile_says():
    from sim.engine import simulate
    cfg = load_config("real_runs/records/tiny-ssd.toml").with_placement(kind="ssd")
    profile = load_profile("dev-vm-cpu")
    none = dataclasses.replace(profile.ssd, store_call_fixed_us=0.0, store_row_ns=0.0, store_cache_row_ns=0.0)
    some = dataclasses.replace(profile.ssd, store_call_fixed_us=100.0, store_row_ns=1000.0, store_cache_row_ns=0.0)
    a = simulate(cfg, dataclasses.replace(profile, ssd=none), steps=6, check_capacity=False)
    b = simulate(cfg, dataclasses.replace(profile, ssd=some), steps=6, check_capacity=False)
    rows = float(a.fetches["unique_rows"].mean())
    assert b.summary["fetch_time_s"] - a.summary["fetch_time_s"] == pytest.approx(100e-6 + rows * 1e-6, rel=0.05)
