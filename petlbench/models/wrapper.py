"""The base of methods that wrap a backbone instead of changing it in place."""

from __future__ import annotations

from torch import nn


class BackboneWrapper(nn.Module):
    """Holds ``backbone`` and exposes its logit scale, as the training loop expects of
    every model. With ``frozen_eval`` the backbone stays in eval mode whatever the wrapper's
    mode: a frozen CNN's BatchNorm statistics (and BERT's dropout) belong to a fixed feature
    extractor."""

    frozen_eval = False

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.backbone.logit_scale

    def train(self, mode: bool = True) -> BackboneWrapper:
        super().train(mode)
        if self.frozen_eval:
            self.backbone.eval()
        return self
