"""VSE-style dual encoder: a CNN image tower (transformers' `ResNetModel`) and a
BERT-style text tower (`BertModel`), each followed by a simple embedding head to a joint
width. The second backbone family, to show which methods apply beyond CLIP. A checkpoint
is a folder with `vse.json` naming the two towers (`petlbench.models.loader`).

Heads (kept simple, not VSE∞'s GPO pooling):
- image: global average pool of the last stage (C5), then a Linear to the joint width;
- text: a per-token Linear to the joint width, then a masked mean over the unpadded tokens.

Interface, by role, as `ClipDualEncoder` where it makes sense:
- `encode_image`, `encode_text`, `logit_scale` (a Parameter, frozen at construction),
  `projections()` (the two heads' Linears).
- `blocks()` has the text tower only: a ResNet has stages of residual conv units, not
  transformer blocks, so methods that walk blocks (adapters, prompts, partial, LoRA's
  targets) see BERT's layers and nothing of the CNN; `stages()` has the CNN's stages,
  each as its units; `block_input` is BERT's embedding output or the ResNet stem's map,
  `block_arguments` BERT's bidirectional padding mask; `block_config` and
  `injection_root` are BERT's (the only blocks); `tower_shape` has both towers' sizes.
- `final_norms()` is empty (neither tower ends in a norm before its head).
- `tower_states('text', ...)`: BERT's L+1 hidden states; `tower_states('vision', ...)`: the
  ResNet stage feature maps C2..C5 (B, C, H, W), what UniPT's CNN variant reads;
  `tower_head(tower, tokens, token_mask=...)`: a head on tokens (side networks end in it).
- A frozen image tower (no parameter training) always runs in eval mode, so its
  BatchNorm running statistics stay bit-identical; when it trains (`full`), its
  BatchNorms follow the module's train/eval mode as usual.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import AutoModel, BertConfig, BertModel, PreTrainedConfig, ResNetConfig, ResNetModel
from transformers.masking_utils import create_bidirectional_mask

from petlbench.models.backbone import DualEncoder, TowerShape, TowerStates
from petlbench.models.pooling import masked_mean

# CLIP's initial temperature (1/0.07), for a comparable contrastive loss.
LOGIT_SCALE_INIT = math.log(1 / 0.07)


class VseDualEncoder(DualEncoder):
    family = "vse"
    linear_names = {"q_proj": "query", "k_proj": "key", "v_proj": "value"}  # BERT's attention linears

    def __init__(self, resnet: ResNetModel, bert: BertModel, embed_dim: int):
        super().__init__()
        self.resnet = resnet
        self.bert = bert
        bert.config.use_cache = False  # an encoder keeps no KV cache (checkpointing warns otherwise)
        self.embed_dim = embed_dim
        self.image_projection = nn.Linear(resnet.config.hidden_sizes[-1], embed_dim)
        self.text_projection = nn.Linear(bert.config.hidden_size, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT), requires_grad=False)

    # -- image tower -------------------------------------------------------------------
    def _image_tower_mode(self) -> None:
        """Eval mode for a frozen CNN (BatchNorm statistics must not move); otherwise the
        module's own mode."""
        trains = any(p.requires_grad for p in self.resnet.parameters())
        self.resnet.train(self.training and trains)

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, embed_dim): global average pool of C5, then the image projection."""
        self._image_tower_mode()
        c5 = self.resnet(pixel_values=pixel_values).last_hidden_state
        return self.image_projection(c5.mean(dim=(2, 3)))

    def tower_states(self, tower: str, **inputs: torch.Tensor) -> TowerStates:
        """'vision': the ResNet stage outputs C2..C5, each (B, C_i, H_i, W_i), with every
        position of C5 a token; 'text': BERT's L+1 hidden states (embedding output, then
        each layer's output). Both heads pool by a mean, so ``pool_index`` (zeros) is only
        there to fill the interface."""
        if tower == "vision":
            self._image_tower_mode()
            maps = tuple(self.resnet(pixel_values=inputs["pixel_values"], output_hidden_states=True).hidden_states[1:])  # [0]: the stem
            b, _, h, w = maps[-1].shape
            every = torch.ones(b, h * w, dtype=torch.bool, device=maps[-1].device)
            return TowerStates(maps, every, torch.zeros(b, dtype=torch.long, device=maps[-1].device))
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        out = self.bert(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        zeros = torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)
        return TowerStates(out.hidden_states, mask.bool(), zeros)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, embed_dim): the projection per token, then a masked mean."""
        tokens = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return masked_mean(self.text_projection(tokens), attention_mask.bool())

    def tower_head(
        self, tower: str, tokens: torch.Tensor, *, token_mask: torch.Tensor | None = None, pool_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The tower's head on (B, N, width) tokens: for 'vision' C5's positions as tokens
        (their mean, then the projection), for 'text' BERT-width tokens (the projection per
        token, then the mean over ``token_mask``)."""
        if tower == "vision":
            return self.image_projection(tokens.mean(dim=1))
        return masked_mean(self.text_projection(tokens), token_mask)

    # -- roles -------------------------------------------------------------------------
    def projections(self) -> list[nn.Module]:
        return [self.image_projection, self.text_projection]

    def blocks(self) -> dict[str, nn.ModuleList]:
        """The text tower's transformer layers; the CNN has none (see the module doc)."""
        return {"text": self.bert.encoder.layer}

    def stages(self) -> dict[str, list[nn.Sequential]]:
        """The ResNet's stages, each the sequence of its residual units (what a
        `ResNetStage` runs one after the other)."""
        return {"vision": [stage.layers for stage in self.resnet.encoder.stages]}

    def norms(self) -> list[nn.Module]:
        """BERT's LayerNorms and the ResNet's BatchNorms."""
        return [module for module in self.modules() if isinstance(module, (nn.LayerNorm, nn.BatchNorm2d))]

    def final_norms(self) -> list[nn.Module]:
        return []

    def tower_shape(self, tower: str) -> TowerShape:
        """The ResNet's stage widths and depths (its width: the last stage's); BERT's sizes."""
        if tower == "vision":
            config = self.resnet.config
            return TowerShape(
                width=config.hidden_sizes[-1],
                depth=0,
                channels=config.num_channels,
                stage_widths=tuple(config.hidden_sizes),
                stage_depths=tuple(config.depths),
            )
        return TowerShape.of_transformer(self.bert.config)

    def _text_only(self, tower: str, role: str) -> None:
        if tower != "text":
            raise ValueError(f"{role}: the VSE image tower is a CNN, it has no transformer blocks")

    def block_config(self, tower: str) -> PreTrainedConfig:
        """BERT's config (the CNN has no blocks)."""
        self._text_only(tower, "block_config")
        return self.bert.config

    def injection_root(self) -> nn.Module:
        """The `BertModel` (PEFT's target names are BERT's: `query`, `value`, ...)."""
        return self.bert

    def block_input(self, tower: str, **inputs: torch.Tensor) -> torch.Tensor:
        """BERT's embedding output (B, N, d); for 'vision' the stem's map, what the first
        ResNet stage reads (the frozen CNN in eval mode, as `encode_image` runs it)."""
        if tower == "vision":
            self._image_tower_mode()
            return self.resnet.embedder(inputs["pixel_values"])
        return self.bert.embeddings(input_ids=inputs["input_ids"])

    def block_arguments(self, tower: str, tokens: torch.Tensor, padding: torch.Tensor | None = None) -> tuple[tuple, dict]:
        """BERT's bidirectional mask over ``tokens`` from the (B, N) ``padding`` mask, in
        the form the configured attention implementation expects; positional."""
        self._text_only(tower, "block_arguments")
        return (create_bidirectional_mask(config=self.bert.config, inputs_embeds=tokens, attention_mask=padding),), {}


def vse_from_configs(
    resnet_config: ResNetConfig, bert_config: BertConfig, embed_dim: int, attn_implementation: str = "sdpa"
) -> VseDualEncoder:
    """Random weights from configs (checkpoints load through `petlbench.models.loader`)."""
    bert = AutoModel.from_config(bert_config, attn_implementation=attn_implementation, add_pooling_layer=False)
    return VseDualEncoder(ResNetModel(resnet_config), bert, embed_dim)


def tiny_vse(embed_dim: int = 32, text_layers: int = 2, vocab_size: int = 100, max_text: int = 40) -> VseDualEncoder:
    """A few-thousand-parameter VSE model for tests: a 4-stage basic-block ResNet (one
    unit per stage, two in the last: SHERL's CNN form taps all but the last) and a 2-layer
    BERT."""
    resnet = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 2], layer_type="basic")
    bert = BertConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        num_hidden_layers=text_layers,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=max_text,
    )
    return vse_from_configs(resnet, bert, embed_dim)
