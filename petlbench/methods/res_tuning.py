"""Res-Tuning-Bypass (Jiang et al., NeurIPS 2023), on both towers of CLIP.

A bypass network of two small residual adapters per block reads the detached hidden
states of a tower whose body ran under ``no_grad``: ``b_0 = h_0`` (the first block's
input), ``b_i = T_lat_i(h_i) + T_ver_i(b_{i-1})`` for i = 1..L, with ``h_i`` block i's
output. Each ``T`` is ``x + Linear_{l->d}(GELU(Linear_{d->l}(x)))``. ``b_L`` replaces the
encoder's output: the tower's own final norm, pooling and projection then run frozen with
autograd on, so the gradient reaches the bypass and never the backbone body.

Init as the authors' code: Xavier-uniform weights, biases N(0, 1e-6) (standard
deviation); ``zero_init_last`` zeroes the up-projections (weight and bias) of the last
block's two adapters. At init ``b_L`` is about ``sum_i h_i``, not ``h_L``: the model does
not start at the backbone, and its step-0 retrieval is below zero-shot by design.
"""

from __future__ import annotations

import torch
from torch import nn

from petlbench.methods.specs import RES_TUNING, ResTuningConfig
from petlbench.models.clip import ClipDualEncoder
from petlbench.models.wrapper import TowerWise

BIAS_STD = 1e-6


class ResAdapter(nn.Module):
    """``x + up(GELU(down(x)))``."""

    def __init__(self, width: int, bottleneck: int):
        super().__init__()
        self.down = nn.Linear(width, bottleneck)
        self.up = nn.Linear(bottleneck, width)
        for linear in (self.down, self.up):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.normal_(linear.bias, std=BIAS_STD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(nn.functional.gelu(self.down(x)))


class Bypass(nn.Module):
    """The bypass of one tower of depth L: a lateral and a vertical adapter per block."""

    def __init__(self, depth: int, width: int, bottleneck: int, zero_init_last: bool):
        super().__init__()
        self.lateral = nn.ModuleList(ResAdapter(width, bottleneck) for _ in range(depth))
        self.vertical = nn.ModuleList(ResAdapter(width, bottleneck) for _ in range(depth))
        if zero_init_last:
            for adapter in (self.lateral[-1], self.vertical[-1]):
                nn.init.zeros_(adapter.up.weight)
                nn.init.zeros_(adapter.up.bias)

    def forward(self, hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """``b_L`` from the L+1 hidden states ``h_0..h_L``."""
        bypass = hidden_states[0]
        for lateral, vertical, hidden in zip(self.lateral, self.vertical, hidden_states[1:], strict=True):
            bypass = lateral(hidden) + vertical(bypass)
        return bypass


class ResTuningBypass(TowerWise):
    """The frozen CLIP with one `Bypass` per tower replacing its encoder output."""

    def __init__(self, backbone: ClipDualEncoder, bypasses: dict[str, Bypass]):
        super().__init__(backbone)
        self.bypasses = nn.ModuleDict(bypasses)

    def encode(self, tower: str, **inputs: torch.Tensor) -> torch.Tensor:
        states = self.backbone.frozen_states(tower, **inputs)
        tokens = self.bypasses[tower](states.hidden_states)
        return self.backbone.tower_head(tower, tokens, pool_index=states.pool_index)


@RES_TUNING.builder("clip")
def build(backbone: ClipDualEncoder, cfg: ResTuningConfig) -> ResTuningBypass:
    backbone.requires_grad_(False)
    with torch.device(backbone.device):
        bypasses = {
            tower: Bypass(len(blocks), backbone.tower_shape(tower).width, cfg.bottleneck, cfg.zero_init_last)
            for tower, blocks in backbone.blocks().items()
        }
    return ResTuningBypass(backbone, bypasses)
