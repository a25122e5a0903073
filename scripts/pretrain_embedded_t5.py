"""Pretrain the embedded T5 by span corruption (T5's objective) on scene descriptions, and
write it to petlbench/assets/embedded-t5 (safetensors + tokenizer).

    python scripts/pretrain_embedded_t5.py          # a few minutes on 2 CPU cores

The text is the image data's captions (`petlbench.data.scenes`) of scenes with one to
three objects: the model learns the scene vocabulary and how descriptions go, never the
text tasks' casting or labels, so that it starts the tasks knowing the words but not the
tasks. Span corruption as T5: about 15% of the tokens in spans of mean length 3, each
span replaced by a sentinel in the source; the target lists each sentinel and its span,
then a final sentinel. Deterministic for a given torch version and thread count.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from transformers import T5ForConditionalGeneration

from petlbench.data import scenes
from petlbench.models import embedded
from petlbench.models.resolve import EMBEDDED
from petlbench.train import warmup_cosine

NOISE, MEAN_SPAN = 0.15, 3.0


def corrupt(ids: list[int], rng: np.random.Generator, sentinels: list[int], eos: int) -> tuple[list[int], list[int]]:
    """(source, target) of T5's span corruption of ``ids`` (no end token)."""
    n = len(ids)
    masked = max(1, round(n * NOISE))
    spans = max(1, round(masked / MEAN_SPAN))
    starts = sorted(rng.choice(n, size=min(spans, n), replace=False).tolist())
    drop = np.zeros(n, dtype=bool)
    for start in starts:
        drop[start : start + max(1, int(rng.poisson(MEAN_SPAN - 1)) + 1)] = True
    source, target, k = [], [], 0
    for i, token in enumerate(ids):
        if drop[i] and (i == 0 or not drop[i - 1]):
            source.append(sentinels[k])
            target.append(sentinels[k])
            k += 1
        (target if drop[i] else source).append(token)
    return [*source, eos], [*target, sentinels[k], eos]


def pad(rows: list[list[int]], length: int, value: int) -> torch.Tensor:
    return torch.tensor([row[:length] + [value] * (length - len(row[:length])) for row in rows])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--scenes", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=4321)
    p.add_argument("--out", type=Path, default=EMBEDDED["embedded-t5"])
    args = p.parse_args()

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    tokenizer = embedded.build_t5_tokenizer()
    model = T5ForConditionalGeneration(embedded.build_t5_config(len(tokenizer)))
    sentinels = tokenizer.convert_tokens_to_ids(list(embedded.T5_SENTINELS))
    rng = np.random.default_rng(args.seed)
    texts = [caption for i in range(args.scenes) for caption in scenes.captions(scenes.random_scene(rng, 1 + i % 3), rng)]
    words = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    t0 = time.time()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(args.steps // 20, args.steps))
    model.train()
    for step in range(args.steps):
        pairs = [corrupt(words[i], rng, sentinels, tokenizer.eos_token_id) for i in rng.integers(len(words), size=args.batch_size)]
        source = pad([s for s, _ in pairs], max(len(s) for s, _ in pairs), tokenizer.pad_token_id)
        labels = pad([t for _, t in pairs], max(len(t) for _, t in pairs), -100)
        loss = model(input_ids=source, attention_mask=(source != tokenizer.pad_token_id).long(), labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        if step % 250 == 0 or step == args.steps - 1:
            print(f"step {step:5d} loss {loss.item():.3f} ({time.time() - t0:.0f}s)", flush=True)

    result = {
        "command": "python scripts/pretrain_embedded_t5.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "seconds": round(time.time() - t0),
        "final_loss": round(loss.item(), 3),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    (args.out / "pretraining.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
