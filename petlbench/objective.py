"""The training objective and the evaluation pass shared by every method and the
pretraining script."""

from __future__ import annotations

import contextlib
import math
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F

from petlbench.config import Precision
from petlbench.data.retrieval import RetrievalSplit
from petlbench.metrics import retrieval_recalls


def autocast(precision: Precision, device_type: str) -> contextlib.AbstractContextManager:
    """The one mapping of the suite's `train.precision` to the context that the training
    step's forward and loss, and the evaluation's forward, run under. bf16: `torch.autocast`
    (weights, gradients and optimizer state stay fp32; bf16 has fp32's exponent range, so no
    loss scaling). fp32: no context at all, so fp32 figures are exactly those of plain code."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype={"bf16": torch.bfloat16}[precision])


def contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP's loss): matching pairs sit on the diagonal."""
    logits = logit_scale.exp() * F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def warmup_cosine(warmup_steps: int, total_steps: int):
    """LR multiplier: linear warm-up, then cosine decay to zero (for `LambdaLR`)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


@torch.no_grad()
def embed_split(
    model, split: RetrievalSplit, batch_size: int, device: torch.device, precision: Precision = "fp32", host: Callable = iter
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised fp32 embeddings of every image and every caption (captions flattened
    image-major), the forward under the training ``precision`` so that evaluation memory and
    speed reflect it. Batches are read through ``host`` (the loop passes
    `measure.memory.host_batches`, which keeps host data out of the CPU accounting) and
    copied to ``device`` even on the CPU, so that every device holds (and the accounting
    counts) the batch, as with training batches."""

    def embed(encode, *batch: torch.Tensor) -> torch.Tensor:
        with autocast(precision, device.type):
            out = encode(*(t.to(device, copy=True) for t in batch))
        return F.normalize(out.float(), dim=-1)

    images = [embed(model.encode_image, pixels) for pixels in host(split.image_batches(batch_size))]
    texts = [embed(model.encode_text, ids, mask) for ids, mask in host(split.caption_batches(batch_size))]
    return torch.cat(images), torch.cat(texts)


def evaluate(
    model,
    split: RetrievalSplit,
    batch_size: int,
    device: torch.device,
    folds: int = 1,
    precision: Precision = "fp32",
    host: Callable = iter,
) -> dict:
    """Recalls and rSum of ``model`` on ``split``, with the number of images and captions
    ranked; with ``folds`` > 1, also under ``folds`` their mean over that many equal folds
    (COCO's 1K test: 5 folds of its 5K test images); the forward under the training
    ``precision``. Restores the caller's train/eval mode."""
    was_training = model.training
    model.eval()
    try:
        images, texts = embed_split(model, split, batch_size, device, precision, host)
    finally:
        model.train(was_training)
    similarity = (images @ texts.T).float().cpu()
    k = split.captions_per_image
    metrics = {**retrieval_recalls(similarity, k), "images": split.n_images, "captions": split.n_images * k}
    if folds > 1:
        m = split.n_images // folds  # `sweep.make_plan` checks that the folds are equal
        per_fold = [retrieval_recalls(similarity[f * m : (f + 1) * m, f * m * k : (f + 1) * m * k], k) for f in range(folds)]
        metrics["folds"] = {"count": folds, "images": m, **{key: statistics.fmean(r[key] for r in per_fold) for key in per_fold[0]}}
    return metrics
