"""The base of methods that wrap a backbone instead of changing it in place."""

from __future__ import annotations

import torch
from torch import nn


class BackboneWrapper(nn.Module):
    """Holds ``backbone`` and exposes its logit scale, as the training loop expects of
    every model. With ``frozen_eval`` the backbone stays in eval mode whatever the wrapper's
    mode: a frozen CNN's BatchNorm statistics (and BERT's dropout) belong to a fixed feature
    extractor."""

    frozen_eval = False

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.backbone.logit_scale

    def train(self, mode: bool = True) -> BackboneWrapper:
        super().train(mode)
        if self.frozen_eval:
            self.backbone.eval()
        return self


class TowerWise(BackboneWrapper):
    """A wrapper that encodes both towers by one rule, ``encode(tower, **inputs)`` ('vision':
    pixel_values; 'text': input_ids, attention_mask)."""

    def encode(self, tower: str, **inputs: torch.Tensor) -> torch.Tensor:
        """Projected (unnormalised) embeddings of ``tower``, (B, embed)."""
        raise NotImplementedError

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.encode("vision", pixel_values=pixel_values)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encode("text", input_ids=input_ids, attention_mask=attention_mask)


class TokenWalker(TowerWise):
    """A wrapper whose towers compute their last-block tokens themselves (`tokens`, e.g. by
    walking the blocks with something spliced or added in); the backbone's frozen head then
    pools them at the tower's own position, with autograd on."""

    def tokens(self, tower: str, **inputs: torch.Tensor) -> torch.Tensor:
        """``tower``'s last-block output (B, N, d)."""
        raise NotImplementedError

    def encode(self, tower: str, **inputs: torch.Tensor) -> torch.Tensor:
        tokens = self.tokens(tower, **inputs)  # first: the pooling indices are not alive during the walk
        return self.backbone.tower_head(tower, tokens, pool_index=self.backbone.pool_index(tower, **inputs))


class EmbeddingSide(TowerWise):
    """The frozen dual encoder with a side network per tower that reads the tower's hidden
    states (its body under ``no_grad``) and its frozen embedding, and returns the output
    embedding (UniPT's and SHERL's dual-encoder variants)."""

    def __init__(self, backbone: nn.Module, towers: dict[str, nn.Module]):
        super().__init__(backbone)
        self.towers = nn.ModuleDict(towers)

    def encode(self, tower: str, **inputs: torch.Tensor) -> torch.Tensor:
        states = self.backbone.frozen_states(tower, **inputs)
        # The head runs under the caller's grad mode: it builds no graph while frozen (the
        # default), and the projections still learn if the suite's `train.head` says so.
        embedding = self.backbone.tower_head(tower, states.hidden_states[-1], pool_index=states.pool_index)
        return self.towers[tower](states, embedding)
