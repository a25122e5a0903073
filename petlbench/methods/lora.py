"""LoRA (Hu et al. 2022) through the PEFT library, the reference implementation: chosen
linear layers of every block compute ``W x + (alpha/r) B A x`` with ``A`` random and ``B``
zero; the backbone stays frozen and the gradient flows back through it."""

import peft
from peft.tuners.lora import LoraLayer
from torch import nn

from petlbench.config import ConfigError, short
from petlbench.methods.specs import LORA, LoraConfig


def _block_linears(backbone) -> set[str]:
    """The names (last component) of the linear layers inside the towers' blocks."""
    return {
        name.rsplit(".", 1)[-1]
        for blocks in backbone.blocks().values()
        for name, module in blocks.named_modules()
        if isinstance(module, nn.Linear)
    }


# The CLIP role names of the attention linears, as a BERT layer names them (VSE family).
BERT_NAMES = {"q_proj": "query", "k_proj": "key", "v_proj": "value"}


def inject(backbone, targets: list[str], cfg: LoraConfig):
    """PEFT's LoRA layers on the ``targets`` (as the backbone's `injection_root` names its
    modules) of the backbone's blocks; everything else frozen. Only block layers may be
    targeted: PEFT would otherwise wrap a projection too, and the loop's head rule
    (requires_grad on the projection module) would then switch LoRA parameters on or off
    with it."""
    allowed = _block_linears(backbone)
    if not set(targets) <= allowed:
        raise ConfigError(f"lora: targets {short(cfg.targets)} must be a non-empty list of {', '.join(sorted(allowed))}")
    peft_config = peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets, bias="none")
    peft.inject_adapter_in_model(peft_config, backbone.injection_root())
    # PEFT freezes all but its adapters already; say so here rather than rely on its policy.
    backbone.requires_grad_(False)
    for module in backbone.modules():
        if isinstance(module, LoraLayer):
            module.lora_A.requires_grad_(True)
            module.lora_B.requires_grad_(True)
    return backbone


@LORA.builder("clip")
def build_clip(backbone, cfg: LoraConfig):
    return inject(backbone, list(cfg.targets), cfg)


@LORA.builder("vse")
def build_vse(backbone, cfg: LoraConfig):
    """BERT's layers are the VSE family's only blocks (the CNN has none): the CLIP names
    `q_proj`/`k_proj`/`v_proj` map to BERT's `query`/`key`/`value`."""
    return inject(backbone, [BERT_NAMES.get(name, name) for name in cfg.targets], cfg)
