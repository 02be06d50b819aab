"""--set KEY=VALUE: one config field from the command line, validated as the TOML file is."""

import pytest

from cli.main import main
from vocab.config import load_config
from vocab.errors import ConfigError
from vocab.units import GiB


def test_a_set_changes_exactly_that_field_with_the_value_read_as_toml():
    cfg = load_config("engram-27b")
    edited = cfg.with_set("workload.sequences=128").with_set("placement.kind=host_dma").with_set(
        "workload.scheduler.policy='chunked'").with_set("workload.scheduler.graph_batch_sizes=[1, 2, 4]")
    assert edited.workload.sequences == 128 and edited.placement.kind == "host_dma"
    assert edited.workload.scheduler.policy == "chunked" and edited.workload.scheduler.graph_batch_sizes == [1, 2, 4]
    assert edited.backbone == cfg.backbone and edited.engram == cfg.engram


def test_a_set_table_size_replaces_the_other_way_of_sizing_it():
    cfg = load_config("tiny")  # sized by table_rows_per_order
    assert cfg.with_set("engram.table_gib=0.5").engram.total_table_bytes == pytest.approx(0.5 * GiB, rel=1e-3)


@pytest.mark.parametrize("assignment, field", [
    ("workload.sequencs=3", "workload.sequencs"), ("workload.sequences=0", "workload.sequences"),
    ("workload.sequences=abc", "workload.sequences"), ("placement.kind=nowhere", "placement.kind"),
    ("workload.sequences.deeper=1", "workload.sequences"), ("no-equals-sign", "no-equals-sign"),
])
def test_a_bad_set_names_its_field(assignment, field):
    with pytest.raises(ConfigError) as e:
        load_config("engram-27b").with_set(assignment)
    assert e.value.field == field


def test_the_cli_refuses_a_bad_set_in_one_line_naming_the_flag(capsys, tmp_path):
    out = tmp_path / "r.json"
    assert main(["simulate", "tiny", "--set", "workload.sequencs=3", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--set workload.sequencs" in err[0] and "sequences" in err[0]
    assert not out.exists()
    assert main(["simulate", "tiny", "--set", "workload.sequences=8", "--steps", "4", "--out", str(out)]) == 0
    assert out.exists()
