"""Check the fake-tensor estimate against an independent mechanism: the allocator events
of `torch.profiler` (``profile_memory=True``) on a real CPU run of the same training step.

The estimate (target ``cpu``: tensor bytes, no CUDA rounding, no workspace) counts the
storages operators return; the profiler sees every allocation the CPU allocator makes,
including scratch a kernel frees before returning, so it may read a little higher. Both
figures are the resident bytes (parameters, buffers, optimizer state: present before the
measured step) plus the peak of what the measured step allocates on top.

    OMP_NUM_THREADS=1 python scripts/check_estimate_profiler.py --model clip-vit-base-patch32 --method full --batch-size 4
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import time

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from petlbench.config import load_suite
from petlbench.estimate import FakeTraining, at_text_length
from petlbench.measure.memory import PhasePeak, storage_bytes
from petlbench.models.loader import load_architecture
from petlbench.tasks.retrieval.task import random_batch
from petlbench.train import Training
from petlbench.variants import data_free, load_variant

MiB = 2**20


def allocation_peak(prof: profile) -> int:
    """Peak of the cumulative sum of the CPU allocator's events (allocations positive,
    frees negative) over the profiled region, in event order."""
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and e.device_type() == DeviceType.CPU),
        key=lambda e: e.start_ns(),
    )
    return max(itertools.accumulate((e.nbytes() for e in events), initial=0))


class ProfilerMeter:
    """A meter for `training_phase` whose peak is the resident bytes plus the peak of the
    profiler's allocator events over the phase."""

    source = "profiler"

    @contextlib.contextmanager
    def phase(self, resident: dict[str, list[torch.Tensor]], ignore=()):
        peak = PhasePeak(0, self.source, breakdown={"resident": storage_bytes(t for ts in resident.values() for t in ts)})
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=False) as prof:
            yield peak
        peak.breakdown["transient_peak"] = allocation_peak(prof)
        peak.peak_bytes = sum(peak.breakdown.values())


def profiled_step(model_name: str, method: str, batch_size: int, suite_name: str) -> tuple[int, int]:
    """(resident bytes, peak allocated on top during the measured step) of a real step,
    measured through the one training phase the runs use."""
    suite = load_suite(suite_name)
    architecture = load_architecture(model_name)
    text_length = architecture.max_text_positions
    torch.manual_seed(0)
    variant = data_free(load_variant(method))
    training = Training.of(architecture.build(suite.model.attn_implementation), suite.train, variant)
    batches = iter(lambda: random_batch(architecture, batch_size, text_length), None)
    peak = training.measure(batches, torch.device("cpu"), ProfilerMeter()).peak
    return peak.breakdown["resident"], peak.breakdown["transient_peak"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="clip-vit-base-patch32")
    parser.add_argument("--method", default="full", help="a method variant (methods/NAME.yaml)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--suite", default="vl-retrieval")
    args = parser.parse_args()

    t0 = time.perf_counter()
    architecture = load_architecture(args.model)
    estimate = FakeTraining(
        architecture, at_text_length(load_suite(args.suite), architecture.max_text_positions), load_variant(args.method), target="cpu"
    )
    peak = estimate.peak(args.batch_size)
    t_estimate = time.perf_counter() - t0
    t0 = time.perf_counter()
    resident, transient = profiled_step(args.model, args.method, args.batch_size, args.suite)
    t_real = time.perf_counter() - t0

    profiled = resident + transient
    print(f"{args.model}, {args.method}, batch {args.batch_size}, torch {torch.__version__}")
    print(f"  estimate (fake tensors, CPU accounting): {peak.peak_bytes:>14,} B = {peak.peak_bytes / MiB:9.1f} MiB  ({t_estimate:.1f} s)")
    print(f"  profiler (real tensors, allocator events): {profiled:>12,} B = {profiled / MiB:9.1f} MiB  ({t_real:.1f} s)")
    print(f"  resident {resident:,} B (estimate: {peak.peak_bytes - peak.breakdown['transient_peak']:,} B)")
    print(f"  step peak on top: estimate {peak.breakdown['transient_peak']:,} B, profiler {transient:,} B")
    print(f"  estimate / profiler: {peak.peak_bytes / profiled:.4f}")


if __name__ == "__main__":
    main()
