"""What `nvidia-smi` shows: the process's used GPU memory, sampled by NVML in a background
thread during a measured phase (CUDA context and allocator cache included).

A secondary figure (docs/measurement.md, "Memory on CUDA"): sampling can miss short
peaks. Where NVML lists no per-process figure for this process (PID namespaces in
containers, MIG), the device's used memory minus its reading before the phase stands in,
marked approximate. Every NVML call is guarded: without a driver `nvmlInit` raises
`NVMLError_LibraryNotFound`, and the figure is then simply absent, with the reason.

NVML numbers the physical GPUs and ignores ``CUDA_VISIBLE_DEVICES`` (and
``CUDA_DEVICE_ORDER``), so torch's device index is not an NVML index: a device is matched by
its UUID (`nvml_handle`). Where no match can be made, there is no figure (with the reason)
rather than a figure of another GPU.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

# NVML writes a full GPU's UUID as "GPU-<uuid>" and a MIG instance's as "MIG-<uuid>"; torch
# reports the bare <uuid>.
UUID_PREFIXES = ("GPU-", "MIG-")


@dataclass
class NvmlPeak:
    peak_bytes: int | None
    approximate: bool = False
    unavailable: str | None = None  # why there is no figure


class NvmlUnmapped(RuntimeError):
    """Torch's device cannot be matched to an NVML device."""


def _nvml():
    import pynvml  # from nvidia-ml-py

    return pynvml


def _torch_uuid(device_index: int) -> str | None:
    """The UUID torch reports for its visible CUDA device ``device_index`` (None where this
    torch reports none)."""
    import torch

    uuid = getattr(torch.cuda.get_device_properties(device_index), "uuid", None)
    return str(uuid) if uuid is not None else None


def _text(uuid: str | bytes) -> str:
    return uuid.decode() if isinstance(uuid, bytes) else uuid


def _bare(uuid: str | bytes) -> str:
    uuid = _text(uuid)
    for prefix in UUID_PREFIXES:
        uuid = uuid.removeprefix(prefix)
    return uuid.lower()


def _nvml_devices(nvml) -> list[tuple[str, object]]:
    """(UUID as NVML writes it, handle) of every physical GPU, in NVML order, followed by
    each one's MIG instances."""
    gpus = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
    devices = [(nvml.nvmlDeviceGetUUID(h), h) for h in gpus]
    for gpu in gpus:
        try:
            slots = nvml.nvmlDeviceGetMaxMigDeviceCount(gpu)
        except nvml.NVMLError:  # not a MIG-capable GPU
            continue
        for slot in range(slots):
            try:
                mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, slot)
            except nvml.NVMLError:  # an empty slot
                continue
            devices.append((nvml.nvmlDeviceGetUUID(mig), mig))
    return devices


def _visible_entry(device_index: int) -> str | None:
    """Entry ``device_index`` of ``CUDA_VISIBLE_DEVICES`` (None when the variable is unset)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return None
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    if device_index >= len(entries):
        raise NvmlUnmapped(f"cuda:{device_index} is not among CUDA_VISIBLE_DEVICES={visible!r}")
    return entries[device_index]


def nvml_handle(nvml, device_index: int):
    """The NVML handle of torch's visible CUDA device ``device_index``.

    By UUID: torch's UUID of the device matched against every NVML device (MIG instances
    included). Where torch reports none, ``CUDA_VISIBLE_DEVICES`` is read as CUDA reads it:
    a UUID entry (``GPU-...`` or ``MIG-...``, or a unique prefix of one) names the device; an index entry, or no
    variable, is a CUDA ordinal, which equals the NVML index only in PCI bus order
    (``CUDA_DEVICE_ORDER=PCI_BUS_ID``) or on a machine with one GPU. Raises `NvmlUnmapped`."""
    devices = _nvml_devices(nvml)
    uuid = _torch_uuid(device_index)
    if uuid is not None:
        found = [h for u, h in devices if _bare(u) == _bare(uuid)]
        if not found:
            raise NvmlUnmapped(f"no NVML device has the UUID {uuid} that torch reports for cuda:{device_index}")
        return found[0]
    entry = _visible_entry(device_index)
    if entry is not None and not entry.isdigit():
        found = [h for u, h in devices if _text(u).lower().startswith(entry.lower())]
        if len(found) != 1:
            raise NvmlUnmapped(f"CUDA_VISIBLE_DEVICES entry {entry!r} matches {len(found)} NVML devices, not one")
        return found[0]
    ordinal = int(entry) if entry is not None else device_index
    gpus = nvml.nvmlDeviceGetCount()
    if gpus > 1 and os.environ.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID":
        raise NvmlUnmapped(
            f"torch reports no UUID for cuda:{device_index}, and CUDA ordinal {ordinal} equals an NVML index only with "
            "CUDA_DEVICE_ORDER=PCI_BUS_ID on a machine with several GPUs"
        )
    if not 0 <= ordinal < gpus:
        raise NvmlUnmapped(f"CUDA ordinal {ordinal} is not among the {gpus} GPUs NVML lists")
    return nvml.nvmlDeviceGetHandleByIndex(ordinal)


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
    """``with NvmlSampler(index) as sampler: ...`` then ``sampler.result``; ``index`` is
    torch's device index."""

    def __init__(self, device_index: int, interval_s: float = 0.005):
        self.device_index = device_index
        self.interval_s = interval_s
        self.result = NvmlPeak(None)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _process_bytes(self) -> int | None:
        """This process's used memory on the device, None when NVML does not list it (or
        lists it without a figure, as under MIG)."""
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
        try:
            while True:
                value, approximate = self._reading()
                if self.result.peak_bytes is None or value > self.result.peak_bytes:
                    self.result.peak_bytes = value
                self.result.approximate |= approximate
                if self._stop.wait(self.interval_s):
                    return
        except Exception as exc:  # noqa: BLE001 (a reading failed mid-phase: no figure rather than a partial one)
            self.result = NvmlPeak(None, unavailable=f"sampling failed: {type(exc).__name__}: {exc}")

    def __enter__(self) -> NvmlSampler:
        try:
            self._nvml = _nvml()
            self._nvml.nvmlInit()
            self._handle = nvml_handle(self._nvml, self.device_index)
            self._baseline = self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used
        except Exception as exc:  # noqa: BLE001 (NVMLError_LibraryNotFound and friends, ImportError, NvmlUnmapped)
            self.result = NvmlPeak(None, unavailable=f"{type(exc).__name__}: {exc}")
            return self
        self._thread = threading.Thread(target=self._sample, name="petlbench-nvml", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
