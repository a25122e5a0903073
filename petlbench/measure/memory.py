"""Peak memory of a measured phase, measured identically for every method (the phase
itself: `petlbench.measure.phase`).

Two meters share one protocol (docs/measurement.md, "The step that is measured"):
`gc.collect()` before the phase, the garbage collector off during it, peaks taken over the
phase only.

- `CudaMeter`: `torch.cuda.max_memory_allocated` (headline) and `max_memory_reserved`,
  reset at the start of the phase.
- `CpuAccountingMeter`: live tensor bytes counted by a `TorchDispatchMode`, byte-exact
  and identical run to run. Written by hand because no public PyTorch API counts live
  tensor bytes on the CPU (the private `MemTracker` crashes on frozen parameters).
"""

from __future__ import annotations

import contextvars
import gc
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


@dataclass
class PhasePeak:
    """What a meter reports for one phase, in bytes."""

    peak_bytes: int
    source: str  # "cuda" or "cpu-accounting"
    reserved_peak_bytes: int | None = None
    breakdown: dict[str, int] = field(default_factory=dict)
    trace: AllocationTrace | None = field(default=None, repr=False, compare=False)  # the CPU accounting's
    # Of the transient peak, the bytes of parameter gradients alive at its moment (the CPU
    # accounting, where the phase's gradients were marked: `CpuAccountingMeter.mark_gradient`);
    # the rest of it is activations and temporaries.
    transient_gradients: int | None = None


@dataclass
class AllocationTrace:
    """The storages the CPU accounting counted in a phase, in order, so that the phase can
    be replayed with other sizes (`petlbench.measure.estimate.predicted_peak`): ``sizes[i]``
    the bytes of the i-th storage created (before rounding to ``granularity``); ``order``
    the events, ``i`` for the creation of storage i and ``~i`` for its release."""

    sizes: list[int]
    order: list[int]
    granularity: int


def allocated_bytes(nbytes: int, granularity: int = 1) -> int:
    """``nbytes`` rounded up to a multiple of ``granularity``: what an allocator handing out
    blocks of that granularity holds for one allocation (a zero-byte storage holds none)."""
    return -(-nbytes // granularity) * granularity


# Asked of a fake tensor for its device (most dispatches of a fake step): it makes no tensor.
_DEVICE = torch.ops.prim.device.default

# Set while the host prepares data (`host_side`): what it creates is not device memory.
_HOST_SIDE = contextvars.ContextVar("host_side", default=False)


@contextmanager
def host_side() -> Iterator[None]:
    """Loading a batch or slicing the data set happens in host memory (on CUDA, outside
    `max_memory_allocated`): the CPU accounting does not count the tensors created here,
    nor views of them. What counts is the copy to the device that follows, as on CUDA."""
    token = _HOST_SIDE.set(True)
    try:
        yield
    finally:
        _HOST_SIDE.reset(token)


_END = object()


def host_batches(batches: Iterable) -> Iterator:
    """The items of ``batches``, each produced under `host_side`."""
    with host_side():  # a DataLoader starts its workers here
        iterator = iter(batches)
    while True:
        with host_side():
            item = next(iterator, _END)
        if item is _END:
            return
        yield item


class _LiveStorages(TorchDispatchMode):
    """Counts the bytes of every storage an operator returns, from its creation until it
    is freed (weak-reference callback on the storage), and the peak of their sum; each
    storage counts as `allocated_bytes` with ``granularity``; ``trace`` records them."""

    def __init__(self, known: Iterable[torch.Tensor], granularity: int = 1):
        super().__init__()
        self._known = {id(t.untyped_storage()) for t in known}
        self._granularity = granularity
        self._tracked: dict[int, tuple[weakref.ref, int, int]] = {}
        self.trace = AllocationTrace([], [], granularity)
        self.live = 0
        self.peak = 0
        self.marked: set[int] = set()  # indices of the storages `mark` was told of

    def _free(self, key: int, _ref: weakref.ref) -> None:
        _, nbytes, index = self._tracked.pop(key)
        self.live -= nbytes
        self.trace.order.append(~index)

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self._known or key in self._tracked:
            return
        raw, index = storage.nbytes(), len(self.trace.sizes)
        nbytes = allocated_bytes(raw, self._granularity)
        self._tracked[key] = (weakref.ref(storage, lambda ref, key=key: self._free(key, ref)), nbytes, index)
        self.trace.sizes.append(raw)
        self.trace.order.append(index)
        self.live += nbytes
        self.peak = max(self.peak, self.live)

    def mark(self, tensor: torch.Tensor) -> None:
        """Note that ``tensor``'s storage (created in this phase) is of a kind counted apart."""
        if (tracked := self._tracked.get(id(tensor.untyped_storage()))) is not None:
            self.marked.add(tracked[2])

    def marked_at_peak(self) -> int:
        """The bytes of marked storages alive when the live bytes first reached the peak."""
        live = marked = 0
        for event in self.trace.order:
            index = event if event >= 0 else ~event
            nbytes = allocated_bytes(self.trace.sizes[index], self._granularity) * (1 if event >= 0 else -1)
            live += nbytes
            if index in self.marked:
                marked += nbytes
            if live == self.peak:
                return marked
        return 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is _DEVICE or _HOST_SIDE.get():
            return out
        for leaf in (out,) if isinstance(out, torch.Tensor) else tree_leaves(out):
            if isinstance(leaf, torch.Tensor) and leaf.device.type != "meta":
                self._track(leaf)
        return out


def training_state(
    model: torch.nn.Module, opt: torch.optim.Optimizer | None = None, steps_on_host: bool = False
) -> tuple[dict[str, list[torch.Tensor]], list[torch.Tensor]]:
    """What is alive between two training steps, by category — parameters and buffers,
    gradients still held (none after `zero_grad(set_to_none=True)`), optimizer state — and
    what must not count: with ``steps_on_host``, AdamW's step counters, which it keeps on
    the host unless fused (`_init_group` in torch/optim/adamw.py), so on CUDA they are no
    device memory."""
    params = list(model.parameters())
    state = {"parameters": [*params, *model.buffers()], "gradients": [p.grad for p in params if p.grad is not None]}
    host: list[torch.Tensor] = []
    if opt is not None:
        tensors = [(key, t) for s in opt.state.values() for key, t in s.items() if torch.is_tensor(t)]
        state["optimizer_state"] = [t for key, t in tensors if not (steps_on_host and key == "step")]
        host = [t for key, t in tensors if steps_on_host and key == "step"]
    return state, host


def storage_bytes(tensors: Iterable[torch.Tensor], granularity: int = 1) -> int:
    """Bytes of the distinct storages behind ``tensors`` (shared storage counted once),
    each as `allocated_bytes` with ``granularity``."""
    seen: dict[int, int] = {}
    for t in tensors:
        st = t.untyped_storage()
        seen[id(st)] = allocated_bytes(st.nbytes(), granularity)
    return sum(seen.values())


class CpuAccountingMeter:
    """Peak = bytes of the tensors alive when the phase starts (``resident``: parameters,
    buffers, optimizer state) + the peak of the tensor bytes created during the phase.
    ``ignore`` are tensors whose views must not count (host-side state a CUDA run would not
    hold on the device, such as AdamW's step counters); data is read under `host_side`.
    ``granularity`` rounds each storage up as an allocator would (`petlbench.measure.estimate`
    models CUDA's with it)."""

    source = "cpu-accounting"

    def __init__(self, granularity: int = 1):
        self.granularity = granularity
        self._mode: _LiveStorages | None = None
        self._marking = False

    def mark_gradient(self, gradient: torch.Tensor) -> None:
        """Count ``gradient`` (a parameter's ``.grad``, made in the phase) as a gradient in the
        split of the transient peak (`PhasePeak.transient_gradients`): called by a
        post-accumulate-grad hook on each trainable parameter."""
        if self._mode is not None:
            self._marking = True
            self._mode.mark(gradient)

    @contextmanager
    def phase(self, resident: dict[str, list[torch.Tensor]], ignore: Iterable[torch.Tensor] = ()) -> Iterator[PhasePeak]:
        gc.collect()
        breakdown = {name: storage_bytes(ts, self.granularity) for name, ts in resident.items()}
        mode = _LiveStorages([*(t for ts in resident.values() for t in ts), *ignore], self.granularity)
        result = PhasePeak(0, self.source)
        self._mode, self._marking = mode, False
        gc.disable()
        try:
            with mode:
                yield result
        finally:
            gc.enable()
            self._mode = None
        if self._marking:
            result.transient_gradients = mode.marked_at_peak()
        breakdown["transient_peak"] = mode.peak
        result.breakdown = breakdown
        # the order as the phase ends: releases after it go on being appended to the mode's
        result.trace = AllocationTrace(mode.trace.sizes, list(mode.trace.order), self.granularity)
        result.peak_bytes = sum(breakdown.values())


class CudaMeter:
    """Allocator peaks over the phase (docs/measurement.md, "Memory on CUDA": what they
    include and exclude)."""

    source = "cuda"

    def __init__(self, device: torch.device):
        self.device = device

    @contextmanager
    def phase(self, resident: dict[str, list[torch.Tensor]], ignore: Iterable[torch.Tensor] = ()) -> Iterator[PhasePeak]:
        gc.collect()
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        breakdown = {name: storage_bytes(ts) for name, ts in resident.items()}
        result = PhasePeak(0, self.source, breakdown=breakdown)
        gc.disable()
        try:
            yield result
            torch.cuda.synchronize(self.device)
        finally:
            gc.enable()
        result.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        result.reserved_peak_bytes = torch.cuda.max_memory_reserved(self.device)


def meter_for(device: torch.device) -> CpuAccountingMeter | CudaMeter:
    return CudaMeter(device) if device.type == "cuda" else CpuAccountingMeter()
