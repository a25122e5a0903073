"""Linear probe: exactly the two towers' projection layers train; no backward through
the backbone."""

from petlbench.methods.specs import LINEAR, LinearConfig


@LINEAR.builder("clip")
@LINEAR.builder("vse")
def build(backbone, cfg: LinearConfig):
    backbone.requires_grad_(False)
    for projection in backbone.projections():
        projection.requires_grad_(True)
    return backbone
