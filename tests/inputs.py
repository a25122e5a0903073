"""Small seeded inputs for the shipped CLIP, shared by the method tests."""

from __future__ import annotations

import torch

CAPTIONS = ["a big red circle", "a small blue square at the top left", "we see"]


def shipped_batch(loaded, n: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pixels, input_ids, attention_mask) for ``n`` pairs, captions padded to 40 tokens."""
    enc = loaded.tokenizer(CAPTIONS[:n], padding="max_length", max_length=40, return_tensors="pt")
    pixels = torch.randn(n, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    return pixels, enc["input_ids"], enc["attention_mask"]


def tower_inputs(loaded, tower: str, n: int = 2) -> dict[str, torch.Tensor]:
    """The keyword inputs of one tower ('vision' or 'text'), as `encode(tower, **inputs)` takes them."""
    pixels, ids, mask = shipped_batch(loaded, n)
    return {"pixel_values": pixels} if tower == "vision" else {"input_ids": ids, "attention_mask": mask}
