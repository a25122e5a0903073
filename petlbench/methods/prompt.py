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
from typing import Literal

import torch
from torch import nn

from petlbench.methods.specs import PROMPT, PromptConfig
from petlbench.models.clip import TOWERS, ClipDualEncoder
from petlbench.models.wrapper import TokenWalker

# Prompts go right after the first token: CLS stays at position 0 (what the vision tower
# pools); after BOS, every caption token, EOT included, sees them under the causal mask.
INSERT_AT = 1


def _splice(x: torch.Tensor, remove: int, insert: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` (B, N, ...) with its ``remove`` tokens at `INSERT_AT` replaced by ``insert``."""
    parts = [x[:, :INSERT_AT], x[:, INSERT_AT + remove :]]
    if insert is not None:
        parts.insert(1, insert)
    return torch.cat(parts, dim=1)


class PromptedClip(TokenWalker):
    """A CLIP dual encoder whose towers walk their blocks themselves (`ClipDualEncoder`'s
    `block_input` / `block_arguments`) to splice prompts in."""

    def __init__(self, backbone: ClipDualEncoder, prompts: int, depth: Literal["deep", "shallow"]):
        super().__init__(backbone)
        self.n_prompts = prompts
        self.prompts = nn.ParameterDict()
        for tower, blocks in backbone.blocks().items():
            width = backbone.tower_shape(tower).width
            sets = len(blocks) if depth == "deep" else 1
            self.prompts[tower] = nn.Parameter(torch.empty(sets, prompts, width, device=backbone.device))
        # VPT's initialisation: uniform(-b, b) with the Xavier bound b = sqrt(6 / (fan_in + d)),
        # fan_in being the input size of the layer whose outputs the prompts stand beside: the
        # patch embedding (channels x patch^2) for vision, exactly as VPT; for text the token
        # embedding is a lookup with no input width, so fan_in = d. (Each block's LayerNorm
        # normalises a prompt token before it is read, so only the scale relative to what the
        # blocks add to it matters.)
        vision = backbone.tower_shape("vision")
        fan_in = {"vision": vision.channels * vision.patch_size**2, "text": backbone.tower_shape("text").width}
        for tower in TOWERS:
            width = self.prompts[tower].shape[-1]
            bound = math.sqrt(6.0 / (fan_in[tower] + width))
            nn.init.uniform_(self.prompts[tower], -bound, bound)  # the global torch seed

    def tokens(self, tower: str, **inputs: torch.Tensor) -> torch.Tensor:
        """``tower``'s last-block output (B, N, d), prompt positions dropped.

        VPT inserts prompts into the first block's input: in CLIP's vision tower that is
        after `pre_layrnorm`, so prompts live where the blocks read and the pre-norm sees
        only the image tokens it was trained on. Text positions are those of the caption;
        its (B, N) padding mask is extended by `p` valid positions after BOS, and the
        causal mask is built over the longer sequence. Before each block that has a set of
        its own, the previous block's prompt outputs are replaced by it."""
        prompts, padding = self.prompts[tower], inputs.get("attention_mask")
        x = self.backbone.block_input(tower, **inputs)
        x = _splice(x, 0, prompts[0].expand(len(x), -1, -1))
        if padding is not None:
            padding = _splice(padding, 0, padding.new_ones(len(x), self.n_prompts))
        args, kwargs = self.backbone.block_arguments(tower, x, padding)
        for i, block in enumerate(self.backbone.blocks()[tower]):
            if 0 < i < len(prompts):
                x = _splice(x, self.n_prompts, prompts[i].expand(len(x), -1, -1))
            x = block(x, *args, **kwargs)
        return _splice(x, self.n_prompts)


@PROMPT.builder("clip")
def build(backbone: ClipDualEncoder, cfg: PromptConfig) -> PromptedClip:
    backbone.requires_grad_(False)
    return PromptedClip(backbone, cfg.prompts, cfg.depth)
