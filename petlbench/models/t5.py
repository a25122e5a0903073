"""T5 (`T5ForConditionalGeneration`) behind the encoder-decoder interface: what methods,
the text-to-text task and the estimate use of it, by role.

- Towers ``encoder`` and ``decoder``: their blocks (`T5Block`), sizes (width `d_model`,
  `d_ff`, heads), final norms, and the states after each block.
- ``encode`` / ``decode``: the encoder on token ids (or on input embeddings, which prompt
  tuning extends), and the decoder's next-token logits through the tied, scaled `lm_head`,
  exactly the library's forward (it is what runs).
- `add_biases`: T5's linear layers, norms and `lm_head` have no bias; BitFit and LoRA's
  bias variant add zero-initialised ones, as the LST code does, so that the model still
  computes exactly what the checkpoint does until they train.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedConfig, T5ForConditionalGeneration

from petlbench.models.backbone import Encoded, EncoderDecoder, TowerShape, TowerStates

ATTENTIONS = ("SelfAttention", "EncDecAttention")  # the attention modules of a T5 layer, as the library names them


def _add_norm_bias(norm: nn.Module) -> nn.Parameter:
    """A zero β after a `T5LayerNorm`'s scale (it has none): added by a forward hook."""
    norm.bias = nn.Parameter(torch.zeros_like(norm.weight))
    norm.register_forward_hook(lambda module, args, output: output + module.bias)
    return norm.bias


def _add_linear_bias(linear: nn.Linear) -> nn.Parameter:
    linear.bias = nn.Parameter(torch.zeros(linear.out_features, device=linear.weight.device, dtype=linear.weight.dtype))
    return linear.bias


class T5EncoderDecoder(EncoderDecoder):
    """Wraps a transformers `T5ForConditionalGeneration`."""

    family = "t5"
    linear_names = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "out_proj": "o", "fc1": "wi", "fc2": "wo"}

    def __init__(self, t5: T5ForConditionalGeneration):
        super().__init__()
        self.t5 = t5
        t5.config.use_cache = False  # training, and a greedy decoding that re-reads its prefix: no KV cache
        self.vocab_size = t5.config.vocab_size

    @property
    def device(self) -> torch.device:
        return self.t5.shared.weight.device

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.t5.shared(input_ids)

    def encode_embeddings(self, embeddings: torch.Tensor, attention_mask: torch.Tensor) -> Encoded:
        out = self.t5.encoder(inputs_embeds=embeddings, attention_mask=attention_mask)
        return Encoded(out.last_hidden_state, attention_mask)

    def decode(self, decoder_input_ids: torch.Tensor, encoded: Encoded) -> torch.Tensor:
        """The library's own forward from the encoder output on (so its decoder-output
        scaling before the tied head is the library's, in every version)."""
        return self.t5(
            encoder_outputs=(encoded.states,), attention_mask=encoded.mask, decoder_input_ids=decoder_input_ids, use_cache=False
        ).logits

    def lm_head(self) -> nn.Linear:
        return self.t5.lm_head

    def projections(self) -> list[nn.Module]:
        """None: T5's only head is the language-model head, tied to the token embeddings."""
        return []

    def blocks(self) -> dict[str, nn.ModuleList]:
        return {"encoder": self.t5.encoder.block, "decoder": self.t5.decoder.block}

    def sublayers(self, tower: str, block: nn.Module) -> dict[str, nn.Module]:
        """A T5 block's self-attention and its feed-forward (before its dropout and residual add)."""
        return {"attention": block.layer[0].SelfAttention, "mlp": block.layer[-1].DenseReluDense}

    def norms(self) -> list[nn.Module]:
        """Every `T5LayerNorm`: each layer's (2 per encoder block, 3 per decoder block) and the two final ones."""
        return [layer.layer_norm for blocks in self.blocks().values() for block in blocks for layer in block.layer] + self.final_norms()

    def final_norms(self) -> list[nn.Module]:
        return [self.t5.encoder.final_layer_norm, self.t5.decoder.final_layer_norm]

    def tower_shape(self, tower: str) -> TowerShape:
        config = self.block_config(tower)
        return TowerShape(
            width=config.d_model,
            depth=config.num_layers,
            heads=config.num_heads,
            mlp_width=config.d_ff,
            norm_eps=config.layer_norm_epsilon,
        )

    def block_config(self, tower: str) -> PreTrainedConfig:
        """The stack's own config (the decoder's says `is_decoder`)."""
        return getattr(self.t5, tower).config

    def injection_root(self) -> nn.Module:
        """The whole `T5ForConditionalGeneration` (PEFT's target names are T5's: `q`, `v`, `wi`, ...)."""
        return self.t5

    def tower_states(self, tower: str, **inputs: torch.Tensor) -> TowerStates:
        """What the first block reads (the embeddings after dropout) and every block's output
        (L+1 states, the last before the stack's final norm), taken by hooks on the blocks
        while the library's own forward runs (its `output_hidden_states` ends, in some
        versions, with the normed output in place of the last block's)."""
        states: list[torch.Tensor] = []
        blocks = self.blocks()[tower]
        hooks = [blocks[0].register_forward_pre_hook(lambda module, args: states.append(args[0]))]
        hooks += [block.register_forward_hook(lambda module, args, out: states.append(out[0])) for block in blocks]
        try:
            if tower == "encoder":
                mask = inputs["attention_mask"]
                self.t5.encoder(input_ids=inputs["input_ids"], attention_mask=mask)
            else:
                mask = torch.ones_like(inputs["decoder_input_ids"])
                self.t5.decoder(
                    input_ids=inputs["decoder_input_ids"], encoder_hidden_states=inputs["states"], encoder_attention_mask=inputs["mask"]
                )
        finally:
            for hook in hooks:
                hook.remove()
        return TowerStates(tuple(states), mask.bool(), torch.zeros(len(mask), dtype=torch.long, device=mask.device))

    def add_biases(self) -> list[nn.Parameter]:
        """Zero biases on every attention projection (q, k, v, o), both feed-forward linears,
        every norm (a β after its scale) and the LM head: where the LST code adds them."""
        added = [_add_norm_bias(norm) for norm in self.norms()]
        for blocks in self.blocks().values():
            for block in blocks:
                for layer in block.layer:
                    for name in ATTENTIONS:
                        if (attention := getattr(layer, name, None)) is not None:
                            added += [_add_linear_bias(getattr(attention, p)) for p in ("q", "k", "v", "o")]
                    if (ff := getattr(layer, "DenseReluDense", None)) is not None:
                        added += [_add_linear_bias(linear) for linear in ff.modules() if isinstance(linear, nn.Linear)]
        added.append(_add_linear_bias(self.t5.lm_head))
        return added
