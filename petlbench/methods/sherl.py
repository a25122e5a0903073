"""SHERL (Diao et al., ECCV 2024), UniPT's successor by the same authors: a parallel
network on frozen hidden states whose layer weights penalise redundant layers.

- CLIP: the dual-encoder variant of the authors' CLIP4Clip code (`SherlTower`). The whole
  tower runs under ``no_grad``; per tap ``t_i = Linear_i(ReLU(h_i))`` (d -> m) over all
  L+1 hidden states; a guide ``g = Linear(ReLU(e))`` from the frozen pooled projected
  embedding; per-tap token pooling guided by ``g``; anti-redundancy aggregation; output
  ``e + Linear(ReLU(a))``. Nothing of the backbone is kept for backward.
- VSE (the authors' VSE-infinity code): the side output goes *through the backbone's last
  frozen unit with autograd on*, so exactly one frozen block keeps activations. BERT: taps
  are the embedding output and blocks 1..L-1 (`SherlText`), aggregated token by token
  against the deepest tap, then block L and the text head. ResNet: taps C2, C3, C4 and
  ``h4``, the output of every layer4 unit but the last (`SherlImage`), aggregated position
  by position against ``h4``'s tap, then layer4's last unit and the image head. A layer4
  of depth 1 leaves nothing to tap: unsupported. The backbone stays in eval mode; the side
  BatchNorms train.

- T5 (the authors' T5 code, LST's code base with the side network replaced): per stack
  one multi-tap module (`MultiTapAggregate`) over the first block's input and the outputs
  of the blocks not in ``drop_layers``; each tap through its own adapter
  ``(fc2(u) + u) * sigmoid(fc3(u))``, ``u = ReLU(fc1(x))``; the shallow taps aggregated
  token by token against the deepest; ``Linear(ReLU(a)) + tanh(gamma / 0.1) * h_deepest``.
  The encoder's, after a trainable norm, is the side encoding; the decoder's replaces the
  input of its last block, which runs frozen with autograd on, attending to the side
  encoding (`encoder_decoder.TapsIntoLastBlock`). Linear layers N(0, 0.01), zero biases
  (the LST code base's initialisation).

Width ``m = p / downsample`` with ``p`` the joint width (`projection_dim` on CLIP); on VSE
``m = p / (2 * downsample)``, the authors' VSE setting halving the joint width; on T5
``m = d_model / downsample`` (4 in the authors' T5 launcher: 4,511,812 trainable at t5-base
with their 9 tapped blocks).

Decided where the reading leaves it open (docs/methods.md, `sherl`):
- the anti-redundancy weights divide by ``rho_i + 1e-6`` and L1-normalise over layers as
  ``w / (sum w + 1e-6)`` (the same epsilon as the token pooling's L1 norm; ``rho_i >= 1``
  unless ``f_i = 0``, and a sample whose scores are all truncated gets zero weights, so
  ``a = g``);
- the ResNet form's guide is ``h4``'s own tap (the deepest, as the BERT form's), and its
  1x1 convolutions have no bias: each is followed by a BatchNorm, whose shift is one
  (3,023,362 trainable at the authors' ResNeXt widths with m = 512; 4,096 more with biases);
- ``h4`` is one tap (the output after layer4's units but the last), as the authors'
  parameter count implies;
- the T5 form shares `AntiRedundancy` with the others, so it divides by ``rho + 1e-6``
  where the authors' T5 code divides by ``rho`` (``rho >= 1`` for any non-zero tap).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from petlbench.config import ConfigError
from petlbench.methods.encoder_decoder import TapsIntoLastBlock, lst_code_init
from petlbench.methods.specs import SHERL, SherlConfig
from petlbench.methods.unipt import feature_tokens, relu_linear, window_size
from petlbench.models.backbone import EncoderDecoder, TowerStates
from petlbench.models.clip import ClipDualEncoder
from petlbench.models.vse import VseDualEncoder
from petlbench.models.wrapper import BackboneWrapper, EmbeddingSide
from petlbench.registry import UnsupportedError

EPS = 1e-6  # the authors' L1 and cosine epsilon (added, not a clamp); also the guards of the layer weights
GATE_TEMPERATURE = 0.1  # sigmoid(gamma / 0.1) on the pooled token, tanh(kappa / 0.1) on the VSE skip


def l1_normalise(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x / (x.abs().sum(dim=dim, keepdim=True) + EPS)


class AntiRedundancy(nn.Module):
    """``a = sum_i w_i f_i + g`` over the K vectors ``f`` (..., K, m) and the guide ``g``
    (..., m): ``rho_i = sum_j ReLU(cos(f_i, f_j))`` (not detached), one Linear(m -> 1)
    shared by every layer scores ``f_i * g``, and ``w = L1(ReLU(score) / rho)`` over the
    layers, no softmax."""

    def __init__(self, width: int):
        super().__init__()
        self.score = nn.Linear(width, 1)

    def forward(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        unit = f / (f.norm(dim=-1, keepdim=True) + EPS)
        rho = (unit @ unit.transpose(-1, -2)).relu().sum(dim=-1)
        weights = l1_normalise(self.score(f * g.unsqueeze(-2)).squeeze(-1).relu() / (rho + EPS), dim=-1)
        return (weights.unsqueeze(-1) * f).sum(dim=-2) + g


class SherlTower(nn.Module):
    """SHERL for one CLIP tower: ``n_taps`` hidden states of width ``hidden``, the frozen
    embedding ``e`` of width ``embed``, working width ``width`` (m)."""

    def __init__(self, n_taps: int, hidden: int, embed: int, width: int, pool_gate: bool):
        super().__init__()
        self.reduce = nn.ModuleList(relu_linear(hidden, width) for _ in range(n_taps))
        self.guide = relu_linear(embed, width)
        self.token_scores = nn.ModuleList(nn.Linear(width, 1) for _ in range(n_taps))
        self.pool_gates = nn.Parameter(torch.ones(n_taps)) if pool_gate else None
        self.aggregate = AntiRedundancy(width)
        self.up = relu_linear(width, embed)

    def forward(self, states: TowerStates, embedding: torch.Tensor) -> torch.Tensor:
        """``embedding`` (B, embed) plus the side output built from ``states``."""
        guide = self.guide(embedding)
        rows = torch.arange(len(embedding), device=embedding.device)
        mask = states.token_mask.to(embedding.dtype)
        pooled = []
        for i, (reduce, score, hidden) in enumerate(zip(self.reduce, self.token_scores, states.hidden_states, strict=True)):
            tokens = reduce(hidden)
            weights = l1_normalise((score(guide.unsqueeze(1) * tokens).squeeze(-1) * mask).relu(), dim=-1)
            own = tokens[rows, states.pool_index]
            if self.pool_gates is not None:
                own = own * torch.sigmoid(self.pool_gates[i] / GATE_TEMPERATURE)
            pooled.append((weights.unsqueeze(1) @ tokens).squeeze(1) + own)
        return embedding + self.up(self.aggregate(torch.stack(pooled, dim=1), guide))


class SherlText(nn.Module):
    """The BERT form: taps ``h_0..h_{L-1}`` to ``t_i = LayerNorm(Linear_i(h_i))``; per
    token the shallow taps aggregated against the deepest; ``z = Dropout(LayerNorm(
    Linear(ReLU(a)))) + tanh(kappa / 0.1) * h_{L-1}`` (kappa = 0: block L sees only the
    side output at init), the input of the frozen block L."""

    def __init__(self, n_taps: int, hidden: int, width: int):
        super().__init__()
        self.reduce = nn.ModuleList(nn.Sequential(nn.Linear(hidden, width), nn.LayerNorm(width)) for _ in range(n_taps))
        self.aggregate = AntiRedundancy(width)
        self.up = nn.Sequential(nn.ReLU(), nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.Dropout(0.1))
        self.kappa = nn.Parameter(torch.zeros(()))

    def forward(self, taps: list[torch.Tensor]) -> torch.Tensor:
        *shallow, deepest = [reduce(tap) for reduce, tap in zip(self.reduce, taps, strict=True)]
        side = self.up(self.aggregate(torch.stack(shallow, dim=-2), deepest))
        return side + torch.tanh(self.kappa / GATE_TEMPERATURE) * taps[-1]


class SherlImage(nn.Module):
    """The ResNet form: taps C2, C3, C4 and ``h4`` each ``BN(Conv1x1(MaxPool_k(x) +
    AvgPool_k(x)))`` to m at ``h4``'s size; per position the shallow taps aggregated
    against ``h4``'s; ``ReLU(BN(Conv1x1(a))) + tanh(kappa / 0.1) * h4``, the input of
    layer4's last unit."""

    def __init__(self, channels: list[int], width: int):
        super().__init__()
        self.reduce = nn.ModuleList(nn.Sequential(nn.Conv2d(c, width, 1, bias=False), nn.BatchNorm2d(width)) for c in channels)
        self.aggregate = AntiRedundancy(width)
        self.up = nn.Sequential(nn.Conv2d(width, channels[-1], 1, bias=False), nn.BatchNorm2d(channels[-1]), nn.ReLU())
        self.kappa = nn.Parameter(torch.zeros(()))

    def forward(self, taps: list[torch.Tensor], input_size: tuple[int, int]) -> torch.Tensor:
        h4 = taps[-1]
        sizes = [window_size(tap, h4, input_size, "sherl (CNN form)", "h4") for tap in taps]  # all checked before any work
        reduced = [
            feature_tokens(reduce(F.max_pool2d(tap, k) + F.avg_pool2d(tap, k)))
            for reduce, tap, k in zip(self.reduce, taps, sizes, strict=True)
        ]
        *shallow, deepest = reduced
        mixed = self.aggregate(torch.stack(shallow, dim=-2), deepest)  # (B, h*w, m)
        grid = mixed.transpose(1, 2).reshape(len(h4), -1, *h4.shape[-2:])
        return self.up(grid) + torch.tanh(self.kappa / GATE_TEMPERATURE) * h4


class SherlVse(BackboneWrapper):
    """The frozen VSE dual encoder with SHERL's ResNet form on the image tower and its BERT
    form on the text tower; each ends in its tower's last frozen unit and head."""

    frozen_eval = True

    def __init__(self, backbone: VseDualEncoder, image: SherlImage, text: SherlText):
        super().__init__(backbone)
        self.image = image
        self.text = text

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        *stages, layer4 = self.backbone.stages()["vision"]
        with torch.no_grad():
            x = self.backbone.block_input("vision", pixel_values=pixel_values)
            taps = []
            for stage in stages:
                x = stage(x)
                taps.append(x)
            for unit in layer4[:-1]:
                x = unit(x)
            taps.append(x)
        c5 = layer4[-1](self.image(taps, tuple(pixel_values.shape[-2:])))
        return self.backbone.tower_head("vision", feature_tokens(c5))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        *layers, last = self.backbone.blocks()["text"]
        with torch.no_grad():
            x = self.backbone.block_input("text", input_ids=input_ids)
            args, kwargs = self.backbone.block_arguments("text", x, attention_mask)
            taps = [x]
            for layer in layers:
                x = layer(x, *args, **kwargs)
                taps.append(x)
        tokens = last(self.text(taps), *args, **kwargs)
        return self.backbone.tower_head("text", tokens, token_mask=attention_mask.bool())


class TapAdapter(nn.Module):
    """The T5 form's adapter of one tap: ``u = ReLU(fc1(x))`` (d -> m), then
    ``(fc2(u) + u) * sigmoid(fc3(u))`` (m -> m)."""

    def __init__(self, hidden: int, width: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden, width)
        self.fc2 = nn.Linear(width, width)
        self.fc3 = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.fc1(x).relu()
        return (self.fc2(u) + u) * torch.sigmoid(self.fc3(u))


class MultiTapAggregate(nn.Module):
    """The T5 form's module of one stack (the authors' multi-tap adapter): each tap through
    its adapter, the shallow ones aggregated per token against the deepest, then
    ``Linear(ReLU(a))`` back to d plus ``tanh(gamma / 0.1)`` of the deepest tap (gamma = 0:
    none of it at the start)."""

    def __init__(self, n_taps: int, hidden: int, width: int):
        super().__init__()
        self.adapters = nn.ModuleList(TapAdapter(hidden, width) for _ in range(n_taps))
        self.aggregate = AntiRedundancy(width)
        self.out = nn.Linear(width, hidden)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, taps: list[torch.Tensor], token_mask: torch.Tensor) -> torch.Tensor:
        """(B, N, d) tokens from the taps (B, N, d) each, deepest last; token by token, so the
        padding mask is not read."""
        *shallow, deepest = [adapter(tap) for adapter, tap in zip(self.adapters, taps, strict=True)]
        mixed = self.aggregate(torch.stack(shallow, dim=-2), deepest)
        return self.out(mixed.relu()) + torch.tanh(self.gamma / GATE_TEMPERATURE) * taps[-1]


def _width(embed: int, divisor: int) -> int:
    if embed % divisor:
        raise ConfigError(f"sherl: the width {embed} is not divisible by {divisor} (downsample; twice on VSE)")
    return embed // divisor


@SHERL.builder("clip")
def build_clip(backbone: ClipDualEncoder, cfg: SherlConfig) -> EmbeddingSide:
    width = _width(backbone.embed_dim, cfg.downsample)
    backbone.requires_grad_(False)
    with torch.device(backbone.device):
        towers = {
            tower: SherlTower(len(blocks) + 1, backbone.tower_shape(tower).width, backbone.embed_dim, width, cfg.pool_gate)
            for tower, blocks in backbone.blocks().items()
        }
    return EmbeddingSide(backbone, towers)


@SHERL.builder("vse")
def build_vse(backbone: VseDualEncoder, cfg: SherlConfig) -> SherlVse:
    width = _width(backbone.embed_dim, 2 * cfg.downsample)
    cnn, text = backbone.tower_shape("vision"), backbone.tower_shape("text")
    units = len(backbone.stages()["vision"][-1])
    if units < 2:
        raise UnsupportedError(
            "method 'sherl' does not apply to this ResNet: its CNN form taps every layer4 unit but the last and feeds the last, "
            f"and this layer4 has {units} unit (depths {list(cnn.stage_depths)})"
        )
    channels = list(cnn.stage_widths)  # C2, C3, C4, and h4 at C5's width
    backbone.requires_grad_(False)
    with torch.device(backbone.device):
        image = SherlImage(channels, width)
        side = SherlText(text.depth, text.width, width)
    return SherlVse(backbone, image, side).train(backbone.training)


@SHERL.builder("t5")
def build_t5(backbone: EncoderDecoder, cfg: SherlConfig) -> TapsIntoLastBlock:
    hidden = backbone.tower_shape("encoder").width
    width = _width(hidden, cfg.downsample)
    backbone.requires_grad_(False)
    return TapsIntoLastBlock(
        backbone, cfg.drop_layers, lambda tower, n_taps: lst_code_init(MultiTapAggregate(n_taps, hidden, width)), "sherl"
    ).train(backbone.training)
