"""Full fine-tuning: every backbone parameter trains (the logit scale follows the suite)."""

from dataclasses import dataclass

from petlbench.config import MethodConfig
from petlbench.registry import EVERY_BLOCK, register


@dataclass
class FullConfig(MethodConfig):
    pass


FULL = register("full", FullConfig, defines_head=True, lr_grid=(1e-4, 3e-4, 1e-3))


@FULL.builder("clip", keeps=EVERY_BLOCK)
@FULL.builder("vse", keeps=EVERY_BLOCK)
def build(backbone, cfg: FullConfig):
    backbone.requires_grad_(True)
    return backbone
