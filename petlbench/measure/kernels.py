"""Which attention kernels a step ran: `scaled_dot_product_attention` picks one at run time
(flash, memory-efficient, cuDNN, the CPU's flash kernel, or the unfused math path), and the
choice changes both the memory figure and the speed, so records name it."""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

# Where `scaled_dot_product_attention` called no fused kernel, it ran the unfused math path.
MATH = "math"


class _FusedKernels(TorchDispatchMode):
    def __init__(self, seen: set[str]):
        super().__init__()
        self.seen = seen

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name.startswith("_scaled_dot_product_") or name.startswith(("_flash_attention", "_efficient_attention")):
            self.seen.add(name)
        return func(*args, **(kwargs or {}))


class _SdpaCalls(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            self.calls += 1
        return func(*args, **(kwargs or {}))


class AttentionKernels:
    """``with AttentionKernels() as seen: step()``, then ``seen.kernels``: the names of the
    fused attention operators dispatched (forward and backward), ``["math"]`` when attention
    ran unfused, ``[]`` when nothing called `scaled_dot_product_attention` (eager attention)."""

    def __init__(self):
        self._seen: set[str] = set()
        self._calls = _SdpaCalls()
        self._fused = _FusedKernels(self._seen)
        self.kernels: list[str] = []

    def __enter__(self) -> AttentionKernels:
        self._calls.__enter__()
        self._fused.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self._fused.__exit__(*exc_info)
        self._calls.__exit__(*exc_info)
        self.kernels = sorted(self._seen) or ([MATH] if self._calls.calls else [])


def cuda_settings() -> dict[str, object]:
    """The process-wide settings that change CUDA figures and speed: TF32 use by matrix
    products and convolutions, and the caching allocator's configuration."""
    with warnings.catch_warnings():  # newer torch warns about the TF32 flags in favour of fp32_precision
        warnings.simplefilter("ignore")
        settings: dict[str, object] = {
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        }
    for name in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"):
        settings[name] = os.environ.get(name)
    return settings
