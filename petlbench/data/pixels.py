"""The generated scenes as model input, for every task that reads them."""

from __future__ import annotations

import numpy as np
import torch

# The embedded model's preprocessing: scale uint8 to [-1, 1] (mean 0.5, std 0.5 per channel).
PIXEL_MEAN = PIXEL_STD = 0.5


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """(n, H, W, 3) uint8 -> (n, 3, H, W) float32 normalised for the embedded model."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    return x.sub_(PIXEL_MEAN).div_(PIXEL_STD).contiguous()
