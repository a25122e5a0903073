"""The one measured training phase (docs/measurement.md, "The step that is measured"), for every
caller that measures a step: the run loop, the estimate, the scripts and the tests.

Warm-up steps first (they create the optimizer state), then the measured window under a
meter, then steps that are only timed. Each step reads its batch on the host (not counted)
and copies it to the device (counted: a GPU holds that copy), then runs the caller's step.
The step itself is passed in, so that this module knows nothing of models, losses or
optimizers."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from petlbench.measure.memory import PhasePeak, host_batches

Batch = dict[str, torch.Tensor]


def to_device(batch: Batch, device: torch.device) -> Batch:
    """A copy of a host batch on ``device`` (a copy on the CPU too: every device then holds,
    and the CPU accounting counts, the batch the step reads)."""
    return {key: t.to(device, copy=True) for key, t in batch.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timings:
    """Per step of one part of the phase: the wait for the host batch, and the rest (the
    copy to the device and the step itself), in seconds."""

    waits: list[float] = field(default_factory=list)
    steps: list[float] = field(default_factory=list)


@dataclass
class PhaseResult:
    peak: PhasePeak  # the measured window's
    warmup: Timings
    measured: Timings
    timed: Timings


def training_phase(
    step: Callable[[Batch], Any],
    batches: Iterator[Batch],
    device: torch.device,
    meter,
    resident: Callable[[], tuple[dict[str, list[torch.Tensor]], list[torch.Tensor]]],
    *,
    warmup: int = 1,
    measured: int = 1,
    timed: int = 0,
    around_warmup: contextlib.AbstractContextManager | None = None,
    around_window: contextlib.AbstractContextManager | None = None,
) -> PhaseResult:
    """``warmup`` steps, ``measured`` steps under ``meter.phase`` (with what ``resident()``
    returns then — (tensors by category, tensors whose views must not count) — resident),
    then ``timed`` steps; ``step(batch)`` on each batch of ``batches`` (host batches,
    produced under `host_side`) after its copy to ``device``. ``around_warmup`` and
    ``around_window`` wrap those parts (an observer, a sampler). Returns the window's peak
    and every step's time."""
    batches = host_batches(batches)

    def run_steps(n: int) -> Timings:
        timings = Timings()
        for _ in range(n):
            t0 = time.perf_counter()
            host = next(batches)
            t1 = time.perf_counter()
            step(to_device(host, device))
            _sync(device)
            timings.waits.append(t1 - t0)
            timings.steps.append(time.perf_counter() - t1)
        return timings

    with around_warmup or contextlib.nullcontext():
        first = run_steps(warmup)
    categories, ignore = resident()
    with meter.phase(categories, ignore) as peak, around_window or contextlib.nullcontext():
        window = run_steps(measured)
    return PhaseResult(peak, first, window, run_steps(timed))
