"""Step-time overhead of the CPU accounting mode on the embedded suite (issue: measurement
must not distort what it measures more than it says).

    python scripts/accounting_overhead.py --methods full,lst --steps 10

Runs the suite's training step at its batch size through the one measured phase: the
measured window under `CpuAccountingMeter`, then as many timed steps without it; prints the
median step times and their ratio per method.
"""

from __future__ import annotations

import argparse
import itertools
import statistics

import torch

from petlbench.config import load_suite
from petlbench.measure.memory import CpuAccountingMeter
from petlbench.models.loader import load_backbone
from petlbench.tasks.retrieval.data import suite_splits
from petlbench.train import Training
from petlbench.variants import load_variant


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default="vl-retrieval")
    p.add_argument("--methods", default="full,lst")
    p.add_argument("--steps", type=int, default=10, help="timed steps of each kind")
    args = p.parse_args()

    suite = load_suite(args.suite, ["data.train_images=640", "data.val_images=1", "data.test_images=1"])
    device = torch.device("cpu")
    for name in args.methods.split(","):
        torch.manual_seed(0)
        backbone, tok, *_ = load_backbone(suite.model.name, suite.model.attn_implementation, device)
        split = suite_splits(suite.data, tok, None)["train"]
        batches = split.training_batches(suite.train.batch_size, torch.Generator().manual_seed(0))
        variant = load_variant(name)
        setup_batch = next(batches)  # LST's Fisher ranking: set-up, not timed
        training = Training.of(backbone, suite.train, variant, data=lambda _size: itertools.repeat(setup_batch))  # noqa: B023
        # the measured window runs under the accounting, the timed steps after it without
        phase = training.measure(batches, device, CpuAccountingMeter(), measured=args.steps, timed=args.steps)
        plain, accounted = phase.timed.steps, phase.measured.steps
        a, b = statistics.median(plain), statistics.median(accounted)
        print(f"{name:10s} step {a * 1e3:7.1f} ms plain, {b * 1e3:7.1f} ms with accounting: x{b / a:.3f}")


if __name__ == "__main__":
    main()
