"""A server of several GPUs (sim.server): one GPU is the single-GPU result, shared pipes only slow steps,
shards move the bytes the topology says, bytes are conserved across links, and bad input is one line."""

import dataclasses
import tomllib

import numpy as np
import pytest

from cli.main import main
from profiles import load_profile, shipped_path
from profiles.writer import dump_toml
from sim.engine import simulate
from sim.server import simulate_server
from sim.topology import Topology
from tests.conftest import synthetic_trace
from vocab.config import load_config
from vocab.errors import CapacityError, ConfigError, ProfileError

DGX = load_profile("dgx-h100")
H100 = load_profile("h100-sxm")


def tiny(placement="host_dma", steps=6, **deployment):
    cfg = load_config("tiny").with_placement(placement).with_steps(steps)
    return cfg.with_deployment(**deployment) if deployment else cfg


def dgx_with(tmp_path, **server):
    """dgx-h100 with [server] fields replaced, through its TOML (so it validates as a file does)."""
    data = tomllib.loads(shipped_path("dgx-h100").read_text())
    data["server"].update(server)
    path = tmp_path / "server.toml"
    path.write_text(dump_toml(data))
    return path


def narrow(profile=DGX, uplink_gbps=2.0):
    """The profile with slow switch uplinks, so that two GPUs behind one switch contend for it."""
    switches = [dataclasses.replace(s, uplink_gbps=uplink_gbps) for s in profile.server.switches]
    return dataclasses.replace(profile, server=dataclasses.replace(profile.server, switches=switches))


def busy(placement="host_dma", **deployment):
    """A decode step that moves enough rows to load the shared pipes (a synthetic trace: fixed shape)."""
    cfg = load_config("engram-27b").with_placement(placement).with_workload(sequences=256, steps=4)
    cfg = cfg.with_deployment(**deployment) if deployment else cfg
    return cfg, synthetic_trace(cfg, steps=2)


@pytest.mark.parametrize("placement", ["host_dma", "host_uva", "hbm", "ssd"])
def test_one_gpu_in_the_server_topology_gives_the_single_gpu_result(placement):
    cfg = tiny(placement)
    for profile in (H100, DGX):
        alone = Topology(profile, cfg.deployment).gpu_view(0)  # GPU 0's node as its whole host
        single = simulate(cfg, alone, memoize=False)
        server = simulate_server(cfg, profile).gpus[0]
        assert server.steps.equals(single.steps) and server.fetches.equals(single.fetches)
        assert server.summary == single.summary
    # Without a [server] section the host is [host]: the same pipes under their server names.
    moved = simulate_server(cfg, H100).pipe_bytes
    for name, nbytes in simulate(cfg, H100).pipe_bytes.items():
        assert moved.get({"pcie_h2d": "pcie_h2d/g0", "host_dram": "host_dram/n0",
                          "ssd_drive": "ssd_drive/g0"}[name], 0.0) == pytest.approx(nbytes, rel=1e-9)


@pytest.mark.parametrize("placement", ["host_dma", "host_uva"])
def test_more_gpus_sharing_a_pipe_never_make_a_step_faster(placement):
    cfg, trace = busy(placement)
    profile = narrow()
    runs = [simulate_server(cfg.with_deployment(gpus=n), profile, trace, check_capacity=False) for n in (1, 2, 4, 8)]
    steps = [r.gpus[0].summary["step_time_s"] for r in runs]
    assert steps == sorted(steps)
    assert steps[1] > steps[0]  # GPU 1 shares GPU 0's switch uplink: its fetch is slower, and exposed
    assert runs[1].summary["busiest_pipe"] == "uplink/s0" and runs[1].summary["busiest_pipe_full"] > 0


def test_replicas_run_side_by_side_with_the_same_trace_and_the_same_answer_where_nothing_is_shared():
    cfg, trace = busy("hbm")
    one = simulate_server(cfg, DGX, trace, check_capacity=False)
    eight = simulate_server(cfg.with_deployment(gpus=8), DGX, trace, check_capacity=False)
    assert eight.summary["tokens_per_s"] == pytest.approx(8 * one.summary["tokens_per_s"], rel=1e-9)
    assert {r.summary["step_time_s"] for r in eight.gpus} == {one.summary["step_time_s"]}


def test_bytes_are_conserved_across_links():
    cfg, trace = busy("host_dma", gpus=8, gather_numa="any", host_copies="per_server")
    r = simulate_server(cfg, DGX, trace, check_capacity=False)
    moved = r.pipe_bytes
    for name in moved:  # every pipe's bytes are its GPUs' bytes
        assert sum(g.pipe_bytes.get(name, 0.0) for g in r.gpus) == pytest.approx(moved[name], rel=1e-9)
    for j, switch in enumerate(DGX.server.switches):
        assert moved[f"uplink/s{j}"] == pytest.approx(sum(moved[f"pcie_h2d/g{i}"] for i in switch.gpus), rel=1e-9)
    payload = sum(g.steps["host_bytes"].sum() for g in r.gpus)
    # host_dma: DRAM reads the table and writes staging (CPU), and the copy engine reads staging: 3 bytes each.
    assert moved["host_dram/n0"] + moved["host_dram/n1"] == pytest.approx(3 * payload, rel=1e-9)
    # Threads on either node, pages on either node, staging on the GPU's: half of the table reads and half of
    # the staging writes cross the socket link.
    assert moved["cross_socket/to_n0"] + moved["cross_socket/to_n1"] == pytest.approx(payload, rel=1e-9)
    local = simulate_server(cfg.with_deployment(gather_numa="local", host_copies="per_numa"), DGX, trace,
                            check_capacity=False)
    assert local.pipe_bytes["cross_socket/to_n0"] == local.pipe_bytes["cross_socket/to_n1"] == 0.0


@pytest.mark.parametrize("over", ["group", "server"])
def test_sharded_tables_move_the_bytes_the_topology_says(over):
    g = 4
    cfg = tiny("host_dma", gpus=4, tensor_parallel=g if over == "group" else 1, table="shard", shard_over=over)
    whole = simulate_server(cfg.with_deployment(table="replicate"), DGX)
    r = simulate_server(cfg, DGX)
    rb = cfg.engram.row_bytes
    unique = whole.gpus[0].fetches["unique_rows"].sum()
    for i, gpu in enumerate(r.gpus):
        # (g - 1) / g of the step's rows out of each GPU and into it, over its NVLink.
        assert r.pipe_bytes[f"nvlink_out/g{i}"] == pytest.approx((g - 1) / g * unique * rb, rel=1e-9)
        assert r.pipe_bytes[f"nvlink_in/g{i}"] == r.pipe_bytes[f"nvlink_out/g{i}"]
    fetched = sum(gpu.fetches["host_rows"].sum() for gpu in r.gpus)
    if over == "group":  # the group's members fetch the step's rows once between them
        assert fetched == unique
    else:  # each owner fetches what all replicas ask of its slice: more than one replica's rows, at most all
        assert unique < fetched <= g * unique
    assert r.summary["tokens_per_s"] > 0


def test_tensor_parallel_ranks_split_the_layers_wait_for_each_other_and_all_reduce():
    cfg, trace = busy("hbm", gpus=8)
    dp = simulate_server(cfg, DGX, trace, check_capacity=False)
    tp = simulate_server(cfg.with_deployment(tensor_parallel=8), DGX, trace, check_capacity=False)
    dp_step, tp_step = dp.gpus[0].summary["step_time_s"], tp.gpus[0].summary["step_time_s"]
    # Faster per step, but not 8x: launches stay whole and each layer pays two all-reduces.
    assert dp_step / 8 < tp_step < dp_step
    assert len({tuple(r.steps["step_time_s"]) for r in tp.gpus}) == 1  # the group moves as one
    assert tp.summary["tokens_per_s"] < dp.summary["tokens_per_s"]
    slow_nvlink = dataclasses.replace(DGX, server=dataclasses.replace(DGX.server, nvlink_gbps=36.0))
    slower = simulate_server(cfg.with_deployment(tensor_parallel=8), slow_nvlink, trace, check_capacity=False)
    assert slower.gpus[0].summary["step_time_s"] > tp_step


def test_same_config_and_seed_same_result():
    cfg = tiny("host_uva", gpus=8, tensor_parallel=2, table="shard")
    a, b = simulate_server(cfg, DGX), simulate_server(cfg, DGX)
    assert a.summary == b.summary and a.pipe_bytes == b.pipe_bytes
    assert all(x.steps.equals(y.steps) for x, y in zip(a.gpus, b.gpus))


def test_capacity_is_per_gpu_hbm_and_per_numa_node_host_memory():
    cfg = load_config("engram-27b").with_placement("host_dma").with_table_gib(1200).with_deployment(gpus=8)
    trace = synthetic_trace(cfg, steps=2)
    r = simulate_server(cfg, DGX, trace, steps=2, check_capacity=False)
    # One copy per node does not fit a node's 1 TiB; one interleaved copy or slices do.
    assert r.capacity.startswith("does not fit: host memory") and "NUMA node 0" in r.capacity
    with pytest.raises(CapacityError, match="NUMA node 0"):
        simulate_server(cfg, DGX, trace, steps=2)
    for fix in ({"host_copies": "per_server"}, {"table": "shard", "tensor_parallel": 8}):
        assert simulate_server(cfg.with_deployment(**fix), DGX, trace, steps=2).capacity == ""
    hbm = cfg.with_placement("hbm").with_table_gib(200)
    assert "HBM" in simulate_server(hbm, DGX, trace, steps=2, check_capacity=False).capacity
    assert simulate_server(hbm.with_deployment(table="shard", tensor_parallel=8), DGX, trace, steps=2).capacity == ""


def test_bad_deployments_and_topologies_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="deployment.tensor_parallel: 3 does not divide gpus=8"):
        tiny(gpus=8, tensor_parallel=3)
    with pytest.raises(ConfigError, match="deployment.shard_over"):
        tiny(gpus=8, tensor_parallel=2, table="shard", shard_over="server")
    with pytest.raises(ConfigError, match="deployment.gpus: 16 is more than dgx-h100 has"):
        simulate_server(tiny(gpus=16), DGX)
    with pytest.raises(ConfigError, match="deployment.gpus: 2 .*no \\[server\\] section"):
        simulate_server(tiny(gpus=2), H100)
    with pytest.raises(ProfileError, match="server.nvlink_gbps"):
        simulate_server(tiny(gpus=2, tensor_parallel=2), load_profile(dgx_with(tmp_path, nvlink_gbps=0.0)))
    numa = tomllib.loads(shipped_path("dgx-h100").read_text())["server"]["numa"]
    numa[1]["gpus"] = [3, 4, 5, 6]  # GPU 3 twice, GPU 7 nowhere
    with pytest.raises(ProfileError, match=r"server.numa\[\].gpus: list GPUs .* exactly once"):
        load_profile(dgx_with(tmp_path, numa=numa))
    numa[1]["gpus"], numa[1]["cores"] = [4, 5, 6, 7], 48
    with pytest.raises(ProfileError, match="host.cpu_cores: is 112 but server.numa's cores sum to 104"):
        load_profile(dgx_with(tmp_path, numa=numa))
    switches = [{"gpus": [0, 1], "uplink_gbps": 54.3}]
    with pytest.raises(ProfileError, match=r"server.switches\[\].gpus"):
        load_profile(dgx_with(tmp_path, switches=switches))


@pytest.mark.parametrize("argv, pattern", [
    (["--set", "deployment.gpus=9"], "deployment.gpus: 9 is more than dgx-h100 has"),
    (["--set", "deployment.tensor_parallel=3"], "deployment.tensor_parallel: 3 does not divide"),
    (["--set", "deployment.table=halves"], "deployment.table: unknown value"),
])
def test_the_cli_prints_bad_deployments_in_one_line_with_exit_2(capsys, argv, pattern):
    code = main(["simulate", "tiny", "--profile", "dgx-h100", "--steps", "3", "--set", "deployment.gpus=8", *argv])
    err = capsys.readouterr().err
    assert code == 2 and pattern in err and len(err.strip().splitlines()) == 1


def test_simulate_prints_the_server_and_its_pipes(tmp_path, capsys):
    rec = tmp_path / "r.json"
    code = main(["simulate", "tiny", "--profile", "dgx-h100", "--steps", "4", "--set", "deployment.gpus=8",
                 "--set", "deployment.table=shard", "--set", "deployment.tensor_parallel=2", "--out", str(rec)])
    out = capsys.readouterr().out
    assert code == 0 and rec.is_file()
    assert "8 GPU(s), 4 replica(s) x tensor parallel 2" in out
    for key in ("tokens_per_s_per_gpu", "overhead_vs_hbm", "overhead_vs_none", "busiest_pipe", "nvlink_out/g7",
                "uplink/s3", "host_dram/n1"):
        assert key in out
    assert np.isfinite(float(out.split("overhead_vs_none")[1].split()[0]))
