"""The pieces of an estimate of training memory on fake tensors (docs/measurement.md,
"Without the hardware: the fake-tensor estimate"); `petlbench.estimate.FakeTraining`
assembles them around the one measured phase.

For the CUDA target the figure is shaped like `torch.cuda.max_memory_allocated`: every
storage rounded up to the caching allocator's granularity (`CUDA_GRANULARITY`), AdamW's
host-side step counters left out, and a workspace constant added (`CUDA_WORKSPACE_BYTES`).

Route (the only one that works for every method, PEFT included): build the model and
apply the method on the ``meta`` device outside the fake mode (PEFT calls ``.to()``,
which fails on fake parameters); inside the mode, replace every parameter and buffer by a
fake ``cpu`` tensor (`materialize`). Fake ``cuda`` tensors cannot run backward without a
GPU, and the step must not run on meta tensors (meta takes the math attention path, which
saves the whole attention matrix for backward, unlike the CPU and CUDA fused kernels).
"""

from __future__ import annotations

import contextlib
import gc
import itertools
from collections.abc import Callable, Iterator
from typing import Literal

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from petlbench.measure.memory import PhasePeak, allocated_bytes
from petlbench.units import MiB

# The CUDA caching allocator hands out blocks in multiples of 512 bytes, 512 at least
# (`kMinBlockSize` and `round_size` in c10/cuda/CUDACachingAllocator.cpp). A lower bound:
# a cached block up to 1 MiB larger than the request is handed out whole, unsplit.
CUDA_GRANULARITY = 512

# Workspaces PyTorch takes from the caching allocator on the first matrix product of a
# thread and keeps, so they are inside `max_memory_allocated` (ATen/cuda/CublasHandlePool.cpp,
# torch 2.6-2.13): per (cuBLAS handle, stream), 32 MiB for cuBLAS on Hopper (sm90; 8 MiB +
# 128 KiB on other GPUs: this takes the larger) and 1 MiB for cuBLASLt (CUBLASLT_WORKSPACE_SIZE
# default). Handles are per thread, and a training step uses two threads: forward on the
# caller's, backward on the autograd engine's device thread. Scratch that kernels allocate
# and free within a call (attention backward) is not in it. Unvalidated until a GPU run
# measures it (scripts/measure_cuda.py).
CUDA_WORKSPACE_BYTES = 2 * (32 * MiB + 1 * MiB)

Target = Literal["cuda", "cpu"]
"""What the figure models: ``cuda``, `max_memory_allocated` on a GPU; ``cpu``, the CPU
accounting of a real run on this machine (tensor bytes exactly, no rounding, no workspace)."""


def materialize(model: nn.Module) -> None:
    """Replace every (meta) parameter and buffer of ``model`` by an uninitialised tensor on
    the cpu, of the same shape, dtype and ``requires_grad``: fake when called inside a fake
    mode. A tensor shared between modules stays shared."""
    slots = [
        (module, name, tensor)
        for module in model.modules()
        for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
    ]
    replaced: dict[int, torch.Tensor] = {}
    for module, name, tensor in slots:  # `slots` keeps every old tensor alive: ids stay unique
        if id(tensor) not in replaced:
            new = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu")
            replaced[id(tensor)] = nn.Parameter(new, requires_grad=tensor.requires_grad) if isinstance(tensor, nn.Parameter) else new
        setattr(module, name, replaced[id(tensor)])


# Normalisation ops whose fake kernels disagree with the CPU kernels (torch 2.13): op ->
# (positions of its weight-like arguments, positions of the statistics it returns).
_NORM_STATISTICS = {
    torch.ops.aten.native_layer_norm.default: ((2, 3), (1, 2)),  # weight, bias -> mean, rstd
    torch.ops.aten.native_batch_norm.default: ((1, 2, 3, 4), (1, 2)),  # weight, bias, running stats -> save_mean, save_invstd
}


class CpuNormStatistics(TorchDispatchMode):
    """Makes fake normalisation ops return what the CPU kernels return. With a bf16 input and
    fp32 parameters (under bf16 autocast, a LayerNorm or BatchNorm fed by an autocast matmul
    or convolution, as in LST's side network and UniPT's CNN variant) the CPU kernels keep the
    statistics that backward reads in the parameters' dtype (their "mixed type" path); the
    fake kernels (`torch._refs.native_layer_norm`, `torch._decomp`'s batch norm) keep them in
    the input's. Entered below the meter, so that only the corrected tensors are counted."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in _NORM_STATISTICS:
            param_at, stats_at = _NORM_STATISTICS[func]
            params = [args[i] for i in param_at if i < len(args) and args[i] is not None]
            if params and params[0].dtype != args[0].dtype:
                out = tuple(t.to(params[0].dtype) if i in stats_at else t for i, t in enumerate(out))
        return out


class ScalarsAsZero(TorchDispatchMode):
    """Reading a fake tensor's value (``.item()``) gives zero instead of raising: the
    evaluation's recalls read scalars at the very end, after every tensor that counts has
    been made, and no allocation depends on what they read."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            dtype = args[0].dtype
            return False if dtype == torch.bool else 0.0 if dtype.is_floating_point else 0
        return func(*args, **(kwargs or {}))


class FusedAttentionDropout(TorchFunctionMode):
    """Attention dropout as CUDA's fused kernels cost it. In fp32 CUDA runs
    `scaled_dot_product_attention` with dropout in the memory-efficient kernel, which saves
    only its random-number state for backward; the CPU has no fused kernel with dropout and
    takes the math path, which keeps the (B, heads, N, N) probabilities and their dropout
    mask (BERT's 0.1 attention dropout doubles the VSE family's estimate at 512 tokens). So the
    CUDA target runs attention with ``dropout_p=0``: the same tensors but the two scalars of
    that state; values do not matter on fake tensors. Unvalidated until checked on a GPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.scaled_dot_product_attention:
            if len(args) > 4:  # dropout_p is the fifth positional parameter
                args = (*args[:4], 0.0, *args[5:])
            else:
                kwargs = {**kwargs, "dropout_p": 0.0}
        return func(*args, **kwargs)


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Estimates with the objects alive now out of the garbage collector's scans
    (`gc.freeze`): every measured phase starts with `gc.collect()`, which otherwise walks
    all that importing torch and transformers made (0.16 s a phase on 2 cores, a tenth of a
    fake step). Fake tensors hold no memory, so what this leaves uncollected changes no
    figure; forked workers inherit the freeze. Inside a freeze already: nothing more."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def predicted_peak(a: int, at_a: PhasePeak, b: int, at_b: PhasePeak) -> Callable[[int], int | float] | None:
    """The peak at any batch size as predicted from the peaks at batch sizes ``a`` and ``b``;
    None where nothing can be predicted (two untraced peaks that do not grow).

    A peak is the most the storages alive at once ever hold, and each storage's size is close
    to affine in the batch size, so the peak is close to the largest of affine functions,
    one per moment of the step: where it happens moves with the batch (full fine-tuning
    peaks in the optimizer step at small batches and in backward at large ones). Where the
    two phases created and released their storages in the same order (their
    `AllocationTrace`), the step is replayed with every storage's size interpolated, which
    follows those moves; otherwise the line through the two peaks."""
    ta, tb = at_a.trace, at_b.trace
    if ta is None or tb is None or ta.order != tb.order:
        slope = (at_b.peak_bytes - at_a.peak_bytes) / (b - a)
        return (lambda n: at_a.peak_bytes + slope * (n - a)) if slope > 0 else None
    constant = at_a.peak_bytes - at_a.breakdown["transient_peak"]  # what was alive from the start: no batch in it
    sizes = [(x, y - x) for x, y in zip(ta.sizes, tb.sizes, strict=True)]  # (size at a, growth from a to b)

    def replayed(n: int) -> int:
        at_n = [allocated_bytes(x + dx * (n - a) // (b - a), ta.granularity) for x, dx in sizes]
        return constant + max(itertools.accumulate((at_n[e] if e >= 0 else -at_n[~e] for e in ta.order), initial=0))

    return replayed


def largest_batch(peak: Callable[[int], PhasePeak], budget: int, probe: int = 16, limit: int = 2**16) -> int:
    """The largest batch size ``b`` in [1, ``limit``] with ``peak(b).peak_bytes <= budget``,
    0 when none fits; the peak must grow with ``b``.

    Batch 2 first (batch 1 only when 2 does not fit: a dimension of size 1 can change what
    a step allocates, so it would not replay like the others), then ``probe``; each guess is
    where the peak `predicted_peak` from the last two evaluated batch sizes meets the budget,
    followed by its neighbour (the next batch up where the guess fits, else the one below:
    the peak's local slope for the next prediction): an exact prediction ends the search
    there (four evaluations in all). Without a prediction, or after two guesses in a row
    that fail to halve the bracket, a bisection step: O(log limit) evaluations at worst."""
    tried: list[tuple[int, PhasePeak]] = []
    fits, exceeds = 0, limit + 1  # peak(fits) <= budget < peak(exceeds); 0 and limit + 1: beyond the search

    def evaluate(n: int) -> None:
        nonlocal fits, exceeds
        result = peak(n)
        tried.append((n, result))
        if result.peak_bytes <= budget:
            fits = n
        else:
            exceeds = n

    evaluate(min(2, limit))
    if fits == 0:
        if exceeds > 1:
            evaluate(1)
        return fits
    if min(probe, limit) > fits:
        evaluate(min(probe, limit))
    stalled = 0  # guesses in a row that did not halve the bracket
    while exceeds - fits > 1:
        width = exceeds - fits
        predict = predicted_peak(*tried[-2], *tried[-1]) if stalled < 2 and len(tried) > 1 else None
        if predict is None:
            guess = (fits + exceeds) // 2
        else:
            lo, hi = fits + 1, exceeds - 1  # the largest n in [lo, hi] predicted to fit, else lo
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if predict(mid) <= budget else (lo, mid - 1)
            guess = lo
        evaluate(guess)
        neighbour = guess + 1 if guess == fits else guess - 1  # an exact prediction: the next batch up exceeds
        if fits < neighbour < exceeds:
            evaluate(neighbour)
        stalled = stalled + 1 if exceeds - fits > width // 2 else 0
    return fits
