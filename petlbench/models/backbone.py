"""The interface every backbone family implements (CLIP; a ResNet with BERT): what methods
and the training loop use of a dual encoder, by role rather than by the library's attribute
names. A method reads only this (never the library models a family wraps, nor their
configs: tests/test_shape.py walks the methods' code for it); it registers one builder per
family it supports (`petlbench.registry`) and never asks which family it got."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:
    from transformers import PreTrainedConfig


@dataclass
class TowerStates:
    """What side networks read from a frozen tower."""

    # Transformer towers: L+1 tensors (B, N, d), the embedding output and each block's output;
    # a CNN tower: its stage feature maps (B, C_i, H_i, W_i), first to last.
    hidden_states: tuple[torch.Tensor, ...]
    token_mask: torch.Tensor  # (B, N) bool, False on padding (a CNN: every position of its last map)
    pool_index: torch.Tensor  # (B,) the position the tower pools (CLS for vision, EOT for CLIP text)


@dataclass(frozen=True)
class TowerShape:
    """The sizes of one tower that methods build their own modules from, read off the
    family's library config in one place (`DualEncoder.tower_shape`) so that no method
    reads a library config. What a tower does not have is None (or empty)."""

    width: int  # the width of the tokens its blocks carry; a CNN: its last stage's channels
    depth: int  # its transformer blocks, as many as `blocks()[tower]`; a CNN: 0 (see stage_depths)
    heads: int | None = None  # attention heads per block
    mlp_width: int | None = None  # the hidden width of each block's MLP
    norm_eps: float | None = None  # the epsilon of its blocks' LayerNorms
    patch_size: int | None = None  # a ViT's patch side, in pixels
    channels: int | None = None  # an image tower's input channels
    stage_widths: tuple[int, ...] = ()  # a CNN's channels per stage, first to last
    stage_depths: tuple[int, ...] = ()  # a CNN's residual units per stage, first to last

    @classmethod
    def of_transformer(cls, config: PreTrainedConfig, **more: int) -> TowerShape:
        """A transformer tower's sizes from its library config (the names CLIP's and BERT's
        configs share); ``more``: what only some towers have (a ViT's patch side, channels)."""
        return cls(
            width=config.hidden_size,
            depth=config.num_hidden_layers,
            heads=config.num_attention_heads,
            mlp_width=config.intermediate_size,
            norm_eps=config.layer_norm_eps,
            **more,
        )


class DualEncoder(nn.Module, ABC):
    """An image tower and a text tower mapping into one embedding space."""

    family: ClassVar[str]  # the name methods register their builders under ("clip", "vse")
    logit_scale: nn.Parameter  # the contrastive loss's log temperature (an attribute or a property)
    embed_dim: int  # the width of the joint embedding space

    @abstractmethod
    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected (unnormalised) image embeddings, (B, embed)."""

    @abstractmethod
    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Projected (unnormalised) text embeddings, (B, embed)."""

    @property
    def device(self) -> torch.device:
        """Where the backbone lives: methods create their tensors here (`train.prepare` checks)."""
        return self.logit_scale.device

    @abstractmethod
    def projections(self) -> list[nn.Module]:
        """The towers' final projection layers (the "head" of `train.head`, docs/methods.md)."""

    @abstractmethod
    def blocks(self) -> dict[str, nn.ModuleList]:
        """Each transformer tower's blocks, first to last (a CNN tower has none)."""

    @abstractmethod
    def stages(self) -> dict[str, list[nn.Sequential]]:
        """Each CNN tower's stages, first to last, each the sequence of its residual units (a
        transformer tower has none): for methods that tap or feed single units."""

    @abstractmethod
    def final_norms(self) -> list[nn.Module]:
        """The norms applied after each tower's last block (none where a tower has none)."""

    @abstractmethod
    def tower_shape(self, tower: str) -> TowerShape:
        """``tower``'s sizes: what methods size their own modules by."""

    @abstractmethod
    def block_config(self, tower: str) -> PreTrainedConfig:
        """The library config ``tower``'s blocks are built from (a transformer tower), for a
        method that builds blocks of the same kind itself (``type(block)(config)``): the one
        place a method gets a library config; sizes are read from `tower_shape`."""

    @abstractmethod
    def injection_root(self) -> nn.Module:
        """The library model holding every tower's blocks under the library's own module
        names: what a library that adapts layers by name (PEFT) is pointed at."""

    # -- walking a tower's blocks (methods that change what flows between them) --------------

    @abstractmethod
    def block_input(self, tower: str, **inputs: torch.Tensor) -> torch.Tensor:
        """What ``tower``'s first block reads: tokens (B, N, d); a CNN: its stem's map."""

    @abstractmethod
    def block_arguments(self, tower: str, tokens: torch.Tensor, padding: torch.Tensor | None = None) -> tuple[tuple, dict]:
        """What every block of transformer ``tower`` takes besides ``tokens``: (positional,
        keyword) arguments, the attention mask built from the (B, N) ``padding`` mask."""

    @abstractmethod
    def tower_states(self, tower: str, **inputs: torch.Tensor) -> TowerStates:
        """Per-layer states of ``tower`` ('vision': pixel_values; 'text': input_ids,
        attention_mask), under the caller's grad mode."""

    def frozen_states(self, tower: str, **inputs: torch.Tensor) -> TowerStates:
        """`tower_states` of the body under an explicit ``no_grad``, for methods whose backward
        must not enter the backbone: ``requires_grad=False`` alone lets any trainable module
        before the body (a prompt, a trainable embedding) rebuild the body's whole graph."""
        with torch.no_grad():
            return self.tower_states(tower, **inputs)

    @abstractmethod
    def tower_head(
        self, tower: str, tokens: torch.Tensor, *, token_mask: torch.Tensor | None = None, pool_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The tower's frozen head (its final norm, pooling and projection) applied to (B, N,
        width) tokens, under the caller's grad mode: side methods need the gradient through
        it. A family pools either at ``pool_index`` (CLIP) or over ``token_mask`` (VSE)."""
