"""The training objective and the evaluation pass shared by every method and the
pretraining script."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from petlbench.data.retrieval import RetrievalSplit
from petlbench.metrics import retrieval_recalls


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
def embed_split(model, split: RetrievalSplit, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised embeddings of every image and every caption (captions flattened image-major).
    Batches are copied to ``device`` even on the CPU, so that every device holds (and the
    CPU accounting counts) the batch, as with training batches."""
    images = [
        F.normalize(model.encode_image(split.pixels[i : i + batch_size].to(device, copy=True)), dim=-1)
        for i in range(0, split.n_images, batch_size)
    ]
    ids = split.input_ids.flatten(0, 1)
    mask = split.attention_mask.flatten(0, 1)
    texts = [
        F.normalize(
            model.encode_text(ids[i : i + batch_size].to(device, copy=True), mask[i : i + batch_size].to(device, copy=True)), dim=-1
        )
        for i in range(0, ids.shape[0], batch_size)
    ]
    return torch.cat(images), torch.cat(texts)


def evaluate(model, split: RetrievalSplit, batch_size: int, device: torch.device) -> dict[str, float]:
    """Recalls and rSum of ``model`` on ``split`` (eval mode restored to the caller's mode)."""
    was_training = model.training
    model.eval()
    try:
        images, texts = embed_split(model, split, batch_size, device)
        return retrieval_recalls((images @ texts.T).float().cpu(), split.captions_per_image)
    finally:
        model.train(was_training)
