"""The interface every backbone family implements, by role rather than by the library's
attribute names: `Backbone`, what every family has (stacks of blocks, their sizes and
frozen states); `DualEncoder`, two towers mapping into one embedding space (CLIP; a ResNet
with BERT); `EncoderDecoder`, an encoder and a decoder stack with a language-model head
(T5). A method reads only this (never the library models a family wraps, nor their
configs: tests/test_shape.py walks the methods' code for it); it registers one builder per
family it supports (`petlbench.registry`) and never asks which family it got.

A *tower* here is any stack of blocks a family has: a dual encoder's image and text
towers, an encoder-decoder's encoder and decoder."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, NamedTuple

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
    head_width: int | None = None  # the width of each attention head, where it is not width / heads (T5's d_kv)
    dropout: float | None = None  # the dropout rate on its blocks' outputs, where a method adds layers of its own after them (T5)
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


class Backbone(nn.Module, ABC):
    """What every family has: towers of blocks, their sizes and states, by role."""

    family: ClassVar[str]  # the name methods register their builders under ("clip", "vse", "t5")
    # The family's names of its blocks' linear layers, by the role names methods use (CLIP's:
    # q_proj, k_proj, v_proj, out_proj, fc1, fc2); a role not here is named as the role.
    linear_names: ClassVar[dict[str, str]] = {}

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """Where the backbone lives: methods create their tensors here (`train.prepare` checks)."""

    def temperature(self) -> nn.Parameter | None:
        """The loss's learned temperature, where the family has one (`train.temperature`)."""
        return None

    def sublayers(self, tower: str, block: nn.Module) -> dict[str, nn.Module]:
        """The sub-layers of a transformer ``block`` of ``tower`` whose outputs are added to the
        residual stream, by role: ``attention`` (self-attention) and ``mlp`` (the feed-forward),
        for methods that adapt what each adds (adapters)."""
        raise NotImplementedError(f"the {self.family!r} family does not name its blocks' sub-layers")

    @abstractmethod
    def norms(self) -> list[nn.Module]:
        """Every normalisation layer of the towers (inside the blocks and after them)."""

    def add_biases(self) -> list[nn.Parameter]:
        """Zero-initialised bias terms where the family's layers have none (T5), so that the
        model computes exactly what it did; returns them (none for a family with biases)."""
        return []

    @abstractmethod
    def projections(self) -> list[nn.Module]:
        """The final projection layers that `train.head` rules (docs/methods.md); none where
        the family has no such head apart from what methods train themselves."""

    @abstractmethod
    def blocks(self) -> dict[str, nn.ModuleList]:
        """Each transformer tower's blocks, first to last (a CNN tower has none)."""

    def stages(self) -> dict[str, list[nn.Sequential]]:
        """Each CNN tower's stages, first to last, each the sequence of its residual units (a
        transformer tower has none): for methods that tap or feed single units."""
        return {}

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

    @abstractmethod
    def tower_states(self, tower: str, **inputs: torch.Tensor) -> TowerStates:
        """Per-layer states of ``tower`` under the caller's grad mode. Inputs: 'vision':
        pixel_values; 'text' and 'encoder': input_ids, attention_mask; 'decoder':
        decoder_input_ids and the `Encoded` it attends to, as ``states`` and ``mask``."""

    def frozen_states(self, tower: str, **inputs: torch.Tensor) -> TowerStates:
        """`tower_states` of the body under an explicit ``no_grad``, for methods whose backward
        must not enter the backbone: ``requires_grad=False`` alone lets any trainable module
        before the body (a prompt, a trainable embedding) rebuild the body's whole graph."""
        with torch.no_grad():
            return self.tower_states(tower, **inputs)


class DualEncoder(Backbone):
    """An image tower and a text tower mapping into one embedding space."""

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
        return self.logit_scale.device

    def temperature(self) -> nn.Parameter:
        return self.logit_scale

    # -- walking a tower's blocks (methods that change what flows between them) --------------

    @abstractmethod
    def block_input(self, tower: str, **inputs: torch.Tensor) -> torch.Tensor:
        """What ``tower``'s first block reads: tokens (B, N, d); a CNN: its stem's map."""

    @abstractmethod
    def block_arguments(self, tower: str, tokens: torch.Tensor, padding: torch.Tensor | None = None) -> tuple[tuple, dict]:
        """What every block of transformer ``tower`` takes besides ``tokens``: (positional,
        keyword) arguments, the attention mask built from the (B, N) ``padding`` mask."""

    @abstractmethod
    def tower_head(
        self, tower: str, tokens: torch.Tensor, *, token_mask: torch.Tensor | None = None, pool_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The tower's frozen head (its final norm, pooling and projection) applied to (B, N,
        width) tokens, under the caller's grad mode: side methods need the gradient through
        it. A family pools either at ``pool_index`` (CLIP) or over ``token_mask`` (VSE)."""


class Encoded(NamedTuple):
    """An encoder's output as the decoder reads it."""

    states: torch.Tensor  # (B, N, d), after the encoder's final norm
    mask: torch.Tensor  # (B, N), 1 on the positions the decoder may attend to


class BlockWalk(ABC):
    """One pass through a stack's blocks, run by the caller one block at a time, as the
    stack's own forward runs them: for methods that run something between the blocks (a
    ladder side network) or run the blocks of a side network of their own. It holds what
    every block of the pass takes besides its tokens (the masks the library made for the
    pass, the position biases the first block computes and the rest reuse)."""

    tokens: torch.Tensor  # (B, N, d): what the stack's first block reads (the embeddings after dropout)

    @abstractmethod
    def __call__(self, block: nn.Module, tokens: torch.Tensor, cross: torch.Tensor | None = None) -> torch.Tensor:
        """``block``'s output on ``tokens``, under the caller's grad mode; a decoder block
        attends to ``cross`` (default: the encoder states the pass was made for)."""

    @abstractmethod
    def fresh(self) -> BlockWalk:
        """A walk with this one's masks and none of its position biases: for a second stack of
        blocks (a side network's, whose first block computes its own) over the same tokens."""


class EncoderDecoder(Backbone):
    """An encoder stack and a decoder stack with a language-model head: text to text. Its
    towers are ``encoder`` and ``decoder``; ``encode`` and ``decode`` are what a task's loss
    and its generation call (a method that changes either wraps the backbone and provides
    both)."""

    vocab_size: int  # the rows of the token embeddings

    @abstractmethod
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The encoder's input token embeddings (B, N, d) of ``input_ids``."""

    @abstractmethod
    def encode_embeddings(self, embeddings: torch.Tensor, attention_mask: torch.Tensor) -> Encoded:
        """The encoder run on (B, N, d) input ``embeddings`` under the (B, N) padding mask."""

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Encoded:
        """The encoder run on ``input_ids``."""
        return self.encode_embeddings(self.embed(input_ids), attention_mask)

    @abstractmethod
    def decode(self, decoder_input_ids: torch.Tensor, encoded: Encoded) -> torch.Tensor:
        """Next-token logits (B, T, vocab) of the decoder run causally on ``decoder_input_ids``
        while attending to ``encoded``."""

    @abstractmethod
    def lm_head(self) -> nn.Linear:
        """The language-model head (tied to the token embeddings where the family ties them)."""

    @abstractmethod
    def token_embeddings(self) -> nn.Embedding:
        """The encoder's input token embeddings (shared with the decoder where the family shares them)."""

    @abstractmethod
    def head_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """The language-model head on (B, T, d) decoder-side ``tokens``, with the scaling the
        family applies before it (what `decode` does after the decoder stack)."""

    # -- walking a stack's blocks (side networks) --------------------------------------------

    @abstractmethod
    def walk(self, tower: str, **inputs: torch.Tensor) -> BlockWalk:
        """A pass through ``tower``'s blocks on ``inputs`` (those of `tower_states`), to be run
        block by block (`BlockWalk`); nothing of the blocks has run yet."""

    @abstractmethod
    def finish(self, tower: str, tokens: torch.Tensor) -> torch.Tensor:
        """What ``tower`` does after its last block (its final norm and dropout): the
        encoder's, on its last block's output, gives the states its decoder attends to."""

    @abstractmethod
    def new_block(self, tower: str, r: int, positions: bool) -> nn.Module:
        """A freshly initialised block of ``tower``'s kind with every width (model, feed-forward,
        per head) divided by ``r`` and as many heads, on the backbone's device; ``positions``:
        it owns a relative position table (the first block of a stack does)."""

    @abstractmethod
    def new_norm(self, width: int) -> nn.Module:
        """A freshly initialised normalisation layer of the family's kind, ``width`` wide, on
        the backbone's device."""
