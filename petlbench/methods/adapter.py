"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021): a small residual MLP
on a sub-layer's output, inside every block of both towers; the backbone stays frozen and
the gradient flows back through it."""

from torch import nn

from petlbench.config import ConfigError
from petlbench.methods.specs import ADAPTER, AdapterConfig

# The block sub-layers whose output each placement adapts (before the residual add).
SITES = {"houlsby": ("self_attn", "mlp"), "pfeiffer": ("mlp",)}
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


class Bottleneck(nn.Module):
    """``x + up(act(down(x)))``; ``up`` starts at zero so the adapted model starts as the backbone."""

    def __init__(self, width: int, hidden: int, activation: str, **factory):
        super().__init__()
        self.down = nn.Linear(width, hidden, **factory)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(hidden, width, **factory)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x):
        return x + self.up(self.act(self.down(x)))

    def hook(self, module, args, output):
        """Forward hook replacing a sub-layer's output by its adapted version; the attention
        returns a tuple whose first element is the output."""
        if isinstance(output, tuple):
            return (self(output[0]), *output[1:])
        return self(output)


@ADAPTER.builder("clip")
def build(backbone, cfg: AdapterConfig):
    backbone.requires_grad_(False)
    for blocks in backbone.blocks().values():
        for block in blocks:
            width = block.layer_norm1.normalized_shape[0]  # the residual stream's width
            if not 1 <= cfg.r <= width:
                raise ConfigError(f"adapter: r={cfg.r} must be between 1 and the block width {width}")
            weight = block.layer_norm1.weight
            for site in SITES[cfg.placement]:
                adapter = Bottleneck(width, width // cfg.r, cfg.activation, device=weight.device, dtype=weight.dtype)
                block.add_module(f"{site}_adapter", adapter)  # a child: saved, moved and counted with the block
                getattr(block, site).register_forward_hook(adapter.hook)
    return backbone
