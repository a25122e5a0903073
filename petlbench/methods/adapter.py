"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021): a small residual MLP
on a sub-layer's output (`Backbone.sublayers`: the self-attention's and the feed-forward's,
before the residual add), inside every block of every tower (an encoder-decoder's decoder
blocks included; its cross-attention gets none, as in the LST code); the backbone stays
frozen and the gradient flows back through it.

Two initialisations: ``zero-up`` (the up-projection starts at zero, so the adapted model
starts as the backbone) and ``normal`` (every weight N(0, 0.01), biases 0: the LST code,
whose adapters also train every norm of the backbone, ``train_norms``)."""

from torch import nn

from petlbench.config import ConfigError
from petlbench.methods.specs import ADAPTER, AdapterConfig

# The sub-layers each placement adapts (roles of `Backbone.sublayers`).
SITES = {"houlsby": ("attention", "mlp"), "pfeiffer": ("mlp",)}
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "gelu_new": lambda: nn.GELU(approximate="tanh")}
NORMAL_STD = 0.01  # the LST code's initialisation of every new linear layer


class Bottleneck(nn.Module):
    """``x + up(act(down(x)))``."""

    def __init__(self, width: int, hidden: int, activation: str, init: str, **factory):
        super().__init__()
        self.down = nn.Linear(width, hidden, **factory)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(hidden, width, **factory)
        if init == "zero-up":
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)
        else:
            for linear in (self.down, self.up):
                nn.init.normal_(linear.weight, std=NORMAL_STD)
                nn.init.zeros_(linear.bias)

    def forward(self, x):
        return x + self.up(self.act(self.down(x)))

    def hook(self, module, args, output):
        """Forward hook replacing a sub-layer's output by its adapted version; an attention
        returns a tuple whose first element is the output."""
        if isinstance(output, tuple):
            return (self(output[0]), *output[1:])
        return self(output)


@ADAPTER.builder("clip")
@ADAPTER.builder("t5")
def build(backbone, cfg: AdapterConfig):
    backbone.requires_grad_(False)
    factory = {"device": backbone.device}
    for tower, blocks in backbone.blocks().items():
        width = backbone.tower_shape(tower).width  # the residual stream's width
        if not 1 <= cfg.r <= width:
            raise ConfigError(f"adapter: r={cfg.r} must be between 1 and the block width {width}")
        for block in blocks:
            sublayers = backbone.sublayers(tower, block)
            for site in SITES[cfg.placement]:
                adapter = Bottleneck(width, width // cfg.r, cfg.activation, cfg.init, **factory)
                block.add_module(f"{site}_adapter", adapter)  # a child: saved, moved and counted with the block
                sublayers[site].register_forward_hook(adapter.hook)
    if cfg.train_norms:
        for norm in backbone.norms():
            norm.requires_grad_(True)
    return backbone
