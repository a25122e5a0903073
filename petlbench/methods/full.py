"""Full fine-tuning: every backbone parameter trains (the logit scale follows the suite)."""

from petlbench.methods.specs import FULL, FullConfig


@FULL.builder("clip")
@FULL.builder("vse")
@FULL.builder("t5")
def build(backbone, cfg: FullConfig):
    backbone.requires_grad_(True)
    return backbone
