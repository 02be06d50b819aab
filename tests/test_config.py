"""The configuration schema: presets, derived sizes, and one-line errors."""

import pytest

from vocab.config import from_dict, load_config, preset_names
from vocab.errors import ConfigError

GiB = 1 << 30


def test_presets_load_with_the_papers_sizes():
    names = set(preset_names())
    assert {"engram-27b", "engram-40b", "moe-27b-100b", "dense-4b-100b", "dense-8b-100b", "tiny"} <= names
    e27 = load_config("engram-27b").engram
    assert e27.row_bytes == 160 and e27.tables_per_layer == 16
    assert e27.total_table_bytes / 2 == pytest.approx(5.79e9, rel=0.01)      # 5.7B parameters
    assert load_config("engram-40b").engram.total_table_bytes / 2 == pytest.approx(18.5e9, rel=0.01)
    for name in ("moe-27b-100b", "dense-4b-100b", "dense-8b-100b"):
        e = load_config(name).engram
        assert e.layer_ids == [1]
        assert e.total_table_bytes / 2 == pytest.approx(100e9, rel=0.01)     # 100B parameters


def test_table_gib_derives_prime_rows_per_head():
    cfg = load_config("engram-27b").with_table_gib(64.0)
    sizes = cfg.engram.table_sizes
    assert set(sizes) == {1, 14}
    primes = [p for layer in sizes.values() for order in layer for p in order]
    assert len(set(primes)) == len(primes) == 32
    assert cfg.engram.total_table_bytes == pytest.approx(64 * GiB, rel=1e-4)


def test_replace_keeps_one_size_field():
    cfg = load_config("engram-27b")
    c2 = cfg.with_table_gib(2.0)
    assert c2.engram.table_rows_per_order is None and c2.engram.table_gib == 2.0
    assert cfg.engram.table_gib is None  # the original is untouched


BASE = {
    "name": "t",
    "backbone": {"name": "b", "layers": 4, "hidden_size": 64, "intermediate_size": 128,
                 "attention": {"heads": 4, "kv_heads": 2, "head_dim": 16}},
    "engram": {"layer_ids": [1], "table_rows_per_order": [100, 100], "d_mem": 64},
}


def _with(path, value):
    import copy
    d = copy.deepcopy(BASE)
    node = d
    *parents, leaf = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return d


@pytest.mark.parametrize("path,value,pattern", [
    ("engram.layer_ids", [7], r"engram\.layer_ids\[0\]: 7 is outside 0\.\.3"),
    ("engram.d_mem", 65, r"engram\.d_mem: 65 is not divisible"),
    ("engram.table_gib", 1.0, r"engram\.table_gib: give exactly one of"),
    ("placement.kind", "nvme", r"placement\.kind: unknown value 'nvme'; use one of 'none', 'hbm'"),
    ("placement.kind", "hbm_cache", r"placement\.cache_gib: hbm_cache needs exactly one"),
    ("workload.phase", "train", r"workload\.phase: unknown value 'train'"),
    ("workload.sequences", 0, r"workload\.sequences: must be >= 1"),
    ("workload.steps", "many", r"workload\.steps: got 'many'; use a whole number"),
    ("backbone.attention.kv_heads", 3, r"backbone\.attention\.kv_heads: 3 does not divide heads=4"),
    ("backbone.layerz", 3, r"backbone\.layerz: unknown field; did you mean 'layers'\?"),
    ("workload.lengths", {"dist": "uniform", "low": 50, "high": 10}, r"workload\.lengths\.low: need 1 <= low <= high"),
])
def test_bad_configs_name_the_field_and_the_fix(path, value, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        from_dict(_with(path, value))
    assert "\n" not in str(info.value)


def test_missing_required_field():
    d = _with("engram", {"table_rows_per_order": [10, 10]})
    with pytest.raises(ConfigError, match=r"engram\.layer_ids: missing; add layer_ids"):
        from_dict(d)


def test_unknown_config_file_or_preset():
    with pytest.raises(ConfigError, match="no such config file or preset"):
        load_config("nope.toml")


def test_extends_merges_over_a_preset(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('extends = "engram-27b"\nname = "mine"\n[engram]\ntable_gib = 128.0\n[placement]\nkind = "host_dma"\n')
    cfg = load_config(f)
    assert cfg.name == "mine" and cfg.placement.kind == "host_dma"
    assert cfg.engram.table_rows_per_order is None
    assert cfg.backbone.layers == 30


def test_typed_edits_validate_and_keep_one_cache_size_field():
    cfg = load_config("engram-27b")
    c = cfg.with_placement("hbm_cache", cache_fraction=0.1).with_placement(cache_gib=2.0)
    assert c.placement.cache_gib == 2.0 and c.placement.cache_fraction is None
    with pytest.raises(ConfigError, match="placement.kind"):
        cfg.with_placement("tpu")
    with pytest.raises(ConfigError, match="placement.cache_gib"):
        cfg.with_placement("hbm_cache")          # a cache needs a size
    with pytest.raises(ConfigError, match="engram.layer_ids"):
        cfg.with_engram(layer_ids=[1, 99])       # outside the backbone
    assert cfg.with_workload(lengths={"dist": "fixed", "low": 7, "high": 7}).workload.lengths.low == 7
