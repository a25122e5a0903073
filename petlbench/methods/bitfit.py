"""BitFit (Ben Zaken et al. 2022): every bias term of the backbone trains (attention, MLP
and LayerNorm biases), every weight stays frozen; the gradient flows through the whole
backbone."""

from dataclasses import dataclass

from petlbench.config import MethodConfig
from petlbench.registry import EVERY_BLOCK, register


@dataclass
class BitFitConfig(MethodConfig):
    pass


BITFIT = register("bitfit", BitFitConfig, lr_grid=(3e-3, 1e-2, 3e-2))


@BITFIT.builder("clip", keeps=EVERY_BLOCK)
def build(backbone, cfg: BitFitConfig):
    for name, param in backbone.named_parameters():
        param.requires_grad_(name.rsplit(".", 1)[-1] == "bias")
    return backbone
