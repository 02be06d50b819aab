"""Timing of real runs: one clock for host timestamps and CUDA events, an NVML sampler, the machine.

- `Timeline`: intervals on named actors (the record's EVENT_COLUMNS). A *mark*
  is a host time.perf_counter_ns() or a CUDA event (recorded on a stream);
  intervals are stored as mark pairs and resolved to seconds from the run's
  start by `resolve()` once the GPU is synchronised. CUDA events are put on
  the host clock through reference events recorded at known host times (one
  at the start, one per step by `anchor()`), interpolated between them.
- `NvmlSampler`: a thread sampling PCIe RX/TX throughput, SM clock, memory
  used and power every `interval_s`; {"available": false, "reason": ...}
  where pynvml (nvidia-ml-py) or a GPU is missing.
- `describe_machine()`: GPU name, driver, PCIe generation/width, CPU model,
  cores, host memory, software versions; built from the machine facts here
  (`cpu_model`, `memory_gib`, `available_gib`, `numba_max_threads`, `nvml_info`),
  which `engram-sim calibrate` reads too.
"""

from __future__ import annotations

import os
import platform
import threading
import time
from pathlib import Path

import numba
import numpy as np

from vocab.units import GiB

Mark = object  # int (host ns) or torch.cuda.Event


def nvml_index(cuda_index: int) -> int:
    """NVML's index of the GPU that CUDA calls `cuda_index` (NVML ignores CUDA_VISIBLE_DEVICES)."""
    ids = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if cuda_index < len(ids) and ids[cuda_index].isdigit():
        return int(ids[cuda_index])
    return cuda_index


class Timeline:
    def __init__(self, cuda: bool = False, device=None):
        self.cuda = cuda
        self.device = device
        self.t0_ns = time.perf_counter_ns()
        self._pending: list[tuple] = []
        self._lock = threading.Lock()
        self._ref = None
        if cuda:
            import torch

            torch.cuda.synchronize(device)
            self._ref = torch.cuda.Event(enable_timing=True)
            # The stream is idle: the event completes as soon as it is recorded.
            self._ref.record()
            self._ref_ns = time.perf_counter_ns()
            self._ref.synchronize()
        self._anchors: list[tuple] = []     # (event, host ns) pairs taken by anchor()
        self._offsets = None                # (GPU s, host - GPU s) arrays, built once the GPU is synchronised

    @staticmethod
    def now() -> int:
        return time.perf_counter_ns()

    def mark(self, stream=None) -> Mark:
        """A CUDA event on `stream` (default: the current stream) when timing CUDA, else host ns."""
        if not self.cuda:
            return time.perf_counter_ns()
        import torch

        ev = torch.cuda.Event(enable_timing=True)
        ev.record(stream)
        return ev

    def anchor(self) -> None:
        """Tie the GPU clock to the host clock again, now. Call it when the current stream is idle (after a
        read-back): the event then completes as it is recorded. The host clock (CLOCK_MONOTONIC, slewed
        by NTP) and the GPU timer drift apart by tens of ppm: milliseconds over a minute's run, as much as
        a fetch takes; `seconds` interpolates between anchors."""
        if not self.cuda:
            return
        import torch

        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        self._anchors.append((ev, time.perf_counter_ns()))
        ev.synchronize()
        self._offsets = None

    def _gpu_to_host(self):
        if self._offsets is None:
            gpu = [0.0] + [self._ref.elapsed_time(ev) * 1e-3 for ev, _ in self._anchors]
            host = [(self._ref_ns - self.t0_ns) * 1e-9] + [(ns - self.t0_ns) * 1e-9 for _, ns in self._anchors]
            order = np.argsort(gpu, kind="stable")
            g = np.asarray(gpu)[order]
            self._offsets = (g, (np.asarray(host)[order] - g))
        return self._offsets

    def add(self, actor: str, name: str, start: Mark, end: Mark, step: int = -1, layer: int = -1) -> None:
        with self._lock:
            self._pending.append((actor, name, start, end, step, layer))

    def seconds(self, mark: Mark) -> float:
        """Seconds since the timeline's start (CUDA marks: only after they completed)."""
        if isinstance(mark, int):
            return (mark - self.t0_ns) * 1e-9
        if mark is None:
            return float("nan")
        g = self._ref.elapsed_time(mark) * 1e-3
        gpu, offset = self._gpu_to_host()
        return g + float(np.interp(g, gpu, offset))     # the offset of the anchors around it

    def resolve(self) -> list[tuple]:
        """All intervals as (actor, name, start_s, end_s, step, layer), sorted by start."""
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)
        with self._lock:
            pending = list(self._pending)
        rows = [(a, n, self.seconds(s), self.seconds(e), step, layer) for a, n, s, e, step, layer in pending]
        rows.sort(key=lambda r: r[2])
        return rows


class NvmlSampler:
    """Samples NVML counters in a background thread between start() and stop()."""

    def __init__(self, interval_s: float = 0.02, device_index: int = 0, t0_ns: int | None = None):
        self.interval_s = interval_s
        self.device_index = device_index
        self.t0_ns = t0_ns if t0_ns is not None else time.perf_counter_ns()
        self._stop = threading.Event()
        self._thread = None
        self.samples = {"t_s": [], "pcie_rx_bytes_per_s": [], "pcie_tx_bytes_per_s": [], "sm_clock_mhz": [],
                        "memory_used_bytes": [], "power_w": []}
        self.reason = None
        self._nvml = None
        self._handle = None
        try:
            import pynvml
        except ImportError:
            self.reason = "pynvml is not installed (pip install nvidia-ml-py)"
            return
        try:
            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(nvml_index(device_index))
            self._nvml = pynvml
        except Exception as e:  # NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded, ...
            self.reason = f"NVML has no GPU here ({type(e).__name__}: {e})"

    @property
    def available(self) -> bool:
        return self._nvml is not None

    def start(self) -> "NvmlSampler":
        if self.available and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="nvml-sampler", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        n, h = self._nvml, self._handle
        while not self._stop.is_set():
            t = time.perf_counter_ns()
            try:
                rx = n.nvmlDeviceGetPcieThroughput(h, n.NVML_PCIE_UTIL_RX_BYTES) * 1024.0
                tx = n.nvmlDeviceGetPcieThroughput(h, n.NVML_PCIE_UTIL_TX_BYTES) * 1024.0
                clock = n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM)
                mem = n.nvmlDeviceGetMemoryInfo(h).used
                power = n.nvmlDeviceGetPowerUsage(h) / 1000.0
            except Exception as e:
                self.reason = f"sampling failed: {type(e).__name__}: {e}"
                break
            s = self.samples
            s["t_s"].append((t - self.t0_ns) * 1e-9)
            s["pcie_rx_bytes_per_s"].append(rx)
            s["pcie_tx_bytes_per_s"].append(tx)
            s["sm_clock_mhz"].append(clock)
            s["memory_used_bytes"].append(mem)
            s["power_w"].append(power)
            self._stop.wait(self.interval_s)

    def stop(self) -> dict:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        if not self.available:
            return {"available": False, "reason": self.reason}
        out = {"available": True, "interval_s": self.interval_s, **self.samples}
        if self.reason:
            out["error"] = self.reason
        return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def meminfo_bytes(key: str) -> int | None:
    """A /proc/meminfo figure (MemTotal, MemAvailable, ...) in bytes; None where there is none."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def meminfo_gib(key: str) -> float | None:
    n = meminfo_bytes(key)
    return None if n is None else n / GiB


def memory_gib() -> float:
    """Host memory in GiB (1.0 where the system says nothing)."""
    total = meminfo_gib("MemTotal")
    if total is None:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
        except (ValueError, OSError, AttributeError):
            total = 1.0
    return total


def available_gib() -> float:
    """Host memory available now in GiB (half of all where the system does not say)."""
    avail = meminfo_gib("MemAvailable")
    return avail if avail is not None else memory_gib() / 2


def numba_max_threads() -> int:
    """The most threads Numba kernels get here: the cores, capped by NUMBA_NUM_THREADS."""
    return max(1, min(os.cpu_count() or 1, numba.config.NUMBA_NUM_THREADS))


def nvml_info(cuda_index: int | None = None) -> dict:
    """GPU name, driver, PCIe generation and width (max and current) from NVML for CUDA device
    `cuda_index` (default: the current one); {"reason": why not} where NVML is missing."""
    try:
        import pynvml  # optional dependency (nvidia-ml-py)
    except ImportError:
        return {"reason": "pynvml is not installed"}
    try:
        if cuda_index is None:
            import torch  # optional heavy dependency: the current CUDA device

            cuda_index = torch.cuda.current_device()
        pynvml.nvmlInit()
        try:
            h = pynvml.nvmlDeviceGetHandleByIndex(nvml_index(cuda_index))

            def text(v):
                return v.decode() if isinstance(v, bytes) else str(v)

            info = {"name": text(pynvml.nvmlDeviceGetName(h)), "driver": text(pynvml.nvmlSystemGetDriverVersion())}
            for key, fn in (("pcie_gen", "nvmlDeviceGetMaxPcieLinkGeneration"),
                            ("pcie_width", "nvmlDeviceGetMaxPcieLinkWidth"),
                            ("pcie_gen_now", "nvmlDeviceGetCurrPcieLinkGeneration"),
                            ("pcie_width_now", "nvmlDeviceGetCurrPcieLinkWidth")):
                try:
                    info[key] = int(getattr(pynvml, fn)(h))
                except Exception:
                    pass
            return info
        finally:
            pynvml.nvmlShutdown()
    except Exception as e:  # no NVML library, no permission, ...: work without it
        return {"reason": f"NVML unavailable ({type(e).__name__}: {e})"}


def describe_machine(device=None) -> dict:
    """What the run ran on: GPU (via torch and NVML), CPU, host memory, versions."""
    out = {
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "host_memory_bytes": meminfo_bytes("MemTotal"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numba": numba.__version__,
        "numba_threads": numba.config.NUMBA_NUM_THREADS,
    }
    try:
        import torch  # optional heavy dependency: CPU-only machines describe themselves without it

        out["torch"] = torch.__version__
        out["torch_threads"] = torch.get_num_threads()
        out["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            idx = torch.device(device).index if device is not None and torch.device(device).index is not None \
                else torch.cuda.current_device()
            props = torch.cuda.get_device_properties(idx)
            out["cuda_index"] = idx
            out.update(gpu_name=props.name, gpu_memory_bytes=props.total_memory,
                       gpu_sm_count=props.multi_processor_count, cuda_runtime=torch.version.cuda,
                       gpu_capability=f"{props.major}.{props.minor}")
    except ImportError:
        out["torch"] = None
    out["device"] = str(device) if device is not None else None
    nv = nvml_info(out.get("cuda_index", 0))
    if "reason" in nv:
        out["nvml"] = nv["reason"]
    else:   # the record's names: pcie_gen/width are the link as it runs now, *_max what it can do
        out.update(gpu_name_nvml=nv["name"], driver=nv["driver"], pcie_gen=nv.get("pcie_gen_now"),
                   pcie_width=nv.get("pcie_width_now"), pcie_gen_max=nv.get("pcie_gen"),
                   pcie_width_max=nv.get("pcie_width"))
    return out
