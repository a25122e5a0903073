"""Ladder Side-Tuning on the VSE family's text tower (BERT); `lst`'s `apply` picks it for
a `VseDualEncoder`.

The side network is `lst.LadderSide` with BERT layers (every width divided by `r`), fed
by BERT's L+1 hidden states under an explicit ``no_grad`` and ending in the frozen text
head (per-token projection, masked mean) with autograd on. The CNN image tower has no
side network (LST is defined on transformer blocks): its body runs under ``no_grad`` and
only its head follows the suite's `train.head` rule. The frozen backbone runs in eval
mode (BatchNorm statistics and BERT's dropout of a frozen feature extractor).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn
from transformers.masking_utils import create_bidirectional_mask

from petlbench.config import ConfigError
from petlbench.methods.lst import BlockLayout, LadderSide, LSTConfig, prune_block_into, row_importance
from petlbench.models.vse import VseDualEncoder
from petlbench.models.wrapper import BackboneWrapper


class LadderSideTunedVse(BackboneWrapper):
    """The frozen VSE backbone plus a ladder side network on its text tower."""

    frozen_eval = True

    def __init__(self, backbone: VseDualEncoder, cfg: LSTConfig):
        super().__init__(backbone)
        layers = backbone.bert.encoder.layer
        if any(not 0 <= i < len(layers) for i in cfg.drop_layers):
            raise ConfigError(f"lst: drop_layers={cfg.drop_layers} must index the text tower's layers (0..{len(layers) - 1})")
        keep = [i for i in range(len(layers)) if i not in cfg.drop_layers]
        self.side = nn.ModuleDict({"text": LadderSide(layers, keep, cfg.r, cfg.gate_temperature, backbone.device, backbone.bert.config)})

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            c5 = self.backbone.stage_maps(pixel_values)[-1]
        return self.backbone.tower_head("vision", c5.flatten(2).transpose(1, 2))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            states = self.backbone.tower_states("text", input_ids=input_ids, attention_mask=attention_mask)
        side = self.side["text"]
        # the mask in the form the side layers' attention implementation expects
        mask = create_bidirectional_mask(
            config=side.blocks[0].attention.self.config, inputs_embeds=states.hidden_states[0], attention_mask=attention_mask
        )
        tokens = side(states.hidden_states, mask)
        return self.backbone.tower_head("text", tokens, states.token_mask)


BERT_LAYER = BlockLayout(
    ("attention.self.query", "attention.self.key", "attention.self.value"),
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
    ("attention.output.LayerNorm", "output.LayerNorm"),
)


def build(backbone: VseDualEncoder, cfg: LSTConfig, data: Callable[[int], Iterator[dict[str, torch.Tensor]]]) -> LadderSideTunedVse:
    backbone.requires_grad_(False)
    model = LadderSideTunedVse(backbone, cfg)
    importance = row_importance(backbone, cfg, data)
    if importance is not None:
        side, layers = model.side["text"], backbone.bert.encoder.layer
        for j, layer in enumerate(side.keep):
            prune_block_into(side.blocks[j], layers[layer], importance, backbone.bert.config.num_attention_heads, BERT_LAYER)
    return model.train(backbone.training)
