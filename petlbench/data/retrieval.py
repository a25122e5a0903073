"""Image-text retrieval data as tensors, and the training sampler.

Training follows the Flickr30K/COCO protocol (measurement.md): each epoch visits every
image once, in a seeded random order, with one of its captions drawn at random, so a batch
never holds two captions of the same image.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from petlbench.data import scenes

# The embedded model's preprocessing: scale uint8 to [-1, 1] (mean 0.5, std 0.5 per channel).
PIXEL_MEAN = PIXEL_STD = 0.5


@dataclass
class RetrievalSplit:
    pixels: torch.Tensor  # (n_images, 3, H, W) float32, normalised
    input_ids: torch.Tensor  # (n_images, captions_per_image, T) int64
    attention_mask: torch.Tensor  # (n_images, captions_per_image, T) int64

    @property
    def n_images(self) -> int:
        return self.pixels.shape[0]

    @property
    def captions_per_image(self) -> int:
        return self.input_ids.shape[1]


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """(n, H, W, 3) uint8 -> (n, 3, H, W) float32 normalised for the embedded model."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    return x.sub_(PIXEL_MEAN).div_(PIXEL_STD).contiguous()


def from_scenes(split: scenes.SceneSplit, tokenizer, text_length: int) -> RetrievalSplit:
    """Tokenise every caption to a fixed length (fixed shapes keep memory figures exact)."""
    n, k = len(split.captions), len(split.captions[0]) if split.captions else scenes.CAPTIONS_PER_IMAGE
    flat = [c for caps in split.captions for c in caps]
    enc = tokenizer(flat, padding="max_length", max_length=text_length, truncation=True, return_tensors="pt")
    return RetrievalSplit(
        pixels=to_pixels(split.images),
        input_ids=enc["input_ids"].view(n, k, text_length),
        attention_mask=enc["attention_mask"].view(n, k, text_length),
    )


def training_batches(
    n_images: int, captions_per_image: int, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (image indices, caption indices) batches; incomplete epoch tails are dropped."""
    if batch_size > n_images:
        raise ValueError(f"batch size {batch_size} exceeds the {n_images} training images")
    while True:
        order = torch.randperm(n_images, generator=generator)
        caption = torch.randint(captions_per_image, (n_images,), generator=generator)
        for start in range(0, n_images - batch_size + 1, batch_size):
            idx = order[start : start + batch_size]
            yield idx, caption[idx]


def suite_splits(cfg, tokenizer) -> dict[str, RetrievalSplit]:
    """The train / val / test splits a suite's `data` section describes (`DataConfig`)."""
    sizes = {"train": cfg.train_images, "val": cfg.val_images, "test": cfg.test_images}
    generated = scenes.target_splits(cfg.seed, sizes)
    return {name: from_scenes(split, tokenizer, cfg.text_length) for name, split in generated.items()}
