"""`engram-sim calibrate`: measure this machine into a hardware profile.

    engram-sim calibrate [--out profiles/NAME.toml] [--quick] [--cpu-only] [--base PROFILE]
                         [--ssd-path FOLDER [--ssd-size-gib N]]

Every figure is the median of repeated timings after a warm-up (host timings by
time.perf_counter, GPU timings by CUDA events), taken with the project's own
kernels: N-gram hashing (real_runs/hashing.py), the Numba gather into staging
and the dedup (real_runs/stores.py), the zero-copy gather (real_runs/cuda_gather.py).
Curves are fitted with profiles/fit.py and written (profiles/writer.py) with the
raw points beside the fitted numbers; points the profile schema has no field for
are written as comments in the TOML. Kernel shapes are Engram-27B's, read from its
preset (shapes.py).

- CPU side (always): hashing rate versus threads, CPU gather into staging versus
  threads and row bytes, the gather's fixed cost, dedup rate, memcpy bandwidth,
  CPU model, cores and memory; the host's critical path of a decode step (the
  NumPy reference hash of one layer over B windows, np.sort of B x 16 ids, at
  several B -> critical_hash_fixed_us, critical_hash_ns_per_token, sort_rows_per_s).
- GPU side (with a CUDA GPU, unless --cpu-only): H2D/D2H pinned and pageable
  copies versus size, both directions at once, device-to-device bandwidth, HBM
  gather versus row bytes, zero-copy gather versus row bytes x table footprint x
  rows per step (sorted ids, and random order at 16K rows), bf16 matmul on a
  large GEMM and on real layer shapes, the backbone's own expert (grouped mm)
  and attention kernels in prefill (-> matmul_efficiency) and decode
  (memory-bound -> memory_efficiency), kernel launch overhead, pinned-allocation
  rates, NVML facts; and the figures of the simulator's end-to-end mechanisms:
  a GEMM ladder over rows at the layer's (K, N) (-> matmul_curve), decode attention
  over a ladder of KV caches (-> memory_curve), a CUDA graph of K tiny kernels
  against K eager launches (-> graph_launch_us, graph_kernel_gap_us), the
  contention probe (a decode layer alone and beside a zero-copy gather at several
  grids, and beside an H2D copy -> sm_count, uva_rows_per_cta, uva_interference),
  and the real runner's gap between steps (-> engine_step_fixed_us, _per_seq_us).
  With --cpu-only the gpu, link and uva sections are copied from --base and the
  provenance says so.
- The drive (with --ssd-path; drive.py, measure_ssd.py, assemble_ssd.py): on a test
  file of random bytes in FOLDER (2 GiB, 1 with --quick; always removed), with the SSD
  store's O_DIRECT reader: random 4 KiB reads/s and latency by reads in flight (1-64
  threads), sequential GB/s, CPU per read, the file system's free space -> [ssd].
  `python -m tools.drive_bench --ssd-path FOLDER` cross-checks these against fio.

Every measured figure is checked against its physical bounds (bounds.py, data in one place) and each
measurement's repeats against their spread (the median at most SPREAD_LIMIT times the fastest; the
min/median/max of every measurement are comments in the profile). A step whose figures fail is re-measured
(at most MAX_REMEASURES times); a figure still out is flagged: a comment beside it, a line in
provenance.notes and a warning on stderr (sanity.py).

The profile is written atomically (a temporary file in the target folder,
validated by profiles.load_profile, then moved into place): nothing is written
when a measurement or the validation fails.

Modules: plan (how much to measure), bounds and sanity (the checks), shapes, measure_cpu, measure_gpu (with measure_rates, measure_sharing
and measure_engine for the mechanisms), assemble (the profile's tables, notes and the reference comparison;
assemble_mechanisms for the mechanisms' figures), output (the path and the atomic write), command (the
command), probe (`python -m tools.calibrate.probe`: the mechanisms' GPU figures alone, over a base profile).
"""

from tools.calibrate.command import register, run_calibrate

__all__ = ["register", "run_calibrate"]
