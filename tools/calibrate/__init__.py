"""`engram-sim calibrate`: measure this machine into a hardware profile.

    engram-sim calibrate [--out profiles/NAME.toml] [--quick] [--cpu-only] [--base PROFILE]

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
  CPU model, cores and memory.
- GPU side (with a CUDA GPU, unless --cpu-only): H2D/D2H pinned and pageable
  copies versus size, both directions at once, device-to-device bandwidth, HBM
  gather versus row bytes, zero-copy gather versus row bytes x table footprint x
  rows per step (sorted ids, and random order at 16K rows), bf16 matmul on a
  large GEMM and on real layer shapes, the backbone's own expert (grouped mm)
  and attention kernels in prefill (-> matmul_efficiency) and decode
  (memory-bound -> memory_efficiency), kernel launch overhead, pinned-allocation
  rates, NVML facts.
  With --cpu-only the gpu, link and uva sections are copied from --base and the
  provenance says so.

The profile is written atomically (a temporary file in the target folder,
validated by profiles.load_profile, then moved into place): nothing is written
when a measurement or the validation fails.

Modules: plan (how much to measure), shapes, measure_cpu, measure_gpu, assemble (the profile's tables,
notes and the reference comparison), output (the path and the atomic write), command (the command).
"""

from tools.calibrate.command import register, run_calibrate

__all__ = ["register", "run_calibrate"]
