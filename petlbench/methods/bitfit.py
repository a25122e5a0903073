"""BitFit (Ben Zaken et al. 2022): every bias term of the backbone trains (attention, MLP
and LayerNorm biases), every weight stays frozen; the gradient flows through the whole
backbone."""

from petlbench.methods.specs import BITFIT, BitFitConfig


@BITFIT.builder("clip")
def build(backbone, cfg: BitFitConfig):
    for name, param in backbone.named_parameters():
        param.requires_grad_(name.rsplit(".", 1)[-1] == "bias")
    return backbone
