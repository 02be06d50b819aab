"""From raw measurements to a profile: its tables, the comments beside them (raw points the schema has no
field for), the provenance notes and the file's header; and the comparison with the H100 reference."""

from __future__ import annotations

import dataclasses
import math
from importlib.metadata import PackageNotFoundError, version

import numpy as np

from profiles import UvaProfile
from profiles.fit import best_per_core, copy_engines_from, fit_copy, fit_gather_curve, fit_linear_time, fit_uva_points
from profiles.reference import reference_figures
from profiles.uva import fit_cold_line_ns, gather_cold_lines
from profiles.writer import plain, sig
from tools.calibrate.assemble_mechanisms import critical_path_fields, engine_fields, gpu_mechanism_fields
from tools.calibrate.assemble_ssd import ssd_section
from tools.calibrate.formatting import format_points, human_bytes
from tools.calibrate.output import CalibrateError
from tools.calibrate.shapes import preset_shapes
from vocab.units import GiB, MiB


def tool_version() -> str:
    try:
        return version("engram-sim")
    except PackageNotFoundError:  # run from a checkout that is not installed
        return "dev"


# -- host ---------------------------------------------------------------------------------------------

def host_section(raw: dict, base) -> tuple[dict, list[str], list[str]]:
    """(host table, its comments, notes) from the CPU measurements; the engine's step from the GPU side's
    (else the base's)."""
    sysinfo = raw["system"]
    per_core, hash_best_t = best_per_core(raw["hash"])
    curve, max_threads = fit_gather_curve(raw["gather"])
    fixed = fit_linear_time(list(raw["gather_fixed"]), list(raw["gather_fixed"].values()))
    mem_best_t = max(raw["memcpy"], key=raw["memcpy"].get)
    host = {
        "cpu": f"{sysinfo['cpu']}, {sysinfo['cores']} cores",
        "cpu_cores": int(sysinfo["cores"]),
        "memory_gib": sig(sysinfo["memory_gib"], 3),
        "dram_gbps": sig(2 * raw["memcpy"][mem_best_t]),
        "hash_tokens_per_s_per_core": sig(per_core),
        "dedup_rows_per_s_per_core": sig(raw["dedup"]),
        "dedup_curve": [{"x": int(n), "y": sig(r)} for n, r in sorted(raw.get("dedup_curve", {}).items())],
        "cpu_gather_fixed_us": sig(fixed.fixed_us),
        "cpu_gather_max_threads": max_threads,
        "cpu_gather_per_thread": [{"x": p["x"], "y": sig(p["y"])} for p in curve],
    }
    if raw.get("hash_call"):
        host["hash_call_curve"] = [{"x": int(n), "y": sig(n / (us * 1e-6))} for n, us in sorted(raw["hash_call"].items())]
    if raw.get("sched_slice_us"):
        host["sched_slice_us"] = sig(raw["sched_slice_us"], 3)
    if "thread_wake_us" in raw:
        host["thread_wake_us"] = sig(raw["thread_wake_us"], 3)
    # Measured by `calibrate --device cpu` (a run on this CPU), not by these steps: kept from the base.
    for name in ("serve_step_fixed_us", "serve_step_per_seq_us", "fetch_pickup_us"):
        if getattr(base.host, name, None) is not None:
            host[name] = getattr(base.host, name)
    critical, critical_comments = critical_path_fields(raw)
    engine, engine_comments, notes = engine_fields(raw, base)
    host.update(engine)
    host.update(critical)
    engram = preset_shapes().engram
    threads = sorted(raw["hash"])
    comments = [
        "Raw points (the schema keeps only the fitted numbers for these):",
        f"hashing, tokens/s by threads ({engram.max_ngram_size - 1} orders x {engram.heads_per_order} heads): "
        f"{format_points(raw['hash'])}",
        f"  hash_tokens_per_s_per_core = rate / threads at the best count ({hash_best_t})",
        f"CPU gather into staging, payload GB/s by (row bytes, threads), "
        f"{human_bytes(raw['gather_table_bytes'])} table, sorted fresh ids:",
    ]
    for rb in sorted({r for r, _ in raw["gather"]}):
        comments.append(f"  {rb} B: " + ", ".join(f"{t}T {raw['gather'][(rb, t)]:.3g}" for t in threads
                                                  if (rb, t) in raw["gather"]))
    comments += [
        f"  per thread = best rate / cpu_gather_max_threads ({max_threads}: the fewest threads within 5 % of the best)",
        f"CPU gather call, us by rows (256 B, {max(threads)} threads): {format_points(raw['gather_fixed'])}",
        f"  fit: fixed {fixed.fixed_us:.3g} us + {fixed.per_item_ns:.3g} ns/row",
        f"memcpy payload GB/s by threads: {format_points(raw['memcpy'])} (dram_gbps = 2 x best: read + write)",
        f"dedup (np.unique with inverse, 1 thread): {raw['dedup']:.4g} lookups/s",
        *([f"hash_call_curve: real_runs.inputs.step_rows of one layer on 1 thread, us by tokens: "
           f"{format_points(raw['hash_call'], val_fmt='{:.3g}')}"] if raw.get("hash_call") else []),
        *([f"thread_wake_us: a 2-thread 4 MiB gather, us, OpenMP passive {raw['thread_wake']['PASSIVE']:.4g} "
           f"less active {raw['thread_wake']['ACTIVE']:.4g}"] if raw.get("thread_wake") else []),
        *([f"sched_slice_us: run length of two spinning processes on one core, p10/p50/p90 us: "
           + " / ".join(f"{v:.4g}" for v in raw["sched_slice_runs_us"])] if raw.get("sched_slice_us") else []),
        *critical_comments, *engine_comments,
    ]
    return host, comments, notes


# -- gpu, link, uva -----------------------------------------------------------------------------------

def gpu_sections(raw: dict, base) -> tuple[dict, dict, dict, dict, list[str]]:
    """(gpu, link, uva, comments by table, notes) from the GPU measurements."""
    gpu, gpu_comments, gpu_notes = gpu_table(raw, base)
    link, link_comments = link_table(raw)
    uva, uva_comments, notes = uva_table(raw, base)
    notes = gpu_notes + notes
    comments = {"gpu": gpu_comments, "link": link_comments}
    if uva_comments:
        comments["uva"] = uva_comments
    return gpu, link, uva, comments, notes


def gpu_table(raw: dict, base) -> tuple[dict, list[str], list[str]]:
    """(The gpu table, its comments, notes): matmul_efficiency from the layer shapes' rate over the large
    GEMM's, memory_efficiency from the memory-bound decode work's read rate over the device copy's (the base's
    without it); the mechanisms' curves and figures by assemble_mechanisms."""
    info = raw["gpu_info"]
    hbm_gib = info["total_bytes"] / GiB
    reserved = min(max(base.gpu.hbm_reserved_gib, info["context_bytes"] / GiB + 1.0), hbm_gib / 2)
    layers = raw["gemm_layers"]
    # A GEMM's FLOPs follow from its shape; the backbone's kernels record theirs.
    layer_tflops = (sum(v.get("flops", 2 * np.prod(v["shape"])) for v in layers.values())
                    / sum(v["s"] for v in layers.values()) / 1e12)
    large = raw["gemm_large"]["tflops"]
    mem = raw.get("memory_bound") or {}
    mem_gbps = sum(v["bytes"] for v in mem.values()) / sum(v["s"] for v in mem.values()) / 1e9 if mem else None
    gpu = {
        "name": info.get("nvml", {}).get("name") or info["name"],
        "hbm_gib": sig(hbm_gib, 3),
        "hbm_reserved_gib": sig(reserved, 3),
        "hbm_gbps": sig(raw["d2d_gbps"]),
        "bf16_tflops": sig(large),
        "fp8_tflops": base.gpu.fp8_tflops,
        "matmul_efficiency": sig(min(1.0, layer_tflops / large), 3),
        "memory_efficiency": (sig(min(1.0, mem_gbps / raw["d2d_gbps"]), 3) if mem_gbps
                              else base.gpu.memory_efficiency),
        "kernel_launch_us": sig(raw["launch_us"], 3),
        "kernels_per_layer": base.gpu.kernels_per_layer,
        "hbm_gather": [{"x": rb, "y": sig(v)} for rb, v in sorted(raw["hbm_gather"].items())],
        # read from the device (torch's L2_cache_size), else the base's
        "l2_mib": sig(info["l2_bytes"] / MiB) if info.get("l2_bytes") else base.gpu.l2_mib,
    }
    mechanisms, mechanism_comments, notes = gpu_mechanism_fields(raw, base, gpu["bf16_tflops"], gpu["hbm_gbps"])
    gpu.update(mechanisms)
    comments = [
        f"bf16 GEMM {raw['gemm_large']['n']}^3: {large:.4g} TFLOP/s; real layer shapes (Engram-27B prefill "
        f"chunk) {layer_tflops:.4g} TFLOP/s together:",
        *[f"  {name} {v['shape'][0]}x{v['shape'][1]} @ {v['shape'][1]}x{v['shape'][2]}: {v['tflops']:.4g} TFLOP/s"
          for name, v in layers.items()],
        *([f"memory_efficiency: memory-bound decode work {mem_gbps:.4g} GB/s together / hbm_gbps:",
           *[f"  {name} {'x'.join(map(str, v['shape']))}: {human_bytes(v['bytes'])} read in "
             f"{v['s'] * 1e6:.4g} us, {v['gbps']:.4g} GB/s" for name, v in mem.items()]] if mem else []),
        f"hbm_gbps: device-to-device copy of {human_bytes(raw['d2d_bytes'])}, read + write",
        f"hbm_gather: index_select (bf16 rows, random ids with repeats) from a "
        f"{human_bytes(raw['hbm_table_bytes'])} table, payload GB/s",
        f"kernel_launch_us: {raw['launch_us']:.3g} us per back-to-back tiny kernel",
        *mechanism_comments,
    ]
    return gpu, comments, notes


def link_table(raw: dict) -> tuple[dict, list[str]]:
    """The link table: copy fits of the pinned copies, the kind from NVML, copy engines from both at once."""
    nv = raw["gpu_info"].get("nvml", {})
    h2d_sizes = sorted(raw["h2d"])
    h2d = fit_copy(h2d_sizes, [raw["h2d"][s] for s in h2d_sizes])
    d2h_sizes = sorted(raw["d2h"])
    d2h = fit_copy(d2h_sizes, [raw["d2h"][s] for s in d2h_sizes])
    gen, width = nv.get("pcie_gen"), nv.get("pcie_width")
    kind = f"PCIe Gen{gen} x{width}" if gen and width else (
        f"PCIe (generation and width not read: {nv.get('reason', 'NVML gave none')})")
    link = {
        "kind": kind,
        "h2d_gbps": sig(h2d.peak_gbps),
        "d2h_gbps": sig(d2h.peak_gbps),
        "copy_fixed_us": sig(h2d.fixed_us),
        "copy_engines": copy_engines_from(h2d.peak_gbps, d2h.peak_gbps, raw["bidir_gbps"]),
        "pageable_h2d_gbps": sig(max(raw["h2d_pageable"].values())),
        "h2d_points": [{"x": s, "y": sig(raw["h2d"][s])} for s in h2d_sizes],
    }
    comments = [
        f"D2H pinned GB/s by bytes: {format_points(raw['d2h'])} (fit: peak {d2h.peak_gbps:.4g}, "
        f"fixed {d2h.fixed_us:.3g} us)",
        f"H2D pageable GB/s by bytes: {format_points(raw['h2d_pageable'])}",
        f"D2H pageable GB/s by bytes: {format_points(raw['d2h_pageable'])}",
        f"H2D + D2H at once ({human_bytes(raw['bidir_bytes'])} each way): {raw['bidir_gbps']:.4g} GB/s "
        f"together -> copy_engines {link['copy_engines']}",
    ]
    return link, comments


def uva_table(raw: dict, base) -> tuple[dict, list[str], list[str]]:
    """(uva table, its comments, notes): the model fitted to the zero-copy points, else the base's."""
    pts = raw.get("uva")
    if not pts:
        return (dataclasses.asdict(base.uva), [],
                [f"uva copied from the base profile: the zero-copy gather could not run here "
                 f"({raw['gpu_info'].get('uva_reason') or 'no points'})"])
    fit, max_gbps, fit_pts, max_err = fit_uva_points(pts)
    uva = {"fixed_us": sig(fit.fixed_us), "row_ns": sig(fit.row_ns), "byte_ps": sig(fit.byte_ps),
           "walk_ns": sig(fit.walk_ns), "translation_unit_kib": fit.translation_unit_kib,
           "tlb_reach_gib": fit.tlb_reach_gib, "miss_exponent": fit.miss_exponent, "max_gbps": sig(max_gbps)}
    model = UvaProfile(fit.fixed_us, fit.row_ns, fit.byte_ps, fit.walk_ns, fit.translation_unit_kib,
                       fit.tlb_reach_gib, fit.miss_exponent, max_gbps, upper_line_mib=base.uva.upper_line_mib)
    cold, cold_comments, notes = cold_line_fields(raw, model, base)
    uva.update(cold)
    uva["points"] = [{"table_gib": p["table_gib"], "row_bytes": p["row_bytes"], "rows": p["rows"],
                      "us": sig(p["us"])} for p in pts]
    comments = [
        "uva_gather (Triton) from one pinned host table (mmap + MADV_HUGEPAGE + cudaHostRegister), sorted "
        "fresh ids every step; smaller footprints use the table's first part",
        f"translation part fitted on the {len(fit_pts)} of {len(pts)} points not limited by max_gbps; "
        f"the whole model's max relative error over all points {max_err:.1%}",
        *cold_comments,
    ]
    rand = raw.get("uva_random") or []
    if rand:
        slow = [p["us_random"] / p["us_sorted"] for p in rand]
        comments += [
            f"the same ids in random order (the simulator assumes sorted, as the stores do): "
            f"x{min(slow):.3g} to x{max(slow):.3g} the sorted time:",
            *[f"  {p['table_gib']} GiB, {p['row_bytes']} B x {p['rows']}: sorted {p['us_sorted']:.4g} us, "
              f"random {p['us_random']:.4g} us" for p in rand]]
        notes.append(f"zero-copy gathers in random id order took x{min(slow):.3g}-x{max(slow):.3g} the sorted "
                     f"time ({len(rand)} points; the model is fitted on sorted ids)")
    return uva, comments, notes


def cold_line_fields(raw: dict, model, base) -> tuple[dict, list[str], list[str]]:
    """(cold_line_ns and upper_line_mib, comments, notes): cold_line_ns fitted to the gathers timed warm and
    after an L2 flush (profiles.uva.fit_cold_line_ns, with the model just fitted), else the base's;
    upper_line_mib is the base's (the MMU's page-table format, not a timing)."""
    line_mib = base.uva.upper_line_mib
    fields = {"upper_line_mib": line_mib}
    comments = [f"upper_line_mib {line_mib:g} from the base profile: the table one L2 line of upper-level "
                "page-table entries maps (the MMU's format), not timed"]
    pts = raw.get("uva_cold") or []
    cold, used = fit_cold_line_ns(model, pts, line_mib) if pts else (0.0, [])
    if not used:
        why = "not timed" if not pts else "no point was translation-bound"
        fields["cold_line_ns"] = base.uva.cold_line_ns
        comments.append(f"cold_line_ns {base.uva.cold_line_ns:g} from the base profile (see its comment there): "
                        f"the gathers warm and after an L2 flush were {why}")
        return fields, comments, [f"uva.cold_line_ns from the base profile ({why} here)"]
    fields["cold_line_ns"] = sig(cold)
    flush = raw.get("uva_cold_flush_bytes", 0)
    comments += [
        f"cold_line_ns: least-squares slope of (after an L2 flush - back to back) over the modelled cold "
        f"upper-level lines, {len(used)} of {len(pts)} points (the translation-bound ones); the flush: a device "
        f"copy of {human_bytes(flush)} (L2 {human_bytes(raw.get('l2_bytes', 0))}) before each timed gather, "
        "outside its events:",
        *[f"  {p['table_gib']} GiB, {p['row_bytes']} B x {p['rows']}: back to back {p['us_warm']:.4g} us, "
          f"flushed {p['us_cold']:.4g} us, {gather_cold_lines(model, p['rows'], p['table_gib'] * GiB):.4g} lines"
          for p in pts]]
    return fields, comments, []


# -- the whole profile --------------------------------------------------------------------------------

@dataclasses.dataclass
class _Sections:
    """The gpu, link and uva tables (measured or the base's), and what the provenance says of them."""
    gpu: dict
    link: dict
    uva: dict
    comments: dict
    notes: list
    machine: str
    description: str
    method_gpu: str


def _common_notes(sysinfo: dict) -> list[str]:
    notes = [
        "host.dram_gbps is an estimate: numpy copy bandwidth counted as read + write (2 x payload), best over "
        "threads, not a DRAM peak",
        "host.dedup_rows_per_s_per_core: real_runs.stores.dedup (np.unique with inverse) on one thread",
        "raw points without a schema field (hashing and gather by threads, gather call times, memcpy) are "
        "comments in this file",
    ]
    if sysinfo["numba_threads"] < sysinfo["cores"]:
        notes.append(f"Numba threads capped at {sysinfo['numba_threads']} of {sysinfo['cores']} cores "
                     f"(NUMBA_NUM_THREADS)")
    return notes


def _cpu_only_parts(base, base_name: str, base_desc: str, machine: str, common_notes: list) -> _Sections:
    notes = [f"measured here: host (cpu, cpu_cores, memory_gib, dram_gbps, hash_tokens_per_s_per_core, "
             f"dedup_rows_per_s_per_core, dedup_curve, cpu_gather_fixed_us, cpu_gather_max_threads, "
             f"cpu_gather_per_thread, "
             f"critical_hash_fixed_us, critical_hash_ns_per_token, sort_rows_per_s, hash_call_curve, "
             f"sched_slice_us, thread_wake_us); NOT measured (--cpu-only): "
             f"gpu, link and uva are copied unchanged from the {base_desc}, and so are host.engine_step_fixed_us "
             f"and engine_step_per_seq_us (the engine's step is measured on a GPU)"] + common_notes
    return _Sections(plain(base.gpu), plain(base.link), plain(base.uva), {}, notes, machine,
                       f"CPU side measured on {machine}; GPU, link and UVA from {base_name}", "")


def _gpu_parts(raw: dict, base, base_desc: str, machine: str, common_notes: list) -> _Sections:
    gpu, link, uva, comments, gpu_notes = gpu_sections(raw, base)
    info = raw["gpu_info"]
    measured = "host, gpu, link" + (", uva" if raw.get("uva") else "")
    from_base = "gpu.fp8_tflops, " + ("" if raw.get("memory_bound") else "gpu.memory_efficiency, ")
    notes = [f"measured here: {measured}; {from_base}gpu.kernels_per_layer "
             f"come from the {base_desc}; gpu.hbm_reserved_gib is the CUDA context measured "
             f"({info['context_bytes'] / GiB:.2f} GiB) + 1 GiB, at least the base's"] + gpu_notes + common_notes
    pin_notes = [f"pinning with torch pin_memory: {raw['pin_torch_s_per_gib']:.3g} s/GiB"]
    if "pin_register_small_s_per_gib" in raw:
        pin_notes.append(f"mmap + MADV_HUGEPAGE + cudaHostRegister: {raw['pin_register_small_s_per_gib']:.3g} "
                         f"s/GiB ({human_bytes(raw['pin_bytes'])})")
    if "pin_register_s_per_gib" in raw:
        pin_notes.append(f"{raw['pin_register_s_per_gib']:.3g} s/GiB for the {raw['uva_table_pinned_gib']} GiB "
                         "UVA table")
    gpu_desc = gpu["name"]
    if info.get("nvml", {}).get("driver"):
        gpu_desc += f", driver {info['nvml']['driver']}"
    gpu_desc += f", {link['kind']}"
    return _Sections(gpu, link, uva, comments, notes + ["; ".join(pin_notes)], f"{gpu_desc}, {machine}",
                       f"Measured on {gpu['name']} ({link['kind']}), {raw['system']['cpu']} "
                       f"{raw['system']['cores']} cores",
                       f", CUDA events on GPU (torch {info['torch']}, CUDA {info['cuda']})")


def assemble(raw: dict, base, base_name: str, out_name: str, today: str, quick: bool, cpu_only: bool) -> tuple:
    """(profile dict, comments by table, header lines) from the raw measurements."""
    host, host_comments, host_notes = host_section(raw, base)
    sysinfo = raw["system"]
    version = tool_version()
    bp = base.provenance
    base_desc = (f"base profile '{base_name}' ({bp.source}, {bp.machine}, {bp.date}"
                 f"{'; ' + bp.method if bp.method else ''})")
    machine = f"{sysinfo['cpu']}, {sysinfo['cores']} cores, {sysinfo['memory_gib']:.1f} GiB"
    common_notes = _common_notes(sysinfo)
    parts = (_cpu_only_parts(base, base_name, base_desc, machine, common_notes) if cpu_only
             else _gpu_parts(raw, base, base_desc, machine, host_notes + common_notes))
    flags = f"{' --quick' if quick else ''}{' --cpu-only' if cpu_only else ''}"
    ssd = ssd_section(raw) if "ssd" in raw else None      # the drive, with --ssd-path
    if ssd:
        flags += " --ssd-path"
        parts.notes.extend(ssd[2])
    profile = {
        "name": out_name,
        "description": parts.description,
        "provenance": {
            "source": "measured",
            "machine": parts.machine,
            "date": today,
            "method": (f"engram-sim calibrate {version}{flags}: medians of repeats after warm-up; "
                       f"time.perf_counter on host{parts.method_gpu}; the project's kernels (NgramHasher, Numba "
                       f"gather_rows, dedup{'' if cpu_only else ', uva_gather'}); fits by profiles/fit.py"),
            "notes": ". ".join(parts.notes),
        },
        "gpu": parts.gpu, "link": parts.link, "uva": parts.uva, "host": host,
    }
    if ssd:
        profile["ssd"] = ssd[0]
        parts.comments["ssd"] = ssd[1]
    if cpu_only:
        measured = f"host only (--cpu-only); gpu, link and uva are copies of {base_name}."
    else:
        measured = "host, gpu, link" + (", uva." if raw.get("uva") else f"; uva from {base_name}.")
    header = [f"{out_name}: measured by `engram-sim calibrate` {version} on {today}.",
              f"Machine: {parts.machine}.",
              f"Sections measured: {measured}" + (f" And ssd, on {raw['drive']['device']}." if ssd else "")]
    check_finite(profile)
    return profile, {"host": host_comments, **parts.comments}, header


def check_finite(data, path="") -> None:
    """Refuse a NaN or infinite figure (a measurement gone wrong) before anything is written."""
    data = plain(data)
    if isinstance(data, dict):
        for k, v in data.items():
            check_finite(v, f"{path}.{k}" if path else k)
    elif isinstance(data, list):
        for i, v in enumerate(data):
            check_finite(v, f"{path}[{i}]")
    elif isinstance(data, float) and not math.isfinite(data):
        raise CalibrateError("calibrate", f"measured {path} is {data}", "nothing was written; measure again")


# -- comparison with the reference ----------------------------------------------------------------------

def _compared_figures(raw: dict, gpu_measured: bool) -> list[tuple]:
    """(reference key, measured value, what was measured) for the figures the reference has."""
    rows = []
    hash_best_t = max(raw["hash"], key=raw["hash"].get)
    rows.append(("hash_best", raw["hash"][hash_best_t], f"{hash_best_t} threads"))
    if 1 in raw["hash"]:
        rows.append(("hash_1", raw["hash"][1], "1 thread"))
    for rb in (256, 1024, 4096):
        pts = {t: v for (r, t), v in raw["gather"].items() if r == rb}
        if pts:
            t = max(pts, key=pts.get)
            rows.append((f"cpu_gather_{rb}", pts[t], f"{t} threads"))
    if gpu_measured:
        for key, name in (("h2d_gbps", "h2d"), ("d2h_gbps", "d2h")):
            n = max(raw[name])
            rows.append((key, raw[name][n], human_bytes(n)))
        rows.append(("d2d_gbps", raw["d2d_gbps"], human_bytes(raw["d2d_bytes"])))
        rows.append(("bf16_tflops", raw["gemm_large"]["tflops"], f"{raw['gemm_large']['n']}^3"))
        if 1024 in raw["hbm_gather"]:
            rows.append(("hbm_gather_1k", raw["hbm_gather"][1024], f"{human_bytes(raw['hbm_table_bytes'])} table"))
    return rows


def comparison(raw: dict, gpu_measured: bool) -> list[str]:
    """Lines comparing measured figures with the H100 reference (profiles/reference/)."""
    reference = reference_figures()
    lines = ["Compared with the H100 reference (profiles/reference/, summarised in H100.md):"]
    if not gpu_measured:
        lines.append(f"  (CPU figures only; the machines differ: this one has {raw['system']['cores']} cores of "
                     f"{raw['system']['cpu']}, the reference 16 vCPU Intel Xeon)")
    for key, measured, where in _compared_figures(raw, gpu_measured):
        what, ref, unit = reference[key]
        scale = 1e6 if unit == "tokens/s" else 1.0
        u = "M tokens/s" if unit == "tokens/s" else unit
        lines.append(f"  {what:40s} reference {ref / scale:9.4g} {u:10s} measured {measured / scale:9.4g} "
                     f"({where}): x{measured / ref:.2f}")
    return lines
