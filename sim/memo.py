"""Replaying identical steps instead of simulating them again.

With the fetch side idle when a step starts, the step is a function of which
trace step it computes and which trace steps it launches fetches for; the
DES cycles the trace, so such a step repeats. The first one that also ends
with the fetch side idle is kept as offsets from its start; later ones are
replayed from it (same times, bytes and events, shifted).

The functions read and write a sim.engine.Simulation: its env, logs, ready
events, and shared resources (pipe bytes, event list).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StepMemo:
    """One step simulated from an idle fetch side, as offsets from its start."""
    duration: float
    wait_offsets: list
    stalls: list
    fetches: list          # (fetch start, [end per layer]) of the fetches launched at the step's start
    pipe_bytes: dict
    events: list


class StepMemos:
    def __init__(self, n_plans: int, enabled: bool = True):
        self.n_plans = n_plans
        self.enabled = enabled
        self.memos: dict[tuple, StepMemo] = {}
        self.replayed = 0

    def key(self, step: int, new: list[int]) -> tuple:
        """The trace step computed, and (offset, trace step) of each fetch launched."""
        return step % self.n_plans, tuple((n - step, n % self.n_plans) for n in new)

    def find(self, key: tuple, quiet: bool) -> StepMemo | None:
        return self.memos.get(key) if quiet and self.enabled else None

    @staticmethod
    def mark(sim) -> tuple:
        """What the step's kept memo is measured from: pipe bytes and events so far."""
        return dict(sim.res.net.bytes_moved), len(sim.res.events)

    def keep(self, sim, key: tuple, step: int, new: list[int], t0: float, mark: tuple) -> None:
        if not self.enabled:
            return
        log, logs, res = sim.logs[step], sim.logs, sim.res
        self.memos[key] = StepMemo(
            duration=log.end - t0,
            wait_offsets=[x - t0 for x in log.wait_start], stalls=list(log.stall),
            fetches=[(logs[n].fetch_start - t0, [e - t0 for e in logs[n].fetch_end]) for n in new],
            pipe_bytes={name: v - mark[0][name] for name, v in res.net.bytes_moved.items()},
            events=[(a, nm, st - t0, en - t0, sp - step, ly) for a, nm, st, en, sp, ly in res.events[mark[1]:]],
        )

    def replay(self, sim, memo: StepMemo, step: int, new: list[int]):
        """DES process: step `step` as `memo` says, its fetches already in HBM."""
        env, res = sim.env, sim.res
        t0 = env.now
        log = sim.logs[step]
        log.wait_start = [t0 + x for x in memo.wait_offsets]
        log.stall = list(memo.stalls)
        for n, (start, ends) in zip(new, memo.fetches):
            sim.logs[n].fetch_start = t0 + start
            sim.logs[n].fetch_end = [t0 + e for e in ends]
            sim.ready[n] = [None] * len(sim.layer_ids)  # already in HBM
        for name, v in memo.pipe_bytes.items():
            res.net.bytes_moved[name] += v
        if res.record_events:
            res.events.extend((a, nm, t0 + st, t0 + en, step + sp, ly) for a, nm, st, en, sp, ly in memo.events)
        self.replayed += 1
        yield env.timeout(memo.duration)
        sim.ready.pop(step, None)
        log.end = env.now
