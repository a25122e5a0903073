"""Parameter counts and the per-task storage a method needs."""

from __future__ import annotations

from torch import nn


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Trainable and total parameters (a tensor shared between modules counts once) and
    the bytes of the trainable state a user stores per task."""
    params = list(model.parameters())  # nn.Module.parameters() already yields shared tensors once
    trainable = [p for p in params if p.requires_grad]
    return {
        "params_trainable": sum(p.numel() for p in trainable),
        "params_total": sum(p.numel() for p in params),
        "trainable_state_bytes": sum(p.numel() * p.element_size() for p in trainable),
    }
