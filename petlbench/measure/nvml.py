"""What `nvidia-smi` shows: the process's used GPU memory, sampled by NVML in a background
thread during a measured phase (CUDA context and allocator cache included).

A secondary figure (measurement.md): sampling can miss short peaks. Where NVML lists no
per-process figure for this process (PID namespaces in containers, MIG), the device's used
memory minus its reading before the phase stands in, marked approximate. Every NVML call is
guarded: without a driver `nvmlInit` raises `NVMLError_LibraryNotFound`, and the figure is
then simply absent, with the reason.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass


@dataclass
class NvmlPeak:
    peak_bytes: int | None
    approximate: bool = False
    unavailable: str | None = None  # why there is no figure


def _nvml():
    import pynvml  # from nvidia-ml-py

    return pynvml


def driver_version() -> str | None:
    """The NVIDIA driver version, or None where NVML is unavailable."""
    try:
        nvml = _nvml()
        nvml.nvmlInit()
        version = nvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else version
    except Exception:  # no library, no driver, no device: the figure is just absent
        return None


class NvmlSampler:
    """``with NvmlSampler(index) as sampler: ...`` then ``sampler.result``."""

    def __init__(self, device_index: int, interval_s: float = 0.005):
        self.device_index = device_index
        self.interval_s = interval_s
        self.result = NvmlPeak(None)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _process_bytes(self) -> int | None:
        """This process's used memory on the device, None when NVML does not list it."""
        for proc in self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle):
            if proc.pid == os.getpid():
                return proc.usedGpuMemory
        return None

    def _reading(self) -> tuple[int, bool]:
        own = self._process_bytes()
        if own is not None:
            return own, False
        return self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used - self._baseline, True

    def _sample(self) -> None:
        while True:
            value, approximate = self._reading()
            if self.result.peak_bytes is None or value > self.result.peak_bytes:
                self.result.peak_bytes = value
            self.result.approximate |= approximate
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> NvmlSampler:
        try:
            self._nvml = _nvml()
            self._nvml.nvmlInit()
            self._handle = self._nvml.nvmlDeviceGetHandleByIndex(self.device_index)
            self._baseline = self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used
        except Exception as exc:  # noqa: BLE001 (NVMLError_LibraryNotFound and friends, ImportError)
            self.result = NvmlPeak(None, unavailable=f"{type(exc).__name__}: {exc}")
            return self
        self._thread = threading.Thread(target=self._sample, name="petlbench-nvml", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
