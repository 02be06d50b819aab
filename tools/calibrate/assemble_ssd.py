"""The [ssd] table from the drive measurements (measure_ssd.py), its comments and its provenance notes."""

from __future__ import annotations

from profiles.writer import sig
from tools.calibrate.formatting import human_bytes
from vocab.units import GiB


def ssd_section(raw: dict) -> tuple[dict, list[str], list[str]]:
    """(ssd table, its comments, notes) from raw["ssd"] and the drive's facts raw["drive"]."""
    m, drive = raw["ssd"], raw["drive"]
    points = m["random"]
    depths = sorted(points)
    block = m["block_bytes"]
    seq = m["seq"]
    table = {
        "name": f"{drive['device']} ({drive['fs_type']}), measured in {drive['folder']}",
        "capacity_gib": sig(drive["free_bytes"] / GiB, 4),
        "random_read_iops": [{"x": d, "y": sig(points[d]["iops"])} for d in depths],
        "seq_read_gbps": sig(seq["gbps"]),
        "read_block_bytes": block,
        "random_read_latency_us": [{"x": d, "y": sig(points[d]["latency_us"])} for d in depths],
        "read_cpu_us": sig(m["read_cpu_us"], 3),
        "gds": False,
    }
    lo, med, hi = m["read_cpu_spread_us"]
    comments = [
        f"Measured with real_runs/direct_io.DirectReader (the SSD store's reads): O_DIRECT preadv of "
        f"{human_bytes(block)} blocks at random, one read in flight per thread (x = threads), on a "
        f"{human_bytes(drive['file_bytes'])} test file of random bytes (written, fsynced, dropped from the page "
        f"cache, removed afterwards)",
        "random reads by depth: " + ", ".join(f"{d}: {points[d]['iops']:.4g}/s, {points[d]['latency_us']:.3g} us "
                                              f"({points[d]['reads']} reads a call)" for d in depths),
        "  latency = depth x call seconds / reads (each thread is busy the whole call: Little's law)",
        f"seq_read_gbps: {human_bytes(seq['block_bytes'])} blocks, {seq['threads']} threads each reading its own "
        f"contiguous share, {human_bytes(seq['call_bytes'])} a call",
        f"read_cpu_us: process CPU time per read at depth 1 (min/median/max over batches {lo:.3g}/{med:.3g}/"
        f"{hi:.3g} us)",
    ]
    skipped = [d for d in m["depths_asked"] if d not in points]
    notes = [f"measured here: ssd (random_read_iops, random_read_latency_us, seq_read_gbps, read_cpu_us) on "
             f"{drive['folder']}, device {drive['device']} ({drive['fs_type']}, mounted at {drive['mount_point']}, "
             f"st_dev {drive['st_dev']}, rotational {drive['rotational']}), with the SSD store's O_DIRECT reader on "
             f"a {human_bytes(drive['file_bytes'])} test file; ssd.capacity_gib is the file system's free space "
             f"at calibration, not the drive's size; ssd.gds is not probed (false)"]
    if skipped:
        notes.append(f"ssd depths {', '.join(map(str, skipped))} not measured (--quick: IOPS had stopped rising)")
    return table, comments, notes
