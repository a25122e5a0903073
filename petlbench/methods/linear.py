"""Linear probe: exactly the two towers' projection layers train; no backward through
the backbone."""

from dataclasses import dataclass

from petlbench.config import MethodConfig
from petlbench.registry import register


@dataclass
class LinearConfig(MethodConfig):
    pass


@register("linear", LinearConfig, defines_head=True, backbones=("clip", "vse"))
def apply(backbone, cfg: LinearConfig):
    backbone.requires_grad_(False)
    for projection in backbone.projections():
        projection.requires_grad_(True)
    return backbone
