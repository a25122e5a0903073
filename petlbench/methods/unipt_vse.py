"""UniPT on the VSE family (`VseDualEncoder`): the token-level variant on the BERT text
tower and the CNN variant on the ResNet image tower, as methods.md describes them, built
from the dual-encoder variant's blocks (`truncated_attention`, `masked_mean`,
`LayerConfidence`). `unipt`'s `apply` picks these for a VSE backbone.

Both towers' bodies run under an explicit ``no_grad`` and in eval mode (the CNN's
BatchNorm statistics and BERT's dropout are those of a frozen feature extractor). Each
variant ends in ReLU and a Linear to the joint width per token, then the pooling head:
masked mean over text tokens, mean over C5's positions for the image (methods.md gives
that output stage for the token-level variant; the CNN variant uses the same, since the
image head pools C5 by its average). The backbone's own projections are not on this
path: under a suite's `train.head: trainable` they would train without a gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from petlbench.config import ConfigError
from petlbench.methods.unipt import L1_EPS, LayerConfidence, truncated_attention
from petlbench.models.clip import TowerStates
from petlbench.models.pooling import masked_mean
from petlbench.models.vse import VseDualEncoder
from petlbench.models.wrapper import BackboneWrapper


def _project(width: int) -> nn.Sequential:
    """``Proj`` of both variants: Linear, then LayerNorm."""
    return nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width))


def _output(width: int, embed: int) -> nn.Sequential:
    """ReLU, then a Linear to the joint width (per token)."""
    return nn.Sequential(nn.ReLU(), nn.Linear(width, embed))


def _conv_bn(channels: int, width: int) -> nn.Sequential:
    """1x1 conv to ``width`` then BatchNorm (the conv has no bias: BatchNorm's shift is one)."""
    return nn.Sequential(nn.Conv2d(channels, width, 1, bias=False), nn.BatchNorm2d(width))


def _tokens(feature_map: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C)."""
    return feature_map.flatten(2).transpose(1, 2)


class TokenUniPT(nn.Module):
    """Token-level variant: per layer ``t_i = LayerNorm(Linear_i(h_i))``; the anchor is the
    last layer's reduced tokens ``A``; each other layer gives ``m_i = attn(A, t_i) + t_i``
    (token-to-token truncated attention plus identity); confidence on
    ``mean(A) ⊙ mean(t_i)``, softmax over the L other layers; ``A + Proj(M)``."""

    def __init__(self, n_states: int, hidden: int, width: int, embed: int):
        super().__init__()
        self.reduce = nn.ModuleList(nn.Sequential(nn.Linear(hidden, width), nn.LayerNorm(width)) for _ in range(n_states))
        self.confidence = LayerConfidence(width)
        self.project = _project(width)
        self.output = _output(width, embed)

    def forward(self, states: TowerStates) -> torch.Tensor:
        """Tokens (B, N, embed), before the pooling head."""
        mask = states.token_mask
        reduced = [reduce(hidden) for reduce, hidden in zip(self.reduce, states.hidden_states, strict=True)]
        anchor = reduced[-1]
        merged = [truncated_attention(anchor, tokens, mask) + tokens for tokens in reduced[:-1]]
        summaries = [masked_mean(tokens, mask) for tokens in reduced[:-1]]
        mixed = self.confidence(masked_mean(anchor, mask), summaries, merged)
        return self.output(anchor + self.project(mixed))


def window_size(stage: torch.Tensor, c5: torch.Tensor, input_size: tuple[int, int]) -> tuple[int, int]:
    """``k`` per axis: the stage's spatial size over C5's, read from the actual maps.
    Raises `ConfigError` when it is not an integer."""
    (h, w), (h5, w5) = stage.shape[-2:], c5.shape[-2:]
    if h % h5 or w % w5:
        raise ConfigError(
            f"unipt (CNN variant): a {input_size[0]}x{input_size[1]} input gives a {h}x{w} stage map that is not a whole "
            f"multiple of C5's {h5}x{w5}, so the window size k = stage size / C5 size is not an integer; "
            "use input sizes that are multiples of 32"
        )
    return h // h5, w // w5


class StageInteraction(nn.Module):
    """Pre-interaction of one earlier stage with C5: C5 mapped to the stage's channels
    (1x1 conv + ReLU), upsampled (nearest), multiplied with the stage map and summed over
    channels into a saliency map; per ``k x k`` window ReLU, L1 norm, ``+ 1/k²``; the
    weighted stage map sum-pooled to C5's size; 1x1 conv to ``m`` + BatchNorm."""

    def __init__(self, c5_channels: int, channels: int, width: int):
        super().__init__()
        self.guide = nn.Sequential(nn.Conv2d(c5_channels, channels, 1), nn.ReLU())
        self.reduce = _conv_bn(channels, width)

    def forward(self, stage: torch.Tensor, c5: torch.Tensor, k: tuple[int, int]) -> torch.Tensor:
        """(B, H5*W5, m) tokens of the stage."""
        b, c, h, w = stage.shape
        (kh, kw), (h5, w5) = k, c5.shape[-2:]
        guide = F.interpolate(self.guide(c5), size=(h, w), mode="nearest")
        saliency = (guide * stage).sum(dim=1).relu().reshape(b, h5, kh, w5, kw)
        weights = saliency / saliency.sum(dim=(2, 4), keepdim=True).clamp(min=L1_EPS) + 1.0 / (kh * kw)
        weighted = stage * weights.reshape(b, 1, h, w)
        pooled = weighted.reshape(b, c, h5, kh, w5, kw).sum(dim=(3, 5))
        return _tokens(self.reduce(pooled))


class CnnUniPT(nn.Module):
    """CNN variant over stages C2..C5: anchor = C5 by 1x1 conv + BatchNorm to ``m`` as
    tokens; each earlier stage through `StageInteraction`, then truncated attention from
    the anchor tokens plus identity; confidence over the stages; ``anchor + Proj(M)``."""

    def __init__(self, channels: list[int], width: int, embed: int):
        super().__init__()
        *earlier, c5 = channels
        self.anchor = _conv_bn(c5, width)
        self.stages = nn.ModuleList(StageInteraction(c5, c, width) for c in earlier)
        self.confidence = LayerConfidence(width)
        self.project = _project(width)
        self.output = _output(width, embed)

    def forward(self, maps: tuple[torch.Tensor, ...], input_size: tuple[int, int]) -> torch.Tensor:
        """Tokens (B, H5*W5, embed) from the stage maps C2..C5, before the pooling head."""
        *earlier, c5 = maps
        sizes = [window_size(stage, c5, input_size) for stage in earlier]  # all checked before any work
        anchor = _tokens(self.anchor(c5))
        merged, summaries = [], []
        everywhere = torch.ones(anchor.shape[:2], dtype=torch.bool, device=anchor.device)
        for interact, stage, k in zip(self.stages, earlier, sizes, strict=True):
            tokens = interact(stage, c5, k)
            merged.append(truncated_attention(anchor, tokens, everywhere) + tokens)
            summaries.append(tokens.mean(dim=1))
        mixed = self.confidence(anchor.mean(dim=1), summaries, merged)
        return self.output(anchor + self.project(mixed))


class UniPTVse(BackboneWrapper):
    """The frozen VSE dual encoder with UniPT's CNN variant on the image tower and its
    token-level variant on the text tower; exposes the backbone's interface."""

    frozen_eval = True

    def __init__(self, backbone: VseDualEncoder, image: CnnUniPT, text: TokenUniPT):
        super().__init__(backbone)
        self.image = image
        self.text = text

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # explicit, see UniPT.frozen_states
            maps = self.backbone.stage_maps(pixel_values)
        return self.image(maps, tuple(pixel_values.shape[-2:])).mean(dim=1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            states = self.backbone.tower_states("text", input_ids=input_ids, attention_mask=attention_mask)
        return masked_mean(self.text(states), states.token_mask)


def build(backbone: VseDualEncoder, width: int) -> UniPTVse:
    """UniPT on ``backbone`` in reduced width ``width`` (m); freezes the backbone."""
    backbone.requires_grad_(False)
    embed = backbone.embed_dim
    text_config = backbone.bert.config
    with torch.device(backbone.device):
        image = CnnUniPT(list(backbone.resnet.config.hidden_sizes), width, embed)
        text = TokenUniPT(text_config.num_hidden_layers + 1, text_config.hidden_size, width, embed)
    return UniPTVse(backbone, image, text).train(backbone.training)
