"""Each variant's metrics before its first training step: the backbone with the method
applied at its initialisation, evaluated like a run (same suite, task, seed, split,
precision). Methods that start exactly at the backbone (LoRA, LoRA-FA, DTL, adapters with
zero up-projections) give the zero-shot figure; the others show what their initialisation
does to it (Res-Tuning-Bypass sums the hidden states, SHERL and UniPT add a random
residual, prompts lengthen every sequence).

    python scripts/initial_metrics.py --suite vl-retrieval --variants prompt,sherl,res-tuning-bypass
    python scripts/initial_metrics.py --suite glue-embedded --variants lora-r32
"""

from __future__ import annotations

import argparse

import torch

from petlbench.config import load_suite
from petlbench.models.loader import load_backbone
from petlbench.tasks import get_task
from petlbench.train import prepare, setup_batches
from petlbench.variants import default_variants, load_variant


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default="vl-retrieval")
    p.add_argument("--variants", help="comma-separated variants (default: the suite's, else one per registered method)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a suite or method override (repeatable)")
    args = p.parse_args()
    suite = load_suite(args.suite, args.set)
    task = get_task(suite.task)
    device = torch.device("cpu")
    names = args.variants.split(",") if args.variants else suite.variants or default_variants()
    primary = task.primary_metric.label
    print(f"| variant | {primary} at step 0 ({suite.eval.split} split, seed {args.seed}) | every metric |\n|---|---:|---|")
    splits: dict | None = None
    for name in names:
        variant = load_variant(name, args.set)
        torch.manual_seed(args.seed)
        loaded = load_backbone(suite.model.name, suite.model.attn_implementation, device, suite.model.allow_pickle)
        if splits is None:
            splits = task.implementation.splits(suite, loaded.tokenizer, loaded.image_processor, pin_memory=False)
        data = lambda batch_size, train=splits["train"]: setup_batches(train, batch_size, args.seed, device)  # noqa: E731
        model = prepare(loaded.backbone, suite.train, variant, data, task=suite.task)
        values = task.implementation.evaluate(
            model, splits[suite.eval.split], suite.eval.batch_size, device, suite.eval.folds, suite.train.precision, iter
        )["values"]
        every = ", ".join(f"{key} {value:.1f}" for key, value in values.items())
        print(f"| {name} | {values[task.primary]:.1f} | {every} |", flush=True)


if __name__ == "__main__":
    main()
