"""UniPT (Diao et al., CVPR 2024), dual-encoder variant: a small network reads every
hidden state of a tower whose body ran under ``no_grad`` and adds a residual to the
tower's frozen embedding, so backward never enters the backbone.

The building blocks shared by the paper's variants (truncated attention, masked mean,
confidence over layers) are functions and modules of their own; `UniPTTower` assembles
them the way the authors' CLIP4Clip code does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from petlbench.config import ConfigError, MethodConfig, rule
from petlbench.models.clip import TOWERS, ClipDualEncoder, TowerStates
from petlbench.models.pooling import masked_mean
from petlbench.models.wrapper import BackboneWrapper
from petlbench.registry import backbone_kind, register

# The authors clamp the L1 norm here: a query whose scores are all truncated attends to
# nothing (zero weights) instead of dividing by zero.
L1_EPS = 1e-6


def truncated_attention(queries: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Weighted sum of ``tokens`` (B, N, m) for each of ``queries`` (B, Q, m): raw dot
    products (no scaling, no projections), padded tokens zeroed, negative scores truncated
    by ReLU, weights L1-normalised over tokens. Returns (B, Q, m)."""
    scores = (queries @ tokens.transpose(1, 2)).masked_fill(~token_mask.unsqueeze(1), 0.0)
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

    def forward(self, anchor: torch.Tensor, summaries: list[torch.Tensor], merged: list[torch.Tensor]) -> torch.Tensor:
        """``anchor`` and each ``summaries[i]`` are (B, m); each ``merged[i]`` is (B, ...).
        Returns sum_i w_i * merged[i]."""
        weights = torch.cat([self.score(anchor * summary) for summary in summaries], dim=-1).softmax(dim=-1)
        return torch.einsum("bl,bl...->b...", weights, torch.stack(merged, dim=1))


def _relu_linear(width_in: int, width_out: int) -> nn.Sequential:
    """The authors' projection everywhere in this variant: ReLU, then Linear."""
    return nn.Sequential(nn.ReLU(), nn.Linear(width_in, width_out))


class UniPTTower(nn.Module):
    """UniPT for one tower of a dual encoder. Reads the tower's ``n_states`` hidden states
    (width ``hidden``) and its frozen embedding ``e`` (width ``embed``); works in width
    ``width`` (m)."""

    def __init__(self, n_states: int, hidden: int, embed: int, width: int):
        super().__init__()
        self.reduce = nn.ModuleList(_relu_linear(hidden, width) for _ in range(n_states))
        self.anchor = _relu_linear(embed, width)
        self.confidence = LayerConfidence(width)
        self.up = _relu_linear(width, embed)

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


class UniPT(BackboneWrapper):
    """The frozen dual encoder with one `UniPTTower` per tower; exposes the backbone's
    interface (`encode_image`, `encode_text`, `logit_scale`)."""

    def __init__(self, backbone: ClipDualEncoder, towers: dict[str, UniPTTower]):
        super().__init__(backbone)
        self.towers = nn.ModuleDict(towers)

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self._encode("vision", pixel_values=pixel_values)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self._encode("text", input_ids=input_ids, attention_mask=attention_mask)

    def frozen_states(self, tower: str, **inputs: torch.Tensor) -> TowerStates:
        """The backbone body under an explicit ``no_grad``: ``requires_grad=False`` alone
        lets any trainable module before the body (a prompt, a trainable embedding)
        silently rebuild the body's whole graph."""
        with torch.no_grad():
            return self.backbone.tower_states(tower, **inputs)

    def _encode(self, tower: str, **inputs: torch.Tensor) -> torch.Tensor:
        states = self.frozen_states(tower, **inputs)
        # The head runs under the caller's grad mode: it builds no graph while frozen (the
        # default), and the projections still learn if the suite's `train.head` says so.
        embedding = self.backbone.tower_head(tower, states.hidden_states[-1], states.pool_index)
        return self.towers[tower](states, embedding)


@dataclass
class UniPTConfig(MethodConfig):
    downsample: int = field(
        default=1,
        metadata=rule(
            "r_d: UniPT works in width m = embedding width / r_d (1 in the authors' CLIP code, 2 in their VSE setting)", ge=1, le=65536
        ),
    )


@register("unipt", UniPTConfig, backbones=("clip", "vse"))
def apply(backbone: ClipDualEncoder, cfg: UniPTConfig):
    """The dual-encoder variant on CLIP; on the VSE family the CNN variant (image) and the
    token-level variant (text), from `unipt_vse`."""
    vse = backbone_kind(backbone) == "vse"
    # the CLIP sub-configs' own projection_dim is not the model's
    embed = backbone.embed_dim if vse else backbone.clip.config.projection_dim
    if cfg.downsample < 1 or embed % cfg.downsample:
        raise ConfigError(f"unipt: downsample={cfg.downsample} must be a positive divisor of the embedding width {embed}")
    if vse:
        from petlbench.methods.unipt_vse import build  # it imports this module's blocks

        return build(backbone, embed // cfg.downsample)
    config = backbone.clip.config
    backbone.requires_grad_(False)
    towers = {}
    with torch.device(backbone.device):
        for tower in TOWERS:
            tower_config = config.vision_config if tower == "vision" else config.text_config
            n_states = tower_config.num_hidden_layers + 1
            towers[tower] = UniPTTower(n_states, tower_config.hidden_size, embed, embed // cfg.downsample)
    return UniPT(backbone, towers)
