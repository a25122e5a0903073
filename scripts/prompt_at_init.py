"""Why prompt tuning starts below the zero-shot model on the embedded suite: the rSum of
the prompted model before any training step, with the prompts' values and towers varied.

    python scripts/prompt_at_init.py            # test split; --split val for the validation split

Each line changes one thing against the shipped `prompt` variant at its VPT initialisation:
the prompts' scale (zero, x0.1, x10: each block's LayerNorm normalises a prompt token before
any block reads it), the tower that gets prompts (the other tower is the backbone's own),
and the shallow variant.
"""

from __future__ import annotations

import argparse

import torch

from petlbench.config import load_suite
from petlbench.models.loader import load_backbone
from petlbench.tasks.retrieval.data import suite_splits
from petlbench.tasks.retrieval.task import evaluate
from petlbench.train import prepare
from petlbench.variants import load_variant


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", choices=["val", "test"], default="test")
    args = p.parse_args()
    suite = load_suite("vl-retrieval", [f"eval.split={args.split}"])
    device = torch.device("cpu")
    splits = {}

    def prompted(variant: str = "prompt", scale: float = 1.0, tower: str | None = None):
        torch.manual_seed(0)
        loaded = load_backbone(suite.model.name, suite.model.attn_implementation, device, suite.model.allow_pickle)
        if "data" not in splits:
            splits["data"] = suite_splits(suite.data, loaded.tokenizer, loaded.image_processor)
        model = prepare(loaded.backbone, suite.train, load_variant(variant))
        with torch.no_grad():
            for prompts in model.prompts.values():
                prompts.mul_(scale)
        if tower == "vision":
            model.encode_text = loaded.backbone.encode_text
        elif tower == "text":
            model.encode_image = loaded.backbone.encode_image
        return model, loaded.backbone

    def rsum(model) -> str:
        metrics = evaluate(model, splits["data"][args.split], suite.eval.batch_size, device, suite.eval.folds, suite.train.precision)
        return f"{metrics['rsum']:.1f}"

    model, backbone = prompted()
    print(f"| model at step 0 | rSum ({args.split}) |\n|---|---:|")
    print(f"| zero-shot backbone | {rsum(backbone)} |")
    print(f"| prompt (deep), VPT init | {rsum(model)} |")
    for scale in (0.0, 0.1, 10.0):
        print(f"| prompt (deep), prompts x{scale:g} | {rsum(prompted(scale=scale)[0])} |")
    for tower in ("vision", "text"):
        print(f"| prompts on the {tower} tower only | {rsum(prompted(tower=tower)[0])} |")
    print(f"| prompt-shallow, VPT init | {rsum(prompted('prompt-shallow')[0])} |")


if __name__ == "__main__":
    main()
