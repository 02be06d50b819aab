"""The [ssd] table from the drive measurements (measure_ssd.py), its comments and its provenance notes."""

from __future__ import annotations

import numpy as np

from profiles.writer import sig
from tools.calibrate.formatting import human_bytes
from vocab.units import GiB


def read_call_costs(calls: dict, points: dict) -> tuple[float, float, dict]:
    """(read_call_fixed_us, read_handoff_us, {n: extra us}) from calls of n reads, one per thread: a call's
    extra over one read's latency at depth n (the IOPS curve's, from many reads a call) is fixed + handoff x n,
    fitted by least squares over the n the curve has; both at least 0."""
    extra = {n: calls[n] * 1e6 - points[n]["latency_us"] for n in sorted(calls) if n in points}
    if not extra:
        raise ValueError("no read call size matches a measured depth of the IOPS curve")
    n = np.array(list(extra), dtype=float)
    y = np.array(list(extra.values()))
    if n.size == 1:
        return max(0.0, float(y[0])), 0.0, extra
    handoff, fixed = np.polyfit(n, y, 1)
    if handoff < 0:   # a flat or falling extra: all of it is the call's
        return max(0.0, float(np.mean(y))), 0.0, extra
    if fixed < 0:     # through the origin: all of it is hand-offs
        return 0.0, max(0.0, float(n @ y / (n @ n))), extra
    return float(fixed), float(handoff), extra


def store_call_costs(points: list[dict]) -> tuple[float, float, float, float]:
    """(store_call_fixed_us, store_row_ns, store_cache_call_us, store_cache_row_ns) from the store's own time by
    unique rows: a line through the calls without a DRAM cache, and a line through the cache's extra over them
    (its lookup, update and fill calls cost something a call however few rows); all at least 0."""
    def line(pairs):
        n = np.array([r for r, _ in pairs], float)
        y = np.array([u for _, u in pairs])
        if n.size >= 2:
            per_row, fixed = np.polyfit(n, y, 1)
        else:
            per_row, fixed = 0.0, float(y[0]) if y.size else 0.0
        if fixed < 0:   # through the origin: all of it is per row
            return 0.0, max(0.0, float(n @ y / (n @ n)))
        if per_row < 0:  # flat: all of it is per call
            return max(0.0, float(np.mean(y))), 0.0
        return float(fixed), float(per_row)

    plain = sorted((p["rows"], p["us"]) for p in points if not p["cache"])
    cached = {p["rows"]: p["us"] for p in points if p["cache"]}
    fixed, per_row = line(plain)
    extra = [(r, cached[r] - (fixed + per_row * r)) for r, _ in plain if r in cached]
    cache_fixed, cache_row = line(extra) if extra else (0.0, 0.0)
    return fixed, per_row * 1e3, cache_fixed, cache_row * 1e3


def ssd_section(raw: dict) -> tuple[dict, list[str], list[str]]:
    """(ssd table, its comments, notes) from raw["ssd"] and the drive's facts raw["drive"]."""
    m, drive = raw["ssd"], raw["drive"]
    points = m["random"]
    depths = sorted(points)
    block = m["block_bytes"]
    seq = m["seq"]
    fixed, handoff, extra = read_call_costs(m["calls"], points)
    table = {
        "name": f"{drive['device']} ({drive['fs_type']}), measured in {drive['folder']}",
        "capacity_gib": sig(drive["free_bytes"] / GiB, 4),
        "random_read_iops": [{"x": d, "y": sig(points[d]["iops"])} for d in depths],
        "seq_read_gbps": sig(seq["gbps"]),
        "read_call_fixed_us": sig(fixed, 3),
        "read_handoff_us": sig(handoff, 3),
        "read_block_bytes": block,
        "random_read_latency_us": [{"x": d, "y": sig(points[d]["latency_us"])} for d in depths],
        "read_cpu_us": sig(m["read_cpu_us"], 3),
        "gds": False,
    }
    if m.get("store"):
        s_fixed, s_row, c_fixed, c_row = store_call_costs(m["store"])
        table.update(store_call_fixed_us=sig(s_fixed, 3), store_row_ns=sig(s_row, 3),
                     store_cache_call_us=sig(c_fixed, 3), store_cache_row_ns=sig(c_row, 3))
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
        f"read_cpu_us: process CPU time per read at depth {m.get('read_cpu_threads', 1)} (min/median/max over batches {lo:.3g}/{med:.3g}/"
        f"{hi:.3g} us)",
        "read_call_fixed_us + read_handoff_us x n: fitted to calls of n reads, one per reader thread, less one "
        "read's latency at depth n: " + ", ".join(
            f"{k}: {m['calls'][k] * 1e6:.3g} us ({v:+.3g})" for k, v in extra.items()),
    ]
    if m.get("store"):
        comments.append("store_*: real_runs/ssd_store.SsdStore.prefetch on a 16 MiB table in the same folder, its "
                        "time less its reads, copies and dedup, us by unique rows: " + ", ".join(
                            f"{p['rows']}{' cached' if p['cache'] else ''}: {p['us']:.3g}" for p in m["store"]))
    skipped = [d for d in m["depths_asked"] if d not in points]
    notes = [f"measured here: ssd (random_read_iops, random_read_latency_us, seq_read_gbps, read_cpu_us, "
             f"read_call_fixed_us, read_handoff_us{', store_*' if m.get('store') else ''}) on "
             f"{drive['folder']}, device {drive['device']} ({drive['fs_type']}, mounted at {drive['mount_point']}, "
             f"st_dev {drive['st_dev']}, rotational {drive['rotational']}), with the SSD store's O_DIRECT reader on "
             f"a {human_bytes(drive['file_bytes'])} test file; ssd.capacity_gib is the file system's free space "
             f"at calibration, not the drive's size; ssd.gds is not probed (false)"]
    if skipped:
        notes.append(f"ssd depths {', '.join(map(str, skipped))} not measured (--quick: IOPS had stopped rising)")
    return table, comments, notes
