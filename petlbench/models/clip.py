"""CLIP-style dual encoder: the interface every method and the training loop use."""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPModel, PreTrainedConfig
from transformers.masking_utils import create_causal_mask

from petlbench.models.backbone import DualEncoder, TowerShape, TowerStates

TOWERS = ("vision", "text")


def eot_positions(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """The position a CLIP text tower pools, exactly as transformers defines it: the first
    `eos_token_id` in the ids; for legacy configs with `eos_token_id == 2`, the argmax of
    the ids. The one place the rest of the code asks for it."""
    if eos_token_id == 2:
        return input_ids.to(torch.int).argmax(dim=-1)
    return (input_ids == eos_token_id).to(torch.int).argmax(dim=-1)


class ClipDualEncoder(DualEncoder):
    """Wraps a transformers `CLIPModel`; exposes what methods need by role, not by the
    library's attribute names (which change between major versions)."""

    family = "clip"

    def __init__(self, clip: CLIPModel):
        super().__init__()
        self.clip = clip

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected (unnormalised) image embeddings, (B, projection_dim)."""
        return self.clip.get_image_features(pixel_values=pixel_values).pooler_output

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Projected (unnormalised) text embeddings, pooled at the EOT token."""
        return self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.clip.logit_scale

    @property
    def embed_dim(self) -> int:
        return self.clip.config.projection_dim  # the towers' own sub-configs carry another projection_dim

    def projections(self) -> list[nn.Module]:
        """The towers' final projection layers (the "head" of `train.head`, docs/methods.md)."""
        return [self.clip.visual_projection, self.clip.text_projection]

    def sublayers(self, tower: str, block: nn.Module) -> dict[str, nn.Module]:
        """A CLIP layer's attention and MLP (each output is added to the residual stream)."""
        return {"attention": block.self_attn, "mlp": block.mlp}

    def blocks(self) -> dict[str, nn.ModuleList]:
        """Each tower's transformer blocks, first to last."""
        return {"vision": self.clip.vision_model.encoder.layers, "text": self.clip.text_model.encoder.layers}

    def stages(self) -> dict[str, list[nn.Sequential]]:
        """None: both towers are transformers."""
        return {}

    def norms(self) -> list[nn.Module]:
        return [module for module in self.clip.modules() if isinstance(module, nn.LayerNorm)]

    def final_norms(self) -> list[nn.Module]:
        """The LayerNorms applied after each tower's last block."""
        return [self.clip.vision_model.post_layernorm, self.clip.text_model.final_layer_norm]

    def tower_shape(self, tower: str) -> TowerShape:
        """From the tower's sub-config (`vision_config`, `text_config`)."""
        config = self.block_config(tower)
        image = {"patch_size": config.patch_size, "channels": config.num_channels} if tower == "vision" else {}
        return TowerShape.of_transformer(config, **image)

    def block_config(self, tower: str) -> PreTrainedConfig:
        """The tower's sub-config, the object its encoder layers hold."""
        return (self.clip.vision_model if tower == "vision" else self.clip.text_model).config

    def injection_root(self) -> nn.Module:
        """The whole `CLIPModel` (PEFT's target names are CLIP's: `q_proj`, `fc1`, ...)."""
        return self.clip

    def tower_states(self, tower: str, **inputs: torch.Tensor) -> TowerStates:
        """Per-layer hidden states of ``tower`` ('vision': pixel_values; 'text': input_ids,
        attention_mask). Runs under the caller's grad mode: side methods wrap it in no_grad."""
        if tower == "vision":
            out = self.clip.vision_model(pixel_values=inputs["pixel_values"], output_hidden_states=True)
            b, n = out.hidden_states[0].shape[:2]
            every = torch.ones(b, n, dtype=torch.bool, device=out.hidden_states[0].device)
            return TowerStates(out.hidden_states, every, self.pool_index(tower, **inputs))
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        out = self.clip.text_model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        return TowerStates(out.hidden_states, mask.bool(), self.pool_index(tower, **inputs))

    # -- walking a tower's blocks (methods that change what flows between them) --------------
    # Written against the transformers 5.x CLIP layout (pyproject pins >=5,<6): the vision
    # blocks read `pre_layrnorm(embeddings(pixels))`, the text blocks `embeddings(ids)`;
    # `CLIPEncoderLayer(hidden_states, attention_mask, **kwargs) -> hidden_states`; the text
    # tower's mask comes from `masking_utils.create_causal_mask` with `is_causal=True`.

    def block_input(self, tower: str, **inputs: torch.Tensor) -> torch.Tensor:
        """The tokens ``tower``'s first block reads, (B, N, d)."""
        if tower == "vision":
            vision = self.clip.vision_model
            return vision.pre_layrnorm(vision.embeddings(inputs["pixel_values"]))
        return self.clip.text_model.embeddings(input_ids=inputs["input_ids"])

    def block_arguments(self, tower: str, tokens: torch.Tensor, padding: torch.Tensor | None = None) -> tuple[tuple, dict]:
        """What every block of ``tower`` takes besides ``tokens``: (positional, keyword)
        arguments. The text tower's causal mask is built over ``tokens``' length from the
        (B, N) ``padding`` mask. Positional: the fourth argument of `create_causal_mask` (no
        KV cache) is `past_key_values` in transformers <= 5.17 and `cache` later."""
        if tower == "vision":
            return (None,), {}
        return (create_causal_mask(self.clip.text_model.config, tokens, padding, None),), {"is_causal": True}

    def pool_index(self, tower: str, **inputs: torch.Tensor) -> torch.Tensor:
        """(B,) the position ``tower`` pools: CLS (0) for vision, EOT for text."""
        if tower == "vision":
            pixels = inputs["pixel_values"]
            return torch.zeros(len(pixels), dtype=torch.long, device=pixels.device)
        return eot_positions(inputs["input_ids"], self.clip.config.text_config.eos_token_id)

    def tower_head(
        self, tower: str, tokens: torch.Tensor, *, token_mask: torch.Tensor | None = None, pool_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The tower's final norm, pooling at ``pool_index`` (CLIP pools one token; the mask
        is not needed) and projection applied to (B, N, d) tokens (LayerNorm is per token,
        so norm-then-pool equals CLIP's own order for both towers)."""
        norm, projection = (
            (self.clip.vision_model.post_layernorm, self.clip.visual_projection)
            if tower == "vision"
            else (self.clip.text_model.final_layer_norm, self.clip.text_projection)
        )
        pooled = tokens[torch.arange(tokens.shape[0], device=tokens.device), pool_index]
        return projection(norm(pooled))
