"""UniPT (Diao et al., CVPR 2024): a small network reads every hidden state of a tower
whose body ran under ``no_grad``, so backward never enters the backbone.

- CLIP: the dual-encoder variant, a residual added to each tower's frozen embedding
  (`UniPTTower`, assembled the way the authors' CLIP4Clip code does).
- VSE (ResNet + BERT): the token-level variant on the BERT text tower and the CNN variant
  on the ResNet image tower, as docs/methods.md (`unipt`) describes them. Both bodies run
  under an explicit ``no_grad`` and in eval mode (the CNN's BatchNorm statistics and BERT's
  dropout are those of a frozen feature extractor). Each variant ends in ReLU and a Linear
  to the joint width per token, then the pooling head: masked mean over text tokens, mean
  over C5's positions for the image (the method's description gives that output stage for
  the token-level variant; the CNN variant uses the same, since the image head pools C5 by
  its average). The backbone's own projections are not on this path: under a suite's
  `train.head: trainable` they would train without a gradient.

- T5 (no official form: petlbench's construction, by analogy with SHERL's T5 code): the
  token-level variant per stack, over the first block's input and the outputs of the
  blocks not in ``drop_layers``, ``d_model`` wide out; wired as SHERL's T5 form
  (`encoder_decoder.TapsIntoLastBlock`): the encoder's output, after a trainable norm, is
  the side encoding; the decoder's replaces the input of its last block, which runs frozen
  with autograd on, attending to the side encoding. In the decoder the variant is made
  causal, so that no position reads a later one: a query token attends to the tokens up to
  it, and the layer confidence compares means over the prefix up to each position (the
  encoder's are over the whole source). Linear layers N(0, 0.01), zero biases, as SHERL's
  T5 code (the LST code base's initialisation).

The building blocks shared by the variants (truncated attention, masked mean, confidence
over layers) are functions and modules of their own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from petlbench.config import ConfigError
from petlbench.methods.encoder_decoder import TapsIntoLastBlock, lst_code_init
from petlbench.methods.specs import UNIPT, UniPTConfig
from petlbench.models.backbone import DualEncoder, EncoderDecoder, TowerStates
from petlbench.models.clip import TOWERS, ClipDualEncoder
from petlbench.models.pooling import masked_mean
from petlbench.models.vse import VseDualEncoder
from petlbench.models.wrapper import BackboneWrapper, EmbeddingSide

# The authors clamp the L1 norm here: a query whose scores are all truncated attends to
# nothing (zero weights) instead of dividing by zero.
L1_EPS = 1e-6


def truncated_attention(queries: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Weighted sum of ``tokens`` (B, N, m) for each of ``queries`` (B, Q, m): raw dot
    products (no scaling, no projections), masked tokens zeroed, negative scores truncated
    by ReLU, weights L1-normalised over tokens. ``token_mask``: (B, N), the tokens every
    query may read, or (B, Q, N), per query. Returns (B, Q, m)."""
    keys = token_mask.unsqueeze(1) if token_mask.dim() == 2 else token_mask
    scores = (queries @ tokens.transpose(1, 2)).masked_fill(~keys, 0.0)
    weights = scores.relu()
    weights = weights / weights.sum(dim=-1, keepdim=True).clamp(min=L1_EPS)
    return weights @ tokens


class LayerConfidence(nn.Module):
    """Weighs the layers per sample: one Linear(m -> 1) shared by every layer scores
    ``anchor ⊙ summary_i``; a softmax over layers turns the scores into weights. (The
    softmax ignores a shift, so the Linear's bias never gets a gradient; it stays for
    parity with the authors' code and parameter count.)"""

    def __init__(self, width: int):
        super().__init__()
        self.score = nn.Linear(width, 1)

    def weights(self, anchor: torch.Tensor, summaries: list[torch.Tensor]) -> torch.Tensor:
        """(..., L) softmax weights from ``anchor`` and each ``summaries[i]``, (..., m)."""
        return torch.cat([self.score(anchor * summary) for summary in summaries], dim=-1).softmax(dim=-1)

    def forward(self, anchor: torch.Tensor, summaries: list[torch.Tensor], merged: list[torch.Tensor]) -> torch.Tensor:
        """``anchor`` and each ``summaries[i]`` are (B, m); each ``merged[i]`` is (B, ...).
        Returns sum_i w_i * merged[i]."""
        return torch.einsum("bl,bl...->b...", self.weights(anchor, summaries), torch.stack(merged, dim=1))

    def per_position(self, anchor: torch.Tensor, summaries: list[torch.Tensor], merged: list[torch.Tensor]) -> torch.Tensor:
        """As `forward`, with weights of their own at every position: ``anchor``, each
        ``summaries[i]`` and each ``merged[i]`` are (B, N, m)."""
        return torch.einsum("bnl,blnm->bnm", self.weights(anchor, summaries), torch.stack(merged, dim=1))


def relu_linear(width_in: int, width_out: int) -> nn.Sequential:
    """The authors' projection everywhere in this variant: ReLU, then Linear."""
    return nn.Sequential(nn.ReLU(), nn.Linear(width_in, width_out))


class UniPTTower(nn.Module):
    """UniPT for one tower of a dual encoder. Reads the tower's ``n_states`` hidden states
    (width ``hidden``) and its frozen embedding ``e`` (width ``embed``); works in width
    ``width`` (m)."""

    def __init__(self, n_states: int, hidden: int, embed: int, width: int):
        super().__init__()
        self.reduce = nn.ModuleList(relu_linear(hidden, width) for _ in range(n_states))
        self.anchor = relu_linear(embed, width)
        self.confidence = LayerConfidence(width)
        self.up = relu_linear(width, embed)

    def forward(self, states: TowerStates, embedding: torch.Tensor) -> torch.Tensor:
        """``embedding`` (B, embed) plus the residual built from ``states``: per layer, the
        anchor's truncated attention over the layer's reduced tokens plus the layer's
        token at the tower's pooling position; layers mixed by confidence."""
        anchor = self.anchor(embedding)
        rows = torch.arange(embedding.shape[0], device=embedding.device)
        summaries, merged = [], []
        for reduce, hidden in zip(self.reduce, states.hidden_states, strict=True):
            tokens = reduce(hidden)
            attended = truncated_attention(anchor.unsqueeze(1), tokens, states.token_mask).squeeze(1)
            merged.append(attended + tokens[rows, states.pool_index])
            summaries.append(masked_mean(tokens, states.token_mask))
        return embedding + self.up(self.confidence(anchor, summaries, merged))


def _project(width: int) -> nn.Sequential:
    """``Proj`` of both variants: Linear, then LayerNorm."""
    return nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width))


def _output(width: int, embed: int) -> nn.Sequential:
    """ReLU, then a Linear to the joint width (per token)."""
    return nn.Sequential(nn.ReLU(), nn.Linear(width, embed))


def _conv_bn(channels: int, width: int) -> nn.Sequential:
    """1x1 conv to ``width`` then BatchNorm (the conv has no bias: BatchNorm's shift is one)."""
    return nn.Sequential(nn.Conv2d(channels, width, 1, bias=False), nn.BatchNorm2d(width))


def feature_tokens(feature_map: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C)."""
    return feature_map.flatten(2).transpose(1, 2)


def prefix_mean(tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """At every position, the mean of ``tokens`` (B, N, m) over the unpadded positions up to
    it: (B, N, m)."""
    mask = token_mask.unsqueeze(-1).to(tokens.dtype)
    return (tokens * mask).cumsum(dim=1) / mask.cumsum(dim=1).clamp(min=1.0)


class TokenUniPT(nn.Module):
    """Token-level variant: per layer ``t_i = LayerNorm(Linear_i(h_i))``; the anchor is the
    last layer's reduced tokens ``A``; each other layer gives ``m_i = attn(A, t_i) + t_i``
    (token-to-token truncated attention plus identity); confidence on
    ``mean(A) ⊙ mean(t_i)``, softmax over the L other layers; ``A + Proj(M)``. ``causal``:
    each token attends to the tokens up to it only, and the confidence is per position,
    from means over the prefix up to it (a decoder's form)."""

    def __init__(self, n_states: int, hidden: int, width: int, embed: int, causal: bool = False):
        super().__init__()
        self.reduce = nn.ModuleList(nn.Sequential(nn.Linear(hidden, width), nn.LayerNorm(width)) for _ in range(n_states))
        self.confidence = LayerConfidence(width)
        self.project = _project(width)
        self.output = _output(width, embed)
        self.causal = causal

    def forward(self, hidden_states: Sequence[torch.Tensor], token_mask: torch.Tensor) -> torch.Tensor:
        """Tokens (B, N, embed) from the (B, N, d) ``hidden_states``, first to last, under the
        (B, N) padding mask."""
        reduced = [reduce(hidden) for reduce, hidden in zip(self.reduce, hidden_states, strict=True)]
        anchor = reduced[-1]
        if self.causal:
            n = token_mask.shape[1]
            keys = token_mask.unsqueeze(1) & torch.ones(n, n, dtype=torch.bool, device=token_mask.device).tril()
            merged = [truncated_attention(anchor, tokens, keys) + tokens for tokens in reduced[:-1]]
            summaries = [prefix_mean(tokens, token_mask) for tokens in reduced[:-1]]
            mixed = self.confidence.per_position(prefix_mean(anchor, token_mask), summaries, merged)
        else:
            merged = [truncated_attention(anchor, tokens, token_mask) + tokens for tokens in reduced[:-1]]
            summaries = [masked_mean(tokens, token_mask) for tokens in reduced[:-1]]
            mixed = self.confidence(masked_mean(anchor, token_mask), summaries, merged)
        return self.output(anchor + self.project(mixed))


def window_size(
    stage: torch.Tensor, target: torch.Tensor, input_size: tuple[int, int], who: str = "unipt (CNN variant)", target_name: str = "C5"
) -> tuple[int, int]:
    """``k`` per axis: the stage's spatial size over the target map's (C5 for UniPT), read
    from the actual maps. Raises `ConfigError` when it is not an integer."""
    (h, w), (h5, w5) = stage.shape[-2:], target.shape[-2:]
    if h % h5 or w % w5:
        raise ConfigError(
            f"{who}: a {input_size[0]}x{input_size[1]} input gives a {h}x{w} stage map that is not a whole "
            f"multiple of {target_name}'s {h5}x{w5}, so the window size k = stage size / {target_name} size is not an integer; "
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
        return feature_tokens(self.reduce(pooled))


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
        anchor = feature_tokens(self.anchor(c5))
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
        maps = self.backbone.frozen_states("vision", pixel_values=pixel_values).hidden_states
        return self.image(maps, tuple(pixel_values.shape[-2:])).mean(dim=1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.backbone.frozen_states("text", input_ids=input_ids, attention_mask=attention_mask)
        return masked_mean(self.text(states.hidden_states, states.token_mask), states.token_mask)


def _width(backbone: DualEncoder, cfg: UniPTConfig) -> int:
    """m = the joint embedding width / r_d."""
    if backbone.embed_dim % cfg.downsample:
        raise ConfigError(f"unipt: downsample={cfg.downsample} must be a positive divisor of the embedding width {backbone.embed_dim}")
    return backbone.embed_dim // cfg.downsample


@UNIPT.builder("clip")
def build_clip(backbone: ClipDualEncoder, cfg: UniPTConfig) -> EmbeddingSide:
    """The dual-encoder variant."""
    width = _width(backbone, cfg)
    backbone.requires_grad_(False)
    towers = {}
    with torch.device(backbone.device):
        for tower in TOWERS:
            shape = backbone.tower_shape(tower)
            towers[tower] = UniPTTower(shape.depth + 1, shape.width, backbone.embed_dim, width)
    return EmbeddingSide(backbone, towers)


@UNIPT.builder("vse")
def build_vse(backbone: VseDualEncoder, cfg: UniPTConfig) -> UniPTVse:
    """The CNN variant on the image tower and the token-level variant on the text tower."""
    width = _width(backbone, cfg)
    backbone.requires_grad_(False)
    embed, cnn, words = backbone.embed_dim, backbone.tower_shape("vision"), backbone.tower_shape("text")
    with torch.device(backbone.device):
        image = CnnUniPT(list(cnn.stage_widths), width, embed)
        text = TokenUniPT(words.depth + 1, words.width, width, embed)
    return UniPTVse(backbone, image, text).train(backbone.training)


@UNIPT.builder("t5")
def build_t5(backbone: EncoderDecoder, cfg: UniPTConfig) -> TapsIntoLastBlock:
    """The token-level variant per stack, causal in the decoder, wired as SHERL's T5 form."""
    hidden = backbone.tower_shape("encoder").width
    if hidden % cfg.downsample:
        raise ConfigError(f"unipt: downsample={cfg.downsample} must be a positive divisor of the model width {hidden}")
    width = hidden // cfg.downsample
    backbone.requires_grad_(False)
    return TapsIntoLastBlock(
        backbone,
        cfg.drop_layers,
        lambda tower, n_taps: lst_code_init(TokenUniPT(n_taps, hidden, width, hidden, causal=tower == "decoder")),
        "unipt",
    ).train(backbone.training)
