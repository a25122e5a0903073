"""Prompt tuning: VPT (Jia et al., ECCV 2022) on both towers of a frozen CLIP, and
Lester et al. (EMNLP 2021) on a frozen T5's encoder (`PromptedEncoderDecoder`).

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
from petlbench.models.backbone import Encoded, EncoderDecoder
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


class PromptedEncoderDecoder(nn.Module):
    """A frozen encoder-decoder whose encoder reads ``p`` trained vectors before the
    source's token embeddings, with ``p`` more positions in its padding mask, so that the
    decoder's cross-attention sees them too; the decoder has none (the LST code's prompt
    tuning of T5). Initialised from the first ``p`` rows of the pretrained token embeddings
    ("from vocab": the LST code means to, though its copy runs before the checkpoint loads
    and so copies random rows), cycling through them where the vocabulary is smaller (the
    embedded T5's 79 words)."""

    def __init__(self, backbone: EncoderDecoder, prompts: int):
        super().__init__()
        self.backbone = backbone
        with torch.no_grad():
            vocabulary = backbone.embed(torch.arange(prompts, device=backbone.device) % backbone.vocab_size)
        self.prompts = nn.Parameter(vocabulary.detach().clone())

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Encoded:
        n = len(input_ids)
        embeddings = torch.cat([self.prompts.expand(n, -1, -1), self.backbone.embed(input_ids)], dim=1)
        mask = torch.cat([attention_mask.new_ones(n, len(self.prompts)), attention_mask], dim=1)
        return self.backbone.encode_embeddings(embeddings, mask)

    def decode(self, decoder_input_ids: torch.Tensor, encoded: Encoded) -> torch.Tensor:
        return self.backbone.decode(decoder_input_ids, encoded)


@PROMPT.builder("t5")
def build_encoder_decoder(backbone: EncoderDecoder, cfg: PromptConfig) -> PromptedEncoderDecoder:
    """Shallow prompts only (`PROMPT.refuses` the deep ones on T5)."""
    backbone.requires_grad_(False)
    return PromptedEncoderDecoder(backbone, cfg.prompts)
