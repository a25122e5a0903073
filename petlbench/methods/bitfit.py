"""BitFit (Ben Zaken et al. 2022): every bias term of the backbone trains (attention, MLP
and LayerNorm biases), every weight stays frozen; the gradient flows through the whole
backbone. Where a family's layers have no bias (T5), zero-initialised ones are added first
(`Backbone.add_biases`), as the LST code does for T5; a parameter merely named after a bias
(T5's relative position tables) is a weight and stays frozen."""

from petlbench.methods.specs import BITFIT, BitFitConfig


@BITFIT.builder("clip")
@BITFIT.builder("t5")
def build(backbone, cfg: BitFitConfig):
    backbone.add_biases()
    for name, param in backbone.named_parameters():
        param.requires_grad_(name.rsplit(".", 1)[-1] == "bias")
    return backbone
