"""CLIP-style dual encoder: the interface every method and the training loop use."""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPModel


class ClipDualEncoder(nn.Module):
    """Wraps a transformers `CLIPModel`; exposes what methods need by role, not by the
    library's attribute names (which change between major versions)."""

    def __init__(self, clip: CLIPModel):
        super().__init__()
        self.clip = clip

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected (unnormalised) image embeddings, (B, projection_dim)."""
        return self.clip.get_image_features(pixel_values=pixel_values).pooler_output

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Projected (unnormalised) text embeddings, pooled at the EOT token."""
        return self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.clip.logit_scale

    def projections(self) -> list[nn.Module]:
        """The towers' final projection layers (the "head" of methods.md)."""
        return [self.clip.visual_projection, self.clip.text_projection]

    def blocks(self) -> dict[str, nn.ModuleList]:
        """Each tower's transformer blocks, first to last."""
        return {"vision": self.clip.vision_model.encoder.layers, "text": self.clip.text_model.encoder.layers}

    def final_norms(self) -> list[nn.Module]:
        """The LayerNorms applied after each tower's last block."""
        return [self.clip.vision_model.post_layernorm, self.clip.text_model.final_layer_norm]
