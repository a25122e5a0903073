"""NVML sampling: guarded without a driver, the right GPU found by UUID (CUDA_VISIBLE_DEVICES,
MIG), per-process figure where listed, device-level fallback (marked approximate) where not,
and no figure at all rather than another GPU's."""

import os
import sys
import time
import types

import pytest

from petlbench.measure import nvml

# Three physical GPUs in NVML (PCI bus) order; the second one is split into two MIG instances.
GPUS = ["GPU-aaaa0000-0000-0000-0000-000000000000", "GPU-bbbb1111-1111-1111-1111-111111111111", "GPU-cccc2222-2222-2222-2222-222222222222"]
MIGS = {1: ["MIG-dddd3333-3333-3333-3333-333333333333", "MIG-eeee4444-4444-4444-4444-444444444444"]}


class FakeNvmlError(Exception):
    pass


def _fake_pynvml(process_bytes=None, device_used=None):
    """A stand-in for nvidia-ml-py over `GPUS` and `MIGS`, whose handles are their UUIDs;
    memory readings come from the given iterators (of the device that is read)."""
    fake = types.SimpleNamespace(NVMLError=FakeNvmlError, reads=[])
    fake.nvmlInit = lambda: None
    fake.nvmlSystemGetDriverVersion = lambda: "999.1"
    fake.nvmlDeviceGetCount = lambda: len(GPUS)
    fake.nvmlDeviceGetHandleByIndex = lambda index: GPUS[index]
    fake.nvmlDeviceGetUUID = lambda handle: handle

    def max_mig(handle):
        if GPUS.index(handle) not in MIGS:
            raise FakeNvmlError("Not Supported")
        return 7

    def mig_handle(handle, slot):
        migs = MIGS[GPUS.index(handle)]
        if slot >= len(migs):
            raise FakeNvmlError("Not Found")
        return migs[slot]

    fake.nvmlDeviceGetMaxMigDeviceCount = max_mig
    fake.nvmlDeviceGetMigDeviceHandleByIndex = mig_handle

    def processes(handle):
        fake.reads.append(handle)
        value = next(process_bytes)
        return [] if value is None else [types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=value)]

    fake.nvmlDeviceGetComputeRunningProcesses = processes
    fake.nvmlDeviceGetMemoryInfo = lambda handle: types.SimpleNamespace(used=next(device_used))
    return fake


def _last_forever(values):
    yield from values
    while True:
        yield values[-1]


@pytest.fixture
def torch_uuids(monkeypatch):
    """Fake torch device properties: torch's device i reports ``uuids[i]`` (bare, as torch
    writes it; None where a torch reports no UUID)."""

    def use(*uuids):
        monkeypatch.setattr(nvml, "_torch_uuid", lambda index: uuids[index])

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    return use


def _bare(uuid):
    return uuid.split("-", 1)[1]


def test_torch_device_is_matched_by_uuid_not_by_index(torch_uuids):
    # as under CUDA_VISIBLE_DEVICES=2,0 (torch reports the UUIDs of the GPUs it sees, in its
    # order): torch's cuda:0 is NVML's GPU 2, its cuda:1 is GPU 0
    torch_uuids(_bare(GPUS[2]), _bare(GPUS[0]))
    fake = _fake_pynvml()
    assert [nvml.nvml_handle(fake, i) for i in (0, 1)] == [GPUS[2], GPUS[0]]


def test_a_mig_instance_is_matched_by_its_uuid(torch_uuids):
    torch_uuids(_bare(MIGS[1][1]))
    assert nvml.nvml_handle(_fake_pynvml(), 0) == MIGS[1][1]


def test_an_unknown_uuid_is_unmapped(torch_uuids):
    torch_uuids("ffff9999-9999-9999-9999-999999999999")
    with pytest.raises(nvml.NvmlUnmapped, match="no NVML device has the UUID ffff9999"):
        nvml.nvml_handle(_fake_pynvml(), 0)


@pytest.mark.parametrize(
    "visible, order, expected",
    [
        ("GPU-cccc2222", None, GPUS[2]),  # a UUID prefix, as CUDA accepts it
        ("MIG-eeee4444-4444-4444-4444-444444444444", None, MIGS[1][1]),
        ("2,0", "PCI_BUS_ID", GPUS[2]),  # an index is an NVML index in PCI bus order
    ],
)
def test_without_a_torch_uuid_cuda_visible_devices_decides(torch_uuids, monkeypatch, visible, order, expected):
    torch_uuids(None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    if order:
        monkeypatch.setenv("CUDA_DEVICE_ORDER", order)
    assert nvml.nvml_handle(_fake_pynvml(), 0) == expected


@pytest.mark.parametrize(
    "visible, message",
    [
        ("2,0", "CUDA_DEVICE_ORDER=PCI_BUS_ID"),  # CUDA's default order may differ from NVML's
        (None, "CUDA_DEVICE_ORDER=PCI_BUS_ID"),
        ("GPU-", "matches 3 NVML devices"),  # ambiguous prefix
        ("1", "CUDA_DEVICE_ORDER"),
    ],
)
def test_without_a_torch_uuid_an_ambiguous_mapping_is_refused(torch_uuids, monkeypatch, visible, message):
    torch_uuids(None)
    if visible is not None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    with pytest.raises(nvml.NvmlUnmapped, match=message):
        nvml.nvml_handle(_fake_pynvml(), 0)


def test_a_device_beyond_cuda_visible_devices_is_unmapped(torch_uuids, monkeypatch):
    torch_uuids(None, None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(nvml.NvmlUnmapped, match="cuda:1 is not among CUDA_VISIBLE_DEVICES"):
        nvml.nvml_handle(_fake_pynvml(), 1)


def test_without_a_driver_there_is_no_figure_and_no_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails like a machine without the package
    with nvml.NvmlSampler(0) as sampler:
        pass
    assert sampler.result.peak_bytes is None and sampler.result.unavailable
    assert nvml.driver_version() is None


def test_an_unmapped_device_gives_no_figure_rather_than_another_gpus(monkeypatch, torch_uuids):
    torch_uuids("ffff9999-9999-9999-9999-999999999999")
    fake = _fake_pynvml(_last_forever([700]), _last_forever([5000]))
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    with nvml.NvmlSampler(0, interval_s=0.001) as sampler:
        time.sleep(0.02)
    assert sampler.result.peak_bytes is None and "NvmlUnmapped" in sampler.result.unavailable
    assert fake.reads == []  # no GPU was read


def test_per_process_peak_of_the_mapped_gpu(monkeypatch, torch_uuids):
    torch_uuids(_bare(GPUS[1]))
    fake = _fake_pynvml(_last_forever([100, 700, 300]), _last_forever([5000]))
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    with nvml.NvmlSampler(0, interval_s=0.001) as sampler:
        time.sleep(0.05)
    assert sampler.result.peak_bytes == 700 and not sampler.result.approximate
    assert set(fake.reads) == {GPUS[1]}
    assert nvml.driver_version() == "999.1"


def test_device_level_fallback_is_marked_approximate(monkeypatch, torch_uuids):
    # no per-process entry (PID namespace): device used memory minus the reading before
    torch_uuids(_bare(GPUS[0]))
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(_last_forever([None]), _last_forever([1000, 1800, 1300])))
    with nvml.NvmlSampler(0, interval_s=0.001) as sampler:
        time.sleep(0.05)
    assert sampler.result.peak_bytes == 800 and sampler.result.approximate


def test_a_reading_that_fails_mid_phase_leaves_no_partial_figure(monkeypatch, torch_uuids):
    torch_uuids(_bare(GPUS[0]))

    def readings():
        yield 100
        raise FakeNvmlError("GPU is lost")

    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(readings(), _last_forever([0])))
    with nvml.NvmlSampler(0, interval_s=0.001) as sampler:
        time.sleep(0.05)
    assert sampler.result.peak_bytes is None and "GPU is lost" in sampler.result.unavailable
