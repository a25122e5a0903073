"""Full fine-tuning: every backbone parameter trains (the logit scale follows the suite)."""

from dataclasses import dataclass

from petlbench.config import MethodConfig
from petlbench.registry import register


@dataclass
class FullConfig(MethodConfig):
    pass


@register("full", FullConfig, defines_head=True, backbones=("clip", "vse"))
def apply(backbone, cfg: FullConfig):
    backbone.requires_grad_(True)
    return backbone
