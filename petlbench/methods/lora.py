"""LoRA (Hu et al. 2022) through the PEFT library, the reference implementation: chosen
linear layers of every block compute ``W x + (alpha/r) B A x`` with ``A`` random and ``B``
zero; the backbone stays frozen and the gradient flows back through it. Targets are named
by role (CLIP's names) and mapped to each family's own (`Backbone.linear_names`).

``train_biases`` is the LST code's T5 configuration (its LoRA config also sets BitFit):
zero-initialised biases added where the backbone has none, and every parameter whose name
contains "bias" trains, T5's relative position tables included."""

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


@LORA.builder("clip")
@LORA.builder("vse")
@LORA.builder("t5")
def build(backbone, cfg: LoraConfig):
    """PEFT's LoRA layers on the targets of the backbone's blocks; everything else frozen
    (but the biases, with ``train_biases``). Only block layers may be targeted: PEFT would
    otherwise wrap a projection too, and the loop's head rule (requires_grad on the
    projection module) would then switch LoRA parameters on or off with it."""
    targets = [backbone.linear_names.get(name, name) for name in cfg.targets]
    allowed = _block_linears(backbone)
    if not set(targets) <= allowed:
        roles = sorted(
            {role for role, name in backbone.linear_names.items() if name in allowed} | (allowed - set(backbone.linear_names.values()))
        )
        raise ConfigError(f"lora: targets {short(cfg.targets)} must be a non-empty list of {', '.join(roles)}")
    if cfg.train_biases:
        backbone.add_biases()
    peft_config = peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets, bias="none")
    peft.inject_adapter_in_model(peft_config, backbone.injection_root())
    # PEFT freezes all but its adapters already; say so here rather than rely on its policy.
    for name, param in backbone.named_parameters():
        param.requires_grad_(cfg.train_biases and "bias" in name and "lora_" not in name)
    for module in backbone.modules():
        if isinstance(module, LoraLayer):
            module.lora_A.requires_grad_(True)
            module.lora_B.requires_grad_(True)
    return backbone
