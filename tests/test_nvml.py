"""NVML sampling: guarded without a driver, per-process figure where listed, device-level
fallback (marked approximate) where not."""

import os
import sys
import time
import types

from petlbench.measure import nvml


def _fake_pynvml(process_bytes, device_used):
    """A stand-in for nvidia-ml-py whose readings come from the given iterators."""
    fake = types.SimpleNamespace()
    fake.nvmlInit = lambda: None
    fake.nvmlDeviceGetHandleByIndex = lambda index: "gpu0"
    fake.nvmlSystemGetDriverVersion = lambda: "999.1"

    def processes(handle):
        value = next(process_bytes)
        return [] if value is None else [types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=value)]

    fake.nvmlDeviceGetComputeRunningProcesses = processes
    fake.nvmlDeviceGetMemoryInfo = lambda handle: types.SimpleNamespace(used=next(device_used))
    return fake


def _last_forever(values):
    yield from values
    while True:
        yield values[-1]


def test_without_a_driver_there_is_no_figure_and_no_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails like a machine without the package
    with nvml.NvmlSampler(0) as sampler:
        pass
    assert sampler.result.peak_bytes is None and sampler.result.unavailable
    assert nvml.driver_version() is None


def test_per_process_peak(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(_last_forever([100, 700, 300]), _last_forever([5000])))
    with nvml.NvmlSampler(0, interval_s=0.001) as sampler:
        time.sleep(0.05)
    assert sampler.result.peak_bytes == 700 and not sampler.result.approximate
    assert nvml.driver_version() == "999.1"


def test_device_level_fallback_is_marked_approximate(monkeypatch):
    # no per-process entry (PID namespace): device used memory minus the reading before
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(_last_forever([None]), _last_forever([1000, 1800, 1300])))
    with nvml.NvmlSampler(0, interval_s=0.001) as sampler:
        time.sleep(0.05)
    assert sampler.result.peak_bytes == 800 and sampler.result.approximate
