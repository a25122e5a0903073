"""Parameters and CPU-accounted training-step memory of every method on the VSE family
(ResNet + BERT, random weights: no accuracy until real checkpoints exist).

    python scripts/vse_memory.py --batch-size 16 --image-size 96

Uses the suite's training step (`train.prepare`, `train.train_step`, AdamW foreach) on
random batches at the tiny test-size configuration; unsupported methods print the reason.
"""

from __future__ import annotations

import argparse
import itertools

import torch

from petlbench.config import ConfigError, available, load_suite
from petlbench.measure.memory import CpuAccountingMeter
from petlbench.measure.params import parameter_counts
from petlbench.models.vse import tiny_vse
from petlbench.train import Training
from petlbench.variants import load_variant


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--image-size", type=int, default=96, help="a multiple of 32 (UniPT's CNN variant)")
    p.add_argument("--text-length", type=int, default=32)
    args = p.parse_args()

    suite = load_suite("vl-retrieval")
    gen = torch.Generator().manual_seed(0)
    mask = torch.ones(args.batch_size, args.text_length, dtype=torch.long)
    mask[:, args.text_length // 2 :] = 0
    batch = {
        "pixel_values": torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=gen),
        "input_ids": torch.randint(100, (args.batch_size, args.text_length), generator=gen),
        "attention_mask": mask,
    }
    print(f"{'variant':18s} {'trainable':>10s} {'total':>8s} {'train peak (KiB)':>17s}")
    for path in available("methods"):
        torch.manual_seed(0)
        variant = load_variant(path.stem)
        try:
            training = Training.of(tiny_vse(max_text=args.text_length), suite.train, variant, data=lambda _size: itertools.repeat(batch))
        except ConfigError as exc:
            print(f"{variant.name:18s} unsupported: {exc}")
            continue
        peak = training.measure(itertools.repeat(batch), torch.device("cpu"), CpuAccountingMeter()).peak
        counts = parameter_counts(training.model)
        print(f"{variant.name:18s} {counts['params_trainable']:>10,d} {counts['params_total']:>8,d} {peak.peak_bytes / 1024:>17.1f}")


if __name__ == "__main__":
    main()
