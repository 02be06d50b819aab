"""The committed ssd records of this machine's drive: their DRAM caches were warmed before the measured steps,
so the hit rates and block reads they measured are the steady state the simulator predicts (computed, not timed)."""

from pathlib import Path

import pytest

from profiles import load_profile
from sim.engine import simulate
from vocab.config import from_dict
from vocab.records import read_record

RECORDS = sorted((Path(__file__).resolve().parents[1] / "real_runs" / "records").glob("tiny-cpu-ssd-*-dram25.json"))


@pytest.mark.parametrize("path", RECORDS, ids=lambda p: p.name)
def test_warmed_dram_caches_hit_as_the_simulators_steady_state(path):
    record = read_record(path)
    assert record.extra["setup"]["dram_warmup_steps"] > 0
    f = record.fetches
    cfg = from_dict(record.config).with_steps(len(record.steps))
    p = simulate(cfg, load_profile("dev-vm-cpu"), check_capacity=False).fetches
    measured, predicted = f.dram_hits.sum() / f.unique_rows.sum(), p.dram_hits.sum() / p.unique_rows.sum()
    assert measured > 0.4 and predicted == pytest.approx(measured, abs=0.08)   # a cold cache hit 0-7 %
    assert p.ssd_reads.mean() == pytest.approx(f.ssd_reads.mean(), rel=0.25)
