"""Retrieval of each variant before its first training step: the backbone with the method
applied at its initialisation, evaluated like a run (same suite, seed, split, precision).
Methods that start exactly at the backbone (LoRA, LoRA-FA, DTL, adapters with zero
up-projections) give the zero-shot figure; the others show what their initialisation does
to it (Res-Tuning-Bypass sums the hidden states, SHERL and UniPT add a random residual,
prompts lengthen every sequence).

    python scripts/initial_rsum.py --suite vl-retrieval --variants prompt,sherl,res-tuning-bypass
"""

from __future__ import annotations

import argparse

import torch

from petlbench.config import load_suite
from petlbench.models.loader import load_backbone
from petlbench.tasks.retrieval.data import suite_splits
from petlbench.tasks.retrieval.task import evaluate
from petlbench.train import prepare, setup_batches
from petlbench.variants import default_variants, load_variant


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default="vl-retrieval")
    p.add_argument("--variants", help="comma-separated variants (default: one per registered method)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a suite or method override (repeatable)")
    args = p.parse_args()
    suite = load_suite(args.suite, args.set)
    device = torch.device("cpu")
    names = args.variants.split(",") if args.variants else default_variants()
    print(f"| variant | rSum at step 0 ({suite.eval.split} split, seed {args.seed}) |\n|---|---:|")
    splits = None
    for name in names:
        variant = load_variant(name, args.set)
        torch.manual_seed(args.seed)
        loaded = load_backbone(suite.model.name, suite.model.attn_implementation, device, suite.model.allow_pickle)
        splits = splits or suite_splits(suite.data, loaded.tokenizer, loaded.image_processor)
        train = splits["train"]
        model = prepare(loaded.backbone, suite.train, variant, data=lambda size, train=train: setup_batches(train, size, args.seed, device))
        metrics = evaluate(model, splits[suite.eval.split], suite.eval.batch_size, device, suite.eval.folds, suite.train.precision)
        print(f"| {name} | {metrics['rsum']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
