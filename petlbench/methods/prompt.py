"""Prompt tuning (VPT, Jia et al., ECCV 2022) on both towers of a frozen CLIP.

`p` learnable tokens per tower enter the token sequence right after its first token (CLS
for vision, BOS for text), without position embedding. Deep: before every block the
previous block's prompt outputs are replaced by a fresh set; shallow: one set before the
first block. After the last block the prompt positions are dropped, so each tower pools
exactly the token it pooled before. Only the prompts train; the gradient travels back
through the whole frozen backbone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from transformers.masking_utils import create_causal_mask

from petlbench.config import MethodConfig, rule
from petlbench.models.clip import TOWERS, ClipDualEncoder, eot_positions
from petlbench.models.wrapper import BackboneWrapper
from petlbench.registry import EVERY_BLOCK, register

# Prompts go right after the first token: CLS stays at position 0 (what the vision tower
# pools); after BOS, every caption token, EOT included, sees them under the causal mask.
INSERT_AT = 1


@dataclass
class PromptConfig(MethodConfig):
    # 8, the low end of methods.md's 8..16: prompts lengthen every sequence of both towers
    # (37 vision and 40 text tokens on the shipped model, 50 and 77 on ViT-B/32), and the
    # activations kept for backward grow with it; the validation sweep may ask for more.
    prompts: int = field(default=8, metadata=rule("prompt tokens per tower and set (p)", ge=1, le=10_000))
    depth: Literal["deep", "shallow"] = field(
        default="deep", metadata={"help": "deep: a fresh set of prompts before every block; shallow: one set before the first block"}
    )


def _splice(x: torch.Tensor, remove: int, insert: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` (B, N, ...) with its ``remove`` tokens at `INSERT_AT` replaced by ``insert``."""
    parts = [x[:, :INSERT_AT], x[:, INSERT_AT + remove :]]
    if insert is not None:
        parts.insert(1, insert)
    return torch.cat(parts, dim=1)


class PromptedClip(BackboneWrapper):
    """A CLIP dual encoder whose towers walk their blocks themselves to splice prompts in.

    Written against the transformers 5.x CLIP layout (pyproject pins >=5,<6):
    `vision_model.embeddings` then `vision_model.pre_layrnorm`, `text_model.embeddings`,
    `CLIPEncoderLayer(hidden_states, attention_mask, **kwargs) -> hidden_states`, and the
    text tower's mask from `masking_utils.create_causal_mask` with `is_causal=True` passed
    to each layer. Everything else goes through `ClipDualEncoder`."""

    def __init__(self, backbone: ClipDualEncoder, prompts: int, depth: Literal["deep", "shallow"]):
        super().__init__(backbone)
        self.n_prompts = prompts
        config = backbone.clip.config
        self.prompts = nn.ParameterDict()
        for tower, blocks in backbone.blocks().items():
            width = getattr(config, f"{tower}_config").hidden_size
            sets = len(blocks) if depth == "deep" else 1
            self.prompts[tower] = nn.Parameter(torch.empty(sets, prompts, width, device=backbone.device))
        # VPT's initialisation: uniform(-b, b) with the Xavier bound b = sqrt(6 / (fan_in + d)),
        # fan_in being the input size of the layer whose outputs the prompts stand beside: the
        # patch embedding (channels x patch^2) for vision, exactly as VPT; for text the token
        # embedding is a lookup with no input width, so fan_in = d. (Each block's LayerNorm
        # normalises a prompt token before it is read, so only the scale relative to what the
        # blocks add to it matters.)
        vision = config.vision_config
        fan_in = {"vision": vision.num_channels * vision.patch_size**2, "text": config.text_config.hidden_size}
        for tower in TOWERS:
            width = self.prompts[tower].shape[-1]
            bound = math.sqrt(6.0 / (fan_in[tower] + width))
            nn.init.uniform_(self.prompts[tower], -bound, bound)  # the global torch seed

    def _walk(self, tower: str, x: torch.Tensor, mask: torch.Tensor | None, **block_kwargs) -> torch.Tensor:
        """Run ``tower``'s blocks on ``x`` (which holds the first prompt set), replacing the
        prompt outputs by the next set before each block that has one; the prompt positions
        are dropped from the result."""
        prompts = self.prompts[tower]
        for i, block in enumerate(self.backbone.blocks()[tower]):
            if 0 < i < len(prompts):
                x = _splice(x, self.n_prompts, prompts[i].expand(len(x), -1, -1))
            x = block(x, mask, **block_kwargs)
        return _splice(x, self.n_prompts)

    def image_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The vision tower's last-block output (B, N, d), prompt positions dropped.

        VPT inserts prompts into the first block's input; in CLIP that is after
        `pre_layrnorm`, so prompts (first set and deep sets alike) live where the blocks
        read, and the pre-norm sees only the image tokens it was trained on."""
        vision = self.backbone.clip.vision_model
        x = vision.pre_layrnorm(vision.embeddings(pixel_values))
        x = _splice(x, 0, self.prompts["vision"][0].expand(len(x), -1, -1))
        return self._walk("vision", x, None)

    def text_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The text tower's last-block output (B, N, d), prompt positions dropped; the
        positions are those of ``input_ids``. The padding mask is extended by `p` valid
        positions after BOS, and the library builds the causal mask over the longer sequence."""
        text = self.backbone.clip.text_model
        x = text.embeddings(input_ids=input_ids)  # position embeddings of the caption's own positions
        x = _splice(x, 0, self.prompts["text"][0].expand(len(x), -1, -1))
        padding = _splice(attention_mask, 0, attention_mask.new_ones(len(x), self.n_prompts))
        # Positional: the fourth argument (no KV cache) is `past_key_values` in transformers
        # <= 5.17 and `cache` later.
        mask = create_causal_mask(text.config, x, padding, None)
        return self._walk("text", x, mask, is_causal=True)

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        tokens = self.image_tokens(pixel_values)
        return self.backbone.tower_head("vision", tokens, pool_index=torch.zeros(len(tokens), dtype=torch.long, device=tokens.device))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        tokens = self.text_tokens(input_ids, attention_mask)
        eot = eot_positions(input_ids, self.backbone.clip.config.text_config.eos_token_id)
        return self.backbone.tower_head("text", tokens, pool_index=eot)


PROMPT = register("prompt", PromptConfig, lr_grid=(3e-3, 1e-2, 3e-2))


@PROMPT.builder("clip", keeps=EVERY_BLOCK)
def build(backbone: ClipDualEncoder, cfg: PromptConfig) -> PromptedClip:
    backbone.requires_grad_(False)
    return PromptedClip(backbone, cfg.prompts, cfg.depth)
