"""Shared bandwidth: concurrent transfers share links by max-min fairness.

SimPy models discrete servers; a PCIe direction or host DRAM is better seen as
a fluid pipe that concurrent transfers share. Each transfer names the pipes it
crosses (with a weight: a CPU gather reads and writes DRAM, weight 2) and may
have its own rate cap (a translation-limited GPU gather cannot use the whole
link). Whenever a transfer starts or ends, rates are recomputed by progressive
filling and the next completion is scheduled; stale timers are ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import simpy


@dataclass(eq=False)
class Transfer:
    nbytes: float
    uses: dict[str, float]
    cap: float
    done: simpy.Event
    remaining: float = field(init=False)
    rate: float = 0.0

    def __post_init__(self):
        self.remaining = self.nbytes


class SharedBandwidth:
    def __init__(self, env: simpy.Environment, capacities: dict[str, float]):
        self.env = env
        self.capacities = dict(capacities)
        self.active: list[Transfer] = []
        self.bytes_moved = {name: 0.0 for name in capacities}
        # The core pipes' schedulers (sim.resources.CorePool), by pipe, shared by every GPU on them.
        self.core_pools: dict = {}
        self._last = 0.0
        self._generation = 0

    def transfer(self, nbytes: float, uses: dict[str, float], cap: float = math.inf) -> simpy.Event:
        """An event that fires when `nbytes` of payload have crossed every pipe in `uses`."""
        done = self.env.event()
        unknown = set(uses) - set(self.capacities)
        if unknown:
            raise KeyError(f"unknown pipes {sorted(unknown)}")
        if nbytes <= 0:
            done.succeed()
            return done
        self._advance()
        self.active.append(Transfer(nbytes, dict(uses), cap, done))
        self._reschedule()
        return done

    def _advance(self) -> None:
        dt = self.env.now - self._last
        self._last = self.env.now
        if dt <= 0:
            return
        for t in self.active:
            moved = min(t.remaining, t.rate * dt)
            t.remaining -= moved
            for name, w in t.uses.items():
                self.bytes_moved[name] += moved * w

    def _assign_rates(self) -> None:
        """Progressive filling: raise all unfrozen rates together until a pipe or a cap binds."""
        if len(self.active) == 1:  # most calls: one transfer takes its cap or its narrowest pipe
            t = self.active[0]
            # The same float operations as one round of the general loop (0.0 + level is level).
            t.rate = max(min([self.capacities[n] / w for n, w in t.uses.items()] + [t.cap]), 0.0)
            return
        free = dict(self.capacities)
        unfrozen = list(self.active)
        for t in unfrozen:
            t.rate = 0.0
        while unfrozen:
            load = {}
            for t in unfrozen:
                for name, w in t.uses.items():
                    load[name] = load.get(name, 0.0) + w
            level = min([free[n] / load[n] for n in load] + [t.cap - t.rate for t in unfrozen])
            level = max(level, 0.0)
            for t in unfrozen:
                t.rate += level
                for name, w in t.uses.items():
                    free[name] -= level * w
            saturated = {n for n in load if free[n] <= 1e-9 * self.capacities[n]}
            still = [t for t in unfrozen
                     if t.cap - t.rate > 1e-9 * max(t.rate, 1.0) and not (saturated & t.uses.keys())]
            if len(still) == len(unfrozen):
                break
            unfrozen = still

    def _reschedule(self) -> None:
        self._assign_rates()
        # Done: no bytes left, or so little time left that the clock cannot represent it
        # (at t = 300 s a float step is ~6e-14 s; waiting for it would loop forever).
        horizon = 1e-12 * max(1.0, self.env.now)
        finished = [t for t in self.active
                    if t.remaining <= 1e-9 * t.nbytes or (t.rate > 0 and t.remaining / t.rate <= horizon)]
        if finished:
            self.active = [t for t in self.active if t not in finished]
            for t in finished:
                t.remaining = 0.0
                t.done.succeed()
            self._assign_rates()
        self._generation += 1
        if not self.active:
            return
        next_done = min(t.remaining / t.rate if t.rate > 0 else math.inf for t in self.active)
        if math.isinf(next_done):
            raise RuntimeError("transfers are stalled: a pipe has zero capacity")
        generation = self._generation
        timer = self.env.timeout(max(next_done, horizon))
        timer.callbacks.append(lambda _ev: self._on_timer(generation))

    def _on_timer(self, generation: int) -> None:
        if generation != self._generation:
            return
        self._advance()
        self._reschedule()
