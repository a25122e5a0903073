"""Partial fine-tuning: the last `k` blocks of each tower, the final LayerNorms and the
projections train; the gradient travels back through those blocks only."""

from dataclasses import dataclass, field

from petlbench.config import ConfigError, MethodConfig, rule
from petlbench.registry import last_blocks, register


@dataclass
class PartialConfig(MethodConfig):
    k: int = field(default=1, metadata=rule("trainable blocks at the top of each tower (at most the tower depth)", ge=1, le=10_000))


PARTIAL = register("partial", PartialConfig, defines_head=True, lr_grid=(3e-4, 1e-3, 3e-3))


@PARTIAL.builder("clip", keeps=last_blocks("k"))
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
