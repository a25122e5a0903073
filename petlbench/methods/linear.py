"""Linear probe: exactly the two towers' projection layers train; no backward through
the backbone."""

from dataclasses import dataclass

from petlbench.config import MethodConfig
from petlbench.registry import NOTHING, register


@dataclass
class LinearConfig(MethodConfig):
    pass


LINEAR = register("linear", LinearConfig, defines_head=True, lr_grid=(1e-2, 3e-2, 1e-1))


@LINEAR.builder("clip", keeps=NOTHING)
@LINEAR.builder("vse", keeps=NOTHING)
def build(backbone, cfg: LinearConfig):
    backbone.requires_grad_(False)
    for projection in backbone.projections():
        projection.requires_grad_(True)
    return backbone
