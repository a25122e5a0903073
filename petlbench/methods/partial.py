"""Partial fine-tuning: the last `k` blocks of each tower (an encoder-decoder: of the
encoder and of the decoder), the final norms and the projections train; the gradient
travels back through those blocks only."""

from petlbench.config import ConfigError
from petlbench.methods.specs import PARTIAL, PartialConfig


@PARTIAL.builder("clip")
@PARTIAL.builder("t5")
def build(backbone, cfg: PartialConfig):
    towers = backbone.blocks()
    depth = min(len(blocks) for blocks in towers.values())
    if not 1 <= cfg.k <= depth:
        raise ConfigError(f"partial: k={cfg.k} must be between 1 and the tower depth {depth}")
    backbone.requires_grad_(False)
    for blocks in towers.values():
        blocks[-cfg.k :].requires_grad_(True)
    for module in backbone.final_norms() + backbone.projections():
        module.requires_grad_(True)
    return backbone
