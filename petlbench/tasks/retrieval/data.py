"""Image-text retrieval splits (in memory or read from files), and the training sampler.

Training follows the Flickr30K/COCO protocol: each epoch visits every
image once, in a seeded random order, with one of its captions drawn at random, so a batch
never holds two captions of the same image.
"""

from __future__ import annotations

import functools
import os
from abc import abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from petlbench.config import DataConfig
from petlbench.data import files, scenes
from petlbench.data.pixels import to_pixels
from petlbench.tasks.base import Split


class RetrievalSplit(Split):
    """A split as the training loop and the evaluation read it: images with a fixed number
    of captions each. Batches come out in host memory; the caller copies them to the device."""

    n_images: int
    captions_per_image: int

    @abstractmethod
    def caption_tokens(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every caption's ids and attention mask, (n_images, captions_per_image, T) each."""

    @abstractmethod
    def image_batches(self, batch_size: int) -> Iterable[torch.Tensor]:
        """Every image as model input, in order, ``batch_size`` at a time."""

    def caption_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every caption (image-major), ``batch_size`` at a time."""
        ids, mask = (t.flatten(0, 1) for t in self.caption_tokens())
        for i in range(0, ids.shape[0], batch_size):
            yield ids[i : i + batch_size], mask[i : i + batch_size]


@dataclass
class TensorSplit(RetrievalSplit):
    """A split held in memory as tensors (the generated scenes)."""

    pixels: torch.Tensor  # (n_images, 3, H, W) float32, normalised
    input_ids: torch.Tensor  # (n_images, captions_per_image, T) int64
    attention_mask: torch.Tensor  # (n_images, captions_per_image, T) int64

    @property
    def n_images(self) -> int:
        return self.pixels.shape[0]

    @property
    def captions_per_image(self) -> int:
        return self.input_ids.shape[1]

    def caption_tokens(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.input_ids, self.attention_mask

    def image_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        for i in range(0, self.n_images, batch_size):
            yield self.pixels[i : i + batch_size]

    def training_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[dict[str, torch.Tensor]]:
        for idx, cap in training_batches(self.n_images, self.captions_per_image, batch_size, generator):
            yield {"pixel_values": self.pixels[idx], "input_ids": self.input_ids[idx, cap], "attention_mask": self.attention_mask[idx, cap]}


class FileSplit(RetrievalSplit):
    """A split read from files (`petlbench.data.files`): images decoded and preprocessed by
    the model's image processor and captions tokenised by its tokenizer, in ``workers``
    DataLoader processes."""

    def __init__(self, items: list[files.ImageItem], tokenizer, image_processor, text_length: int, workers: int, pin_memory: bool):
        self.items, self.tokenizer, self.image_processor = items, tokenizer, image_processor
        self.text_length, self.workers, self.pin_memory = text_length, min(workers, _usable_cpus()), pin_memory
        self.n_images, self.captions_per_image = len(items), len(items[0].captions)
        self._tokens: tuple[torch.Tensor, torch.Tensor] | None = None

    def _loader(self, dataset, **kwargs) -> DataLoader:
        """A DataLoader with a generator of its own: its workers' base seed (unused: loading
        draws nothing at random) must not come from the global generator, which seeds the
        run's initialisation and dropout identically for data in memory and on disk."""
        return DataLoader(dataset, num_workers=self.workers, pin_memory=self.pin_memory, generator=torch.Generator(), **kwargs)

    def caption_tokens(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._tokens is None:  # evaluation captions: tokenised once, in this process
            text = _tokenize(self.tokenizer, [c for item in self.items for c in item.captions], self.text_length)
            shape = (self.n_images, self.captions_per_image, self.text_length)
            self._tokens = text["input_ids"].view(shape), text["attention_mask"].view(shape)
        return self._tokens

    def image_batches(self, batch_size: int) -> DataLoader:
        return self._loader(files.Images(self.items, self.image_processor), batch_size=batch_size)

    def training_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[dict[str, torch.Tensor]]:
        sampler = files.PairSampler(training_batches(self.n_images, self.captions_per_image, batch_size, generator))
        collate = files.Collate(functools.partial(_tokenize, self.tokenizer, max_length=self.text_length))
        return iter(self._loader(files.Pairs(self.items, self.image_processor), batch_sampler=sampler, collate_fn=collate))


def _usable_cpus() -> int:
    """The CPUs this process may run on (a SLURM or cgroup limit included where the OS says
    so): more DataLoader workers than that only compete for them."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _tokenize(tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Every caption padded (or cut) to ``max_length`` tokens: fixed shapes keep memory
    figures exact and identical for every method."""
    return tokenizer(texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")


def from_scenes(split: scenes.SceneSplit, tokenizer, text_length: int) -> TensorSplit:
    """Generated scenes as tensors, every caption tokenised."""
    n, k = len(split.captions), len(split.captions[0]) if split.captions else scenes.CAPTIONS_PER_IMAGE
    enc = _tokenize(tokenizer, [c for caps in split.captions for c in caps], text_length)
    return TensorSplit(
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


def suite_splits(cfg: DataConfig, tokenizer, image_processor, pin_memory: bool = False) -> dict[str, RetrievalSplit]:
    """The train / val / test splits a suite's `data` section describes. Data read from
    files needs the model's ``image_processor``."""
    if cfg.kind == "scenes":
        sizes = {"train": cfg.train_images, "val": cfg.val_images, "test": cfg.test_images}
        if cfg.target == "shifted":
            generated = scenes.shifted_splits(cfg.seed, sizes, cfg.shift)
        else:
            generated = scenes.target_splits(cfg.seed, sizes)
        return {name: from_scenes(split, tokenizer, cfg.text_length) for name, split in generated.items()}
    return {
        name: FileSplit(items, tokenizer, image_processor, cfg.text_length, cfg.workers, pin_memory)
        for name, items in files.read(cfg).items()
    }
