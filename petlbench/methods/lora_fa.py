"""LoRA-FA (Zhang et al., 2023): LoRA with ``A`` frozen at its random init and only the
zero-initialised ``B`` trained, through the same PEFT injection, targets and rank as
`lora`, and the suite's optimizer (not PEFT's `create_lorafa_optimizer`, whose projected
gradient and own AdamW would break the suite's one-optimizer rule).

The memory argument needs no custom code: a linear layer saves its input for backward only
when its weight needs a gradient, so with ``A`` frozen an adapted layer no longer keeps its
input ``x`` (B·N·d) for A's gradient; it keeps ``A x`` (B·N·r) for B's, as `lora` does. The
gradient still crosses every block, so the backbone's own activations remain."""

from peft.tuners.lora import LoraLayer

from petlbench.methods import lora
from petlbench.methods.specs import LORA_FA, LoraConfig


@LORA_FA.builder("clip")
@LORA_FA.builder("vse")
@LORA_FA.builder("t5")
def build(backbone, cfg: LoraConfig):
    """`lora`'s model with every ``A`` frozen (``B`` keeps training)."""
    model = lora.build(backbone, cfg)
    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.lora_A.requires_grad_(False)
    return model
