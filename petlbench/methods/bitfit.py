"""BitFit (Ben Zaken et al. 2022): every bias term of the backbone trains (attention, MLP
and LayerNorm biases), every weight stays frozen; the gradient flows through the whole
backbone."""

from dataclasses import dataclass

from petlbench.config import MethodConfig
from petlbench.registry import register


@dataclass
class BitFitConfig(MethodConfig):
    pass


@register("bitfit", BitFitConfig)
def apply(backbone, cfg: BitFitConfig):
    for name, param in backbone.named_parameters():
        param.requires_grad_(name.rsplit(".", 1)[-1] == "bias")
    return backbone
