"""Pretrain the embedded CLIP on the *source* distribution (single-object scenes) and
write it to petlbench/assets/embedded-clip (safetensors + tokenizer).

    python scripts/pretrain_embedded.py            # ~15 min on 2 CPU cores

Deterministic for a given torch version and thread count (seeded, deterministic
algorithms). It reports zero-shot rSum on the suite's target test split for the random
initialisation and for the pretrained weights, and records both in pretraining.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import CLIPModel

from petlbench.data import scenes
from petlbench.models import embedded
from petlbench.models.clip import ClipDualEncoder
from petlbench.models.resolve import EMBEDDED
from petlbench.tasks.retrieval import data as retrieval
from petlbench.tasks.retrieval.task import contrastive_loss, evaluate
from petlbench.train import warmup_cosine


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--source-images", type=int, default=40_000)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--out", type=Path, default=EMBEDDED["embedded-clip"])
    args = p.parse_args()

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    tokenizer = embedded.build_tokenizer()
    model = CLIPModel(embedded.build_config(len(tokenizer)))
    net = ClipDualEncoder(model)
    device = torch.device("cpu")

    t0 = time.time()
    source = retrieval.from_scenes(scenes.generate_source(args.source_images, args.seed), tokenizer, embedded.TEXT_LENGTH)
    # the suite's default target test split (suites/vl-retrieval.yaml: data.seed 0, 1000 test images)
    target = retrieval.from_scenes(scenes.target_splits(0, {"test": 1000})["test"], tokenizer, embedded.TEXT_LENGTH)
    random_rsum = evaluate(net, target, 500, device)["rsum"]
    print(f"data ready in {time.time() - t0:.0f}s; zero-shot target rSum with random weights: {random_rsum:.1f}")

    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(args.steps // 20, args.steps))
    gen = torch.Generator().manual_seed(args.seed)
    batches = retrieval.training_batches(source.n_images, source.captions_per_image, args.batch_size, gen)
    net.train()
    for step in range(args.steps):
        idx, cap = next(batches)
        loss = contrastive_loss(
            net.encode_image(source.pixels[idx]),
            net.encode_text(source.input_ids[idx, cap], source.attention_mask[idx, cap]),
            net.logit_scale,
        )
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        if step % 250 == 0 or step == args.steps - 1:
            print(f"step {step:5d} loss {loss.item():.3f} ({time.time() - t0:.0f}s)", flush=True)

    result = {
        "command": "python scripts/pretrain_embedded.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "seconds": round(time.time() - t0),
        "zero_shot_target_test_rsum": {
            "random_init": round(random_rsum, 2),
            "pretrained": round(evaluate(net, target, 500, device)["rsum"], 2),
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    (args.out / "pretraining.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
