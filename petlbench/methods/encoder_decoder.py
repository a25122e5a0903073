"""What the side methods share on an encoder-decoder (T5): the encoding they hand from
`encode` to `decode`, which blocks feed them, the initialisation of the LST code base they
all come from, and the wiring of the methods whose side output enters the decoder's last
block (SHERL's T5 form, and UniPT built the same way, `TapsIntoLastBlock`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from petlbench.models.backbone import BlockWalk, Encoded, EncoderDecoder
from petlbench.registry import UnsupportedError


class SideEncoded(NamedTuple):
    """What a side method's `encode` gives its `decode`: the frozen encoder's output, which
    the frozen decoder blocks attend to, and the side network's, which its own attention
    (LST's side decoder; SHERL's run of the decoder's last block) attends to."""

    backbone: Encoded
    side: torch.Tensor  # (B, N, side width)


def kept_layers(who: str, drop_layers: list[int], depth: int) -> list[int]:
    """The blocks of a stack of ``depth`` not in ``drop_layers``; a variant whose list does
    not index the stack, or drops every block, does not apply to the model (a 12-block
    configuration on a shallower one)."""
    if any(not 0 <= i < depth for i in drop_layers):
        raise UnsupportedError(f"{who}: drop_layers={drop_layers} must index the stacks' blocks (0..{depth - 1})")
    if (kept := [i for i in range(depth) if i not in drop_layers]) == []:
        raise UnsupportedError(f"{who}: drop_layers={drop_layers} drops every block of the stacks (0..{depth - 1})")
    return kept


def lst_code_init(module: nn.Module) -> nn.Module:
    """Every `nn.Linear` in ``module`` N(0, 0.01) with a zero bias: what the LST code base's
    `_init_weights` does to the linear layers a checkpoint does not hold (adapters, side
    projections; SHERL's T5 code inherits it)."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, std=0.01)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return module


class TapsIntoLastBlock(nn.Module):
    """The frozen encoder-decoder with, per stack, a module that turns the taps (the first
    block's input and the outputs of the tapped blocks, the deepest last) into d-wide tokens:
    ``aggregate(tower, n_taps)`` makes it, and it is called as ``module(taps, token_mask)``.

    As SHERL's T5 code: the encoder runs frozen; its aggregate, then a trainable norm and
    dropout, is the side encoding. The decoder's blocks but the last run frozen, attending
    to the frozen encoder's output; the decoder's aggregate replaces the last block's input;
    that frozen block runs with autograd on, attending to the side encoding; then a
    trainable norm, dropout and the frozen language-model head. The decoder taps only the
    blocks before its last; the frozen decoder's final norm is not run (nothing reads it;
    the frozen encoder's is: the frozen decoder blocks attend to its output). The deepest decoder tap is the last block's input (block L-2 is never dropped), so
    that the side output takes the place of what it is built from."""

    def __init__(self, backbone: EncoderDecoder, drop_layers: list[int], aggregate: Callable[[str, int], nn.Module], who: str):
        super().__init__()
        self.backbone = backbone
        depth = {tower: len(blocks) for tower, blocks in backbone.blocks().items()}
        if depth["decoder"] < 2 or depth["decoder"] - 2 in drop_layers:
            raise UnsupportedError(
                f"{who}: its encoder-decoder form replaces the input of the decoder's last block by an aggregate anchored on it, "
                f"so the decoder needs two blocks and block {depth['decoder'] - 2} must stay tapped (drop_layers={drop_layers})"
            )
        self.tapped = {
            "encoder": kept_layers(who, drop_layers, depth["encoder"]),
            "decoder": [i for i in kept_layers(who, drop_layers, depth["decoder"]) if i < depth["decoder"] - 1],
        }
        with torch.device(backbone.device):
            self.aggregate = nn.ModuleDict({tower: aggregate(tower, 1 + len(layers)) for tower, layers in self.tapped.items()})
            self.dropout = nn.Dropout(backbone.tower_shape("decoder").dropout)
        self.norms = nn.ModuleDict({tower: backbone.new_norm(backbone.tower_shape(tower).width) for tower in depth})

    def _frozen_taps(self, tower: str, walk: BlockWalk, blocks: list[nn.Module]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``blocks`` walked under ``no_grad``: the taps (the first block's input, the tapped
        blocks' outputs) and the last block's output."""
        hidden = walk.tokens
        taps = [hidden]
        with torch.no_grad():
            for i, block in enumerate(blocks):
                hidden = walk(block, hidden)
                if i in self.tapped[tower]:
                    taps.append(hidden)
        return taps, hidden

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SideEncoded:
        with torch.no_grad():
            walk = self.backbone.walk("encoder", input_ids=input_ids, attention_mask=attention_mask)
        taps, hidden = self._frozen_taps("encoder", walk, list(self.backbone.blocks()["encoder"]))
        with torch.no_grad():
            states = self.backbone.finish("encoder", hidden)
        side = self.aggregate["encoder"](taps, attention_mask.bool())
        return SideEncoded(Encoded(states, attention_mask), self.dropout(self.norms["encoder"](side)))

    def decode(self, decoder_input_ids: torch.Tensor, encoded: SideEncoded) -> torch.Tensor:
        *frozen, last = self.backbone.blocks()["decoder"]
        with torch.no_grad():
            walk = self.backbone.walk(
                "decoder", decoder_input_ids=decoder_input_ids, states=encoded.backbone.states, mask=encoded.backbone.mask
            )
        taps, _ = self._frozen_taps("decoder", walk, frozen)
        side = self.aggregate["decoder"](taps, torch.ones_like(decoder_input_ids, dtype=torch.bool))
        tokens = walk(last, side, cross=encoded.side)
        return self.backbone.head_logits(self.dropout(self.norms["decoder"](tokens)))
