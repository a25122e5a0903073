"""T5 (`T5ForConditionalGeneration`) behind the encoder-decoder interface: what methods,
the text-to-text task and the estimate use of it, by role.

- Towers ``encoder`` and ``decoder``: their blocks (`T5Block`), sizes (width `d_model`,
  `d_ff`, heads), final norms, and the states after each block.
- ``encode`` / ``decode``: the encoder on token ids (or on input embeddings, which prompt
  tuning extends), and the decoder's next-token logits through the tied, scaled `lm_head`,
  exactly the library's forward (it is what runs).
- ``walk`` (`T5Walk`) / ``finish`` / ``head_logits``: the same computation a block at a
  time, for side networks that run between the blocks or run blocks of their own
  (``new_block``, ``new_norm``); walking every block, then ``finish``, then
  ``head_logits`` gives the library's logits bit for bit (tested).
- `add_biases`: T5's linear layers, norms and `lm_head` have no bias; BitFit and LoRA's
  bias variant add zero-initialised ones, as the LST code does, so that the model still
  computes exactly what the checkpoint does until they train.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedConfig, T5ForConditionalGeneration
from transformers.models.t5.modeling_t5 import T5LayerNorm

from petlbench.models.backbone import BlockWalk, Encoded, EncoderDecoder, TowerShape, TowerStates

ATTENTIONS = ("SelfAttention", "EncDecAttention")  # the attention modules of a T5 layer, as the library names them


def _add_norm_bias(norm: nn.Module) -> nn.Parameter:
    """A zero β after a `T5LayerNorm`'s scale (it has none): added by a forward hook."""
    norm.bias = nn.Parameter(torch.zeros_like(norm.weight))
    norm.register_forward_hook(lambda module, args, output: output + module.bias)
    return norm.bias


def _add_linear_bias(linear: nn.Linear) -> nn.Parameter:
    linear.bias = nn.Parameter(torch.zeros(linear.out_features, device=linear.weight.device, dtype=linear.weight.dtype))
    return linear.bias


class _Entered(Exception):
    """Raised by the hook that takes a stack's first-block arguments, to stop its forward there."""


def _flat_arguments(block: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    """``block.forward``'s arguments by name, ``**kwargs`` spread out."""
    signature = inspect.signature(block.forward)
    arguments = dict(signature.bind(*args, **kwargs).arguments)
    for name, parameter in signature.parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            arguments.update(arguments.pop(name, {}))
    return arguments


class T5Walk(BlockWalk):
    """A pass through a T5 stack's blocks from the arguments its forward gave its first
    block: the masks as the library made them (for any version and attention
    implementation); the self-attention position bias returned by the first block (with a
    relative table) passed to the rest, and likewise the cross-attention's."""

    def __init__(self, arguments: dict[str, Any]):
        self.arguments = arguments
        self.tokens = arguments["hidden_states"]
        self.position_bias: torch.Tensor | None = None
        self.cross_bias: torch.Tensor | None = None

    def __call__(self, block: nn.Module, tokens: torch.Tensor, cross: torch.Tensor | None = None) -> torch.Tensor:
        arguments = {**self.arguments, "hidden_states": tokens, "position_bias": self.position_bias}
        attends = arguments.get("encoder_hidden_states") is not None
        if attends:
            arguments["encoder_decoder_position_bias"] = self.cross_bias
            if cross is not None:
                arguments["encoder_hidden_states"] = cross
        tokens, self.position_bias, cross_bias = block(**arguments)
        if attends:
            self.cross_bias = cross_bias
        return tokens

    def fresh(self) -> T5Walk:
        return T5Walk(self.arguments)


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

    def token_embeddings(self) -> nn.Embedding:
        return self.t5.shared

    def head_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """``lm_head`` after the library's scaling by ``d_model ** -0.5`` (where its forward
        scales: a tied head, in every version; transformers 5 says so in `scale_decoder_outputs`)."""
        config = self.t5.config
        if getattr(config, "scale_decoder_outputs", config.tie_word_embeddings):
            tokens = tokens * config.d_model**-0.5
        return self.t5.lm_head(tokens)

    def walk(self, tower: str, **inputs: torch.Tensor) -> T5Walk:
        """The library's own stack forward, stopped at its first block (a hook that raises
        once it has the block's arguments), so that the masks are the library's."""
        stack = getattr(self.t5, tower)
        taken: dict[str, Any] = {}

        def take(block: nn.Module, args: tuple, kwargs: dict) -> None:
            taken.update(_flat_arguments(block, args, kwargs))
            raise _Entered

        # prepended: any other hook on the block (a test's, watching what blocks save) never sees this entry
        hook = stack.block[0].register_forward_pre_hook(take, prepend=True, with_kwargs=True)
        try:
            if tower == "encoder":
                stack(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            else:
                stack(
                    input_ids=inputs["decoder_input_ids"],
                    encoder_hidden_states=inputs["states"],
                    encoder_attention_mask=inputs["mask"],
                    use_cache=False,  # the stack's own config may say otherwise
                )
        except _Entered:
            pass
        finally:
            hook.remove()
        return T5Walk(taken)

    def finish(self, tower: str, tokens: torch.Tensor) -> torch.Tensor:
        stack = getattr(self.t5, tower)
        return stack.dropout(stack.final_layer_norm(tokens))

    def new_block(self, tower: str, r: int, positions: bool) -> nn.Module:
        """A `T5Block` from a copy of the stack's config with `d_model`, `d_ff` and `d_kv` divided by
        ``r``, initialised as the library initialises a new T5's blocks."""
        config = copy.deepcopy(self.block_config(tower))
        config.d_model, config.d_ff, config.d_kv = config.d_model // r, config.d_ff // r, config.d_kv // r
        with torch.device(self.device):
            # layer_idx names a key-value cache slot; no cache is made for these blocks (the
            # library warns on a decoder block without one)
            block = type(self.t5.encoder.block[0])(config, has_relative_attention_bias=positions, layer_idx=0)
        return block.apply(self.t5._init_weights)  # T5's initialiser, with the model's sizes (as for a block inside it)

    def new_norm(self, width: int) -> nn.Module:
        with torch.device(self.device):
            return T5LayerNorm(width, eps=self.t5.config.layer_norm_epsilon)

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
            head_width=config.d_kv,
            dropout=config.dropout_rate,
        )

    def block_config(self, tower: str) -> PreTrainedConfig:
        """The stack's own config (the decoder's says `is_decoder`)."""
        return getattr(self.t5, tower).config

    def injection_root(self) -> nn.Module:
        """The whole `T5ForConditionalGeneration` (PEFT's target names are T5's: `q`, `v`, `wi`, ...)."""
        return self.t5

    def tower_states(self, tower: str, **inputs: torch.Tensor) -> TowerStates:
        """What the first block reads (the embeddings after dropout) and every block's output
        (L+1 states, the last before the stack's final norm), by a `walk`."""
        walk = self.walk(tower, **inputs)
        states = [walk.tokens]
        for block in self.blocks()[tower]:
            states.append(walk(block, states[-1]))
        mask = inputs["attention_mask"] if tower == "encoder" else torch.ones_like(inputs["decoder_input_ids"])
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
