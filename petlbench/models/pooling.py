"""Pooling over tokens shared by backbones and methods."""

from __future__ import annotations

import torch


def masked_mean(tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``tokens`` (B, N, m) over the unpadded positions (``token_mask`` True): (B, m)."""
    mask = token_mask.unsqueeze(-1).to(tokens.dtype)
    return (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
